"""Tabulate `tl-mgp discover` runs: one row per run folder, printed as markdown, saved as JSON.

for t in ioi gp gt; do tl-mgp discover --task $t --out runs/$t; done
python -m benchmarks.task_table runs/ioi runs/gp runs/gt --json runs/tasks.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = ("head", "attn_neuron", "mlp", "mlp_neuron")


def row(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    ours, rand = metrics["circuit"], metrics["random_circuit_same_size"]
    return {
        "task": metrics["task"],
        "kept": {g: [ours["kept"][g], ours["total"][g]] for g in COLUMNS if g in ours["kept"]},
        "kl": ours["kl"],
        "recovered": ours["recovered"],
        "accuracy": [ours["accuracy_circuit"], ours["accuracy_full"]],
        "random_kl": rand["kl"],
        "random_recovered": rand["recovered"],
        "unseen": _faithful(metrics.get("circuit_unseen_frames")),
        "wall_seconds": metrics["wall_seconds"],
        "fit_seconds": metrics["fit_seconds"],
        "peak_rss_mib": metrics["peak_rss_mib"],
    }


def _faithful(evaluation: dict | None) -> list[float] | None:
    """KL and recovered of a run's evaluation on unseen frames (None: a run without them)."""
    return None if evaluation is None else [evaluation["kl"], evaluation["recovered"]]


def markdown(rows: list[dict]) -> str:
    head = (
        "| task | heads | attn neurons | MLPs | MLP neurons | KL | recovered | accuracy "
        "(circuit / full) | random: KL / recovered | unseen frames: KL / recovered | wall time "
        "| peak RSS |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        kept = [
            f"{k:,} / {n:,} ({100 * k / n:.1f} %)" if (k, n) != (None, None) else "–"
            for k, n in (r["kept"].get(g, (None, None)) for g in COLUMNS)
        ]
        unseen = "–" if r["unseen"] is None else "{:.3f} / {:.2f}".format(*r["unseen"])
        lines.append(
            f"| {r['task']} | {' | '.join(kept)} | {r['kl']:.3f} | {r['recovered']:.2f} | "
            f"{r['accuracy'][0]:.2f} / {r['accuracy'][1]:.2f} | "
            f"{r['random_kl']:.2f} / {r['random_recovered']:.2f} | {unseen} | "
            f"{r['wall_seconds'] / 60:.1f} min | {r['peak_rss_mib'] / 1024:.1f} GiB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="folders written by tl-mgp discover")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    rows = [row(run) for run in args.runs]
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
