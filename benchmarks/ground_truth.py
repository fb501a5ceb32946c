"""Precision, recall, F1 and ROC AUC against planted ground truth, for pruning and baselines.

    python -m benchmarks.ground_truth --seeds 0 1 2 --json runs/ground_truth.json

For every planted variant and seed: CircuitPruner at the default lambdas (precision, recall,
F1 per granularity), the same with every lambda scaled by 1/4 ... 4 (ROC AUC of the
(false-positive rate, recall) points), and two one-pass baselines cut to the pruned circuit's
size per granularity: attribution patching and activation magnitude (AUC from their scores).
Live nodes are the positives, provably dead ones the negatives; weak and negligible nodes are
left out of both. A redundant pair (variant ``redundant``: either member alone suffices) is
left out of the plain rows and scored in an extra "(OR pair)" row as one positive, recovered
when any member is kept (a baseline's score for it: its members' largest).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from transformer_lens_mgp import DEFAULT_SPARSITY, CircuitPruner, ModelDims
from transformer_lens_mgp.testing.baselines import activation_scores, attribution_scores
from transformer_lens_mgp.testing.planted import VARIANTS, planted_circuit

SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


def confusion(kept: torch.Tensor, live: torch.Tensor, dead: torch.Tensor) -> dict:
    tp, fp = int((kept & live).sum()), int((kept & dead).sum())
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / int(live.sum()) if live.any() else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    fpr = fp / int(dead.sum()) if dead.any() else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "fpr": fpr}


def score_auc(scores: torch.Tensor, live: torch.Tensor, dead: torch.Tensor) -> float:
    """P(a live node scores above a dead one), ties counting half."""
    pos, neg = scores[live].flatten(), scores[dead].flatten()
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).float().mean()
    ties = (pos[:, None] == neg[None, :]).float().mean()
    return float(greater + 0.5 * ties)


def sweep_auc(points: list[dict]) -> float:
    fpr = [0.0] + [p["fpr"] for p in points] + [1.0]
    tpr = [0.0] + [p["recall"] for p in points] + [1.0]
    order = np.lexsort((tpr, fpr))
    return float(np.trapezoid(np.asarray(tpr)[order], np.asarray(fpr)[order]))


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    kept = torch.zeros(scores.numel(), dtype=torch.bool)
    if k:
        kept[scores.flatten().topk(k).indices] = True
    return kept.view(scores.shape)


def fold(
    values: torch.Tensor, groups: list[torch.Tensor], group_values: torch.Tensor | None = None
) -> torch.Tensor:
    """``values`` flattened, then one entry per OR group: ``group_values``, or else the
    largest of its members' values (for a mask: kept when any member is)."""
    if not groups:
        return values.flatten()
    if group_values is None:
        group_values = torch.stack([values[group].max() for group in groups])
    return torch.cat([values.flatten(), group_values.to(values.dtype)])


def score_rows(base: dict, g: str, groups: list, planted, circuit, swept, baselines) -> list[dict]:
    """Pruning's row, then the baselines', for granularity ``g``, each OR group one live
    node."""
    ones = torch.ones(len(groups), dtype=torch.bool)
    live = fold(planted.live[g], groups, ones)
    dead = fold(planted.dead[g], groups, ~ones)
    kept = circuit.kept(g)
    row = {**base, "method": "pruning", **confusion(fold(kept, groups), live, dead)}
    row["auc"] = sweep_auc([confusion(fold(c.kept(g), groups), live, dead) for c in swept])
    row.update(n_live=int(live.sum()), n_dead=int(dead.sum()))
    rows = [row]
    for name, scores in baselines.items():
        chosen = top_k(scores[g], int(kept.sum()))
        row = {**base, "method": name, **confusion(fold(chosen, groups), live, dead)}
        row["auc"] = score_auc(fold(scores[g], groups), live, dead)
        rows.append(row)
    return rows


def run_one(variant: str, seed: int) -> list[dict]:
    planted = planted_circuit(variant, seed=seed)
    model, data = planted.model, planted.dataset
    dims = ModelDims.from_cfg(model.cfg)
    start = time.perf_counter()
    circuit = CircuitPruner(model, seed=seed).fit(data, progress=False)
    seconds = time.perf_counter() - start
    swept = [
        CircuitPruner(
            model, seed=seed, sparsity={g: s * v for g, v in DEFAULT_SPARSITY.items()}
        ).fit(data, progress=False)
        for s in SCALES
    ]
    baselines = {
        "attribution patching": attribution_scores(model, data, dims),
        "activation magnitude": activation_scores(model, data, dims),
    }
    views = [(g, g, []) for g in circuit.granularities]
    views += [(f"{g} (OR pair)", g, groups) for g, groups in planted.any_of.items()]
    rows = []
    for label, g, groups in views:
        base = {"variant": variant, "seed": seed, "granularity": label}
        pruned, *others = score_rows(base, g, groups, planted, circuit, swept, baselines)
        rows += [{**pruned, "seconds": seconds}, *others]
    return rows


def _mean(values: list[float]) -> float:
    """Mean over seeds, NaN where no seed had a defined value (e.g. no dead blocks)."""
    defined = [v for v in values if not np.isnan(v)]
    return sum(defined) / len(defined) if defined else float("nan")


def table(rows: list[dict]) -> str:
    keys = sorted({(r["variant"], r["granularity"], r["method"]) for r in rows})
    lines = [
        "| variant | granularity | method | precision | recall | F1 | ROC AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, g, method in keys:
        group = [
            r for r in rows if (r["variant"], r["granularity"], r["method"]) == (variant, g, method)
        ]
        mean = {k: _mean([r[k] for r in group]) for k in ("precision", "recall", "f1", "auc")}
        lines.append(
            f"| {variant} | {g} | {method} | {mean['precision']:.2f} | {mean['recall']:.2f} | "
            f"{mean['f1']:.2f} | {mean['auc']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--json", type=Path, default=Path("runs/ground_truth.json"))
    args = parser.parse_args()
    rows = [row for v in args.variants for s in args.seeds for row in run_one(v, s)]
    print(table(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows, "scales": SCALES}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
