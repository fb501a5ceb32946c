"""Does a fit converge, and does it land on its targets?

    python -m benchmarks.convergence --tasks ioi gp gt --out runs/convergence

One fit per task with the default ``PruningConfig()`` (what ``tl-mgp discover`` runs) or with
settings changed by ``--set name=value`` (``--set steps=1000`` for a longer fit). For each fit: the
kept fraction of the extracted circuit per granularity at the end and its relative change
over the last fifth of the steps, the target it aimed at, held-out KL, logit difference
recovered and accuracy, and the time in ``fit``. Writes ``convergence.json`` and prints a
markdown table.
"""

from __future__ import annotations

import argparse
import ast
import json
import time
from pathlib import Path

from transformer_lens_mgp import CircuitPruner, evaluate, load_model
from transformer_lens_mgp.analysis.convergence import settling
from transformer_lens_mgp.tasks import TASKS, split_pairs
from transformer_lens_mgp.training.config import PAIRS_PER_STEP, PruningConfig

GRANULARITIES = ("head", "attn_neuron", "mlp_neuron")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2")
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=["ioi"])
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="PruningConfig settings to change, e.g. steps=300 'target={\"head\": 0.1}'",
    )
    parser.add_argument("--n", type=int, default=None, help="pairs (default: 8 per step)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/convergence"))
    return parser.parse_args(argv)


def settings(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        out[name] = ast.literal_eval(value)
    return out


def measure(model, task: str, overrides: dict, seed: int, n: int | None) -> dict:
    config = PruningConfig(seed=seed, **overrides)
    n = PAIRS_PER_STEP * config.steps if n is None else n
    pairs = split_pairs(task, model, n, seed)  # as tl-mgp discover builds them
    train, test = pairs.train, pairs.test
    start = time.perf_counter()
    circuit = CircuitPruner(model, config).fit(train)
    seconds = time.perf_counter() - start
    result, unseen = evaluate(model, circuit, test), evaluate(model, circuit, pairs.unseen)
    history = circuit.history
    rows = {
        row.granularity: {"n_kept": circuit.n_kept(row.granularity), **row.to_dict()}
        for row in settling(circuit)
        if row.granularity in GRANULARITIES
    }
    return {
        "task": task,
        "config": circuit.config,
        "n_train": len(train),
        "n_test": len(test),
        "granularities": rows,
        "kl": result.kl,
        "recovered": result.recovered,
        "accuracy": result.accuracy_circuit,
        "accuracy_full": result.accuracy_full,
        "unseen_frames": {"kl": unseen.kl, "recovered": unseen.recovered},
        "fit_seconds": round(seconds, 1),
        "size_history": {g: history[f"size/{g}"] for g in rows},
        "target_scale": circuit.fit_info.get("target_scale"),
        "sizing": circuit.fit_info.get("sizing"),
    }


def table(results: list[dict]) -> str:
    lines = [
        "| task | granularity | kept | target | change over last fifth | KL | recovered | fit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for g, row in r["granularities"].items():
            target = "–" if row["target"] is None else f"{100 * row['target']:.1f} %"
            lines.append(
                f"| {r['task']} | {g} | {row['n_kept']:,} ({100 * row['kept']:.2f} %) | "
                f"{target} | {100 * row['change']:.1f} % | {r['kl']:.3f} | "
                f"{r['recovered']:.2f} | {r['fit_seconds']:.0f} s |"
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    model = load_model(args.model)
    overrides = settings(args.set)
    results = [measure(model, task, overrides, args.seed, args.n) for task in args.tasks]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "convergence.json").write_text(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
