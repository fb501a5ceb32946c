"""Does the size follow the task? The default's size search on several tasks, every rung
measured on held-out pairs.

    python -m benchmarks.sizing --tasks ioi gp gt --data examples/agreement_pairs.jsonl \\
        --out runs/sizing

Per task, one default fit (``CircuitPruner(model).fit(train)``, pairs as ``tl-mgp discover``
builds them; a pairs file is split a tenth held out): each circuit the search measured
(``pruner.rungs_``) with its size, its faithfulness on the validation pairs (what chose it) and
on the held-out in-frame and unseen-frame pairs, and which one the fit returned. The first
rung is the fit at the default targets, a fixed share whatever the task. Writes
``sizing.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from transformer_lens_mgp import CircuitPruner, PairedDataset, evaluate_many, load_model, tasks
from transformer_lens_mgp.core.pairs_file import read_pair_rows
from transformer_lens_mgp.training.config import PAIRS_PER_STEP, PruningConfig

COUNTED = ("head", "attn_neuron", "mlp_neuron")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=["ioi", "gp", "gt"])
    parser.add_argument("--data", type=Path, nargs="*", default=[], help="pairs files (JSONL)")
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2")
    parser.add_argument("--n", type=int, default=None, help="default: 8 per step")
    parser.add_argument("--steps", type=int, default=None, help="default: the default's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/sizing"))
    return parser.parse_args(argv)


def pairs_of(model, source, args) -> tuple[str, PairedDataset, dict[str, PairedDataset]]:
    """(name, training pairs, held-out sets) of a built-in task or a pairs file."""
    if isinstance(source, Path):
        data = PairedDataset.from_rows(model, read_pair_rows(source), name=source.stem)
        train, test = data.split(0.1, seed=args.seed)
        return source.stem, train, {"in-frame": test}
    n = args.n or PAIRS_PER_STEP * (args.steps or PruningConfig().steps)
    pairs = tasks.split_pairs(source, model, n, args.seed)
    return source, pairs.train, {"in-frame": pairs.test, "unseen frames": pairs.unseen}


def measure(model, name: str, train, tests, args) -> dict:
    config = PruningConfig(seed=args.seed, **({} if args.steps is None else {"steps": args.steps}))
    pruner = CircuitPruner(model, config)
    start = time.perf_counter()
    circuit = pruner.fit(train)
    seconds = time.perf_counter() - start
    results = {k: evaluate_many(model, list(pruner.rungs_), d) for k, d in tests.items()}
    rungs = []
    for i, (rung, c) in enumerate(zip(circuit.fit_info["sizing"], pruner.rungs_, strict=True)):
        row = {**rung, "kept": {g: c.n_kept(g) for g in COUNTED if g in c.granularities}}
        row["total"] = {g: c.n_total(g) for g in row["kept"]}
        row["chosen"] = rung["scale"] == circuit.fit_info["target_scale"]
        for split, evaluations in results.items():
            e = evaluations[i]
            row[split] = {"kl": e.kl, "recovered": e.recovered, "accuracy": e.accuracy_circuit}
        rungs.append(row)
    n_validation = circuit.fit_info["n_validation"]
    return {"task": name, "n_train": len(train), "n_validation": n_validation,
            "n_test": {k: len(d) for k, d in tests.items()}, "fit_seconds": round(seconds, 1),
            "level": circuit.config["faithfulness"], "rungs": rungs}  # fmt: skip


def markdown(records: list[dict]) -> str:
    lines = [
        "| task | targets | heads | attn neurons | MLP neurons | validation: KL / empty, "
        "recovered | held out: KL, recovered | unseen frames: KL, recovered | returned |",
        "|" + "---|" * 9,
    ]
    for record in records:
        for r in record["rungs"]:
            kept = [f"{r['kept'].get(g, 0):,}" for g in COUNTED]
            rec = "–" if r["recovered"] is None else f"{r['recovered']:.2f}"
            cells = [
                f"{r[s]['kl']:.3f}, {r[s]['recovered']:.2f}" if s in r else "–"
                for s in ("in-frame", "unseen frames")
            ]
            met = "" if r["met"] else " (missed)"
            lines.append(
                f"| {record['task']} | x{r['scale']:g} | {' | '.join(kept)} | "
                f"{r['kl_share']:.3f}, {rec}{met} | {' | '.join(cells)} | "
                f"{'yes' if r['chosen'] else ''} |"
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    model = load_model(args.model)
    records = [measure(model, *pairs_of(model, s, args), args) for s in [*args.tasks, *args.data]]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sizing.json").write_text(json.dumps(records, indent=2))
    print(markdown(records))


if __name__ == "__main__":
    main()
