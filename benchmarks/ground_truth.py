"""Precision, recall, F1 and ROC AUC against planted ground truth, for pruning and baselines.

    python benchmarks/ground_truth.py --seeds 0 1 2 --json runs/ground_truth.json

For every planted variant and seed: CircuitPruner at the default lambdas (precision, recall,
F1 per granularity), the same with every lambda scaled by 1/4 ... 4 (ROC AUC of the
(false-positive rate, recall) points), and two one-pass baselines cut to the pruned circuit's
size per granularity: attribution patching and activation magnitude (AUC from their scores).
Live nodes are the positives, provably dead ones the negatives; weak and negligible nodes are
left out of both.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from transformer_lens_mgp import DEFAULT_SPARSITY, CircuitPruner, ModelDims
from transformer_lens_mgp.attribution import activation_scores, attribution_scores
from transformer_lens_mgp.planted import VARIANTS, planted_circuit

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
    rows = []
    for g in circuit.granularities:
        live, dead = planted.live[g], planted.dead[g]
        kept = circuit.kept(g)
        row = {"variant": variant, "seed": seed, "granularity": g, "method": "pruning"}
        row.update(confusion(kept, live, dead))
        row["auc"] = sweep_auc([confusion(c.kept(g), live, dead) for c in swept])
        row.update(n_live=int(live.sum()), n_dead=int(dead.sum()), seconds=seconds)
        rows.append(row)
        for name, scores in baselines.items():
            base = {"variant": variant, "seed": seed, "granularity": g, "method": name}
            base.update(confusion(top_k(scores[g], int(kept.sum())), live, dead))
            base["auc"] = score_auc(scores[g], live, dead)
            rows.append(base)
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
