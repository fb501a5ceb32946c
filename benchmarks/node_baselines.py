"""Faithfulness against size for pruning and node baselines at equal size, on unseen pairs.

    python -m benchmarks.node_baselines --task ioi --out runs/baselines-ioi

One task's pairs come as ``tl-mgp discover`` builds them (``tasks.split_pairs``): from three
quarters of its frames and words, a tenth held out ("in-frame" test pairs), and as many test
pairs from the frames and words the fit never saw ("unseen frames"). Two curves:

- **neuron level**: the default fit (``PruningConfig()``: its size chosen by the
  faithfulness level) and fits at the default targets scaled by ``--scales``; at each fit's
  size, per granularity, the circuits that attribution patching, integrated gradients
  (node-level EAP-IG) and chance choose;
- **head level** (MLPs whole): pruning fits of the heads alone at ``--head-targets``, against
  the same scores and exact activation patching of single heads.

Scores come from the training pairs only. Writes ``baselines.json``, ``baselines.html``
(plotly) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tqdm.auto import tqdm

from transformer_lens_mgp import CircuitPruner, ModelDims, PruningConfig, load_model, tasks
from transformer_lens_mgp.analysis.evaluation import evaluate_many
from transformer_lens_mgp.analysis.subcircuits import random_circuit, scored_circuit
from transformer_lens_mgp.testing.baselines import (
    attribution_scores,
    integrated_gradients_scores,
    patching_scores,
)
from transformer_lens_mgp.training.config import DEFAULT_TARGET

METHODS = ("pruning", "attribution patching", "integrated gradients", "exact patching", "random")
TESTS = {"in-frame": "test", "unseen frames": "unseen"}


def add_pair_args(parser: argparse.ArgumentParser) -> None:
    """The model and the pairs, as ``tl-mgp discover`` builds them (see :func:`build_pairs`)."""
    parser.add_argument("--task", choices=sorted(tasks.TASKS), default="ioi")
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2")
    parser.add_argument("--n", type=int, default=2000, help="pairs from the training frames")
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_pair_args(parser)
    parser.add_argument("--scales", type=float, nargs="*", default=[0.5, 1.0, 2.0])
    parser.add_argument("--head-targets", type=float, nargs="*", default=[0.03, 0.07, 0.15])
    parser.add_argument("--steps", type=int, default=None, help="default: the small default's")
    parser.add_argument("--head-steps", type=int, default=150)
    parser.add_argument("--score-pairs", type=int, default=128)
    parser.add_argument("--patch-pairs", type=int, default=32)
    parser.add_argument("--ig-steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/baselines"))
    return parser.parse_args(argv)


def build_pairs(model, args):
    pairs = tasks.split_pairs(args.task, model, args.n, args.seed, None, args.test_fraction)
    return pairs.train, {"test": pairs.test, "unseen": pairs.unseen}, pairs.vocabulary


def fit_points(model, train, args) -> list[tuple[str, str, object]]:
    """(level, label, circuit) for every pruning fit."""
    dims = ModelDims.from_cfg(model.cfg)
    steps = {} if args.steps is None else {"steps": args.steps}
    points = [("neuron", "default", PruningConfig(**steps))]
    for scale in args.scales:
        target = {
            g: min(1.0, t * scale) for g, t in DEFAULT_TARGET.items() if g in dims.available()
        }
        points.append(("neuron", f"targets x{scale:g}", PruningConfig(target=target, **steps)))
    for t in args.head_targets:
        config = PruningConfig(granularities=("head",), target={"head": t}, steps=args.head_steps)
        points.append(("head", f"heads {t:g}", config))
    fitted = []
    for level, label, config in tqdm(points, desc="pruning fits"):
        circuit = CircuitPruner(model, config).fit(train, progress=False)
        fitted.append((level, label, circuit))
    return fitted


def node_scores(model, train, args) -> dict[str, dict]:
    """Each baseline's node scores; exact patching (per head and MLP) only when head-level
    points will use it."""
    dims = ModelDims.from_cfg(model.cfg)
    scoring = train[: args.score_pairs]
    scores = {
        "attribution patching": attribution_scores(model, scoring, dims),
        "integrated gradients": integrated_gradients_scores(model, scoring, dims, args.ig_steps),
    }
    if args.head_targets:
        patching = train[: args.patch_pairs]
        scores["exact patching"] = patching_scores(model, patching, dims, progress=True)
    return scores


def candidates(level: str, circuit, scores: dict[str, dict]) -> dict[str, object]:
    """Each method's circuit of ``circuit``'s size (exact patching scores heads and MLPs only,
    so it competes at head level)."""
    out = {"pruning": circuit}
    for method, s in scores.items():
        if level == "head" or method != "exact patching":
            out[method] = scored_circuit(circuit, s, method)
    out["random"] = random_circuit(circuit, seed=0)
    return out


def measure(model, fitted, scores, tests) -> list[dict]:
    rows = []
    for level, label, circuit in tqdm(fitted, desc="evaluating"):
        chosen = candidates(level, circuit, scores)
        results = {k: evaluate_many(model, list(chosen.values()), d) for k, d in tests.items()}
        for i, (method, c) in enumerate(chosen.items()):
            row = {
                "level": level,
                "point": label,
                "method": method,
                "sizing": circuit.fit_info.get("sizing"),
                "kept": {g: c.n_kept(g) for g in c.granularities},
                "total": {g: c.n_total(g) for g in c.granularities},
                "size": c.size(),
            }
            for name, key in TESTS.items():
                r = results[key][i]
                row[name] = {"kl": r.kl, "recovered": r.recovered, "accuracy": r.accuracy_circuit}
            rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| level | point | method | heads | attn neurons | MLP neurons | KL in-frame | "
        "KL unseen frames | recovered in-frame | recovered unseen frames |",
        "|" + "---|" * 10,
    ]
    for r in rows:
        kept = [
            f"{r['kept'][g]:,}" if g in r["kept"] else "all"
            for g in ("head", "attn_neuron", "mlp_neuron")
        ]
        a, b = r["in-frame"], r["unseen frames"]
        lines.append(
            f"| {r['level']} | {r['point']} | {r['method']} | {' | '.join(kept)} | "
            f"{a['kl']:.3f} | {b['kl']:.3f} | {a['recovered']:.2f} | {b['recovered']:.2f} |"
        )
    return "\n".join(lines)


def figure(rows: list[dict], path: Path, title: str) -> None:
    """KL against size, one panel per level and test set, one line per method."""
    from plotly.subplots import make_subplots

    levels = [lv for lv in ("neuron", "head") if any(r["level"] == lv for r in rows)]
    fig = make_subplots(
        rows=len(levels),
        cols=len(TESTS),
        subplot_titles=[f"{lv} level, {t}" for lv in levels for t in TESTS],
    )
    colors = dict(
        zip(METHODS, ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#7f7f7f"), strict=True)
    )
    for i, level in enumerate(levels, start=1):
        for j, test in enumerate(TESTS, start=1):
            for method in METHODS:
                points = sorted(
                    (r["kept"]["head"] if level == "head" else r["size"], r[test]["kl"])
                    for r in rows
                    if r["level"] == level and r["method"] == method
                )
                if not points:
                    continue
                fig.add_scatter(
                    x=[p[0] for p in points],
                    y=[p[1] for p in points],
                    mode="lines+markers",
                    name=method,
                    legendgroup=method,
                    showlegend=(i, j) == (1, 1),
                    line={"color": colors[method]},
                    row=i,
                    col=j,
                )
            fig.update_xaxes(
                title_text="kept heads" if level == "head" else "kept fraction of neurons",
                row=i,
                col=j,
            )
            fig.update_yaxes(title_text="KL(full ‖ circuit)", type="log", row=i, col=j)
    fig.update_layout(title=title, height=420 * len(levels), width=1100)
    fig.write_html(path, include_plotlyjs=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    model = load_model(args.model)
    train, tests, vocabulary = build_pairs(model, args)
    fitted = fit_points(model, train, args)
    scores = node_scores(model, train, args)
    rows = measure(model, fitted, scores, tests)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "task": args.task,
        "n_train": len(train),
        "n_test": {k: len(v) for k, v in tests.items()},
        "held_out_vocabulary": {k: list(v) for k, v in vocabulary.held_out.items()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seconds": time.perf_counter() - start,
        "rows": rows,
    }
    (args.out / "baselines.json").write_text(json.dumps(record, indent=2))
    figure(rows, args.out / "baselines.html", f"{args.task}: KL against size on unseen pairs")
    print(markdown(rows))
    print(f"\n{len(train)} training pairs; {record['seconds'] / 60:.1f} min; {args.out}")


if __name__ == "__main__":
    main()
