"""One table from several ``node_baselines`` runs: per model and task, pruning's circuit
in-frame and on unseen frames beside the best baseline at the same size.

    for m in default gemma-3-270m; do for t in ioi gp gt; do
      python -m benchmarks.node_baselines --model $m --task $t --scales --head-targets \\
          --out runs/baselines-$m-$t; done; done
    python -m benchmarks.baselines_table runs/baselines-*-* --json runs/generalisation.json

"Best baseline" is the method other than pruning and chance with the lowest unseen-frame KL
at pruning's size (neuron level: the default, and any fixed-target points the run has).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SPLITS = ("in-frame", "unseen frames")
NOT_BASELINES = ("pruning", "random")


def rows_of(run: Path) -> list[dict]:
    """One row per neuron-level point of a ``baselines.json``."""
    record = json.loads((run / "baselines.json").read_text())
    model = record["settings"].get("model") or "SmolLM2-135M"
    out = []
    for point in dict.fromkeys(r["point"] for r in record["rows"] if r["level"] == "neuron"):
        methods = {r["method"]: r for r in record["rows"] if r["point"] == point}
        ours = methods["pruning"]
        rivals = [m for m in methods if m not in NOT_BASELINES]
        best = min(rivals, key=lambda m: methods[m]["unseen frames"]["kl"])
        out.append(
            {
                "model": model,
                "task": record["task"],
                "point": point,
                "kept": ours["kept"],
                "total": ours["total"],
                "pruning": {s: ours[s] for s in SPLITS},
                "best_baseline": best,
                "baseline": {s: methods[best][s] for s in SPLITS},
                "random": {s: methods["random"][s] for s in SPLITS},
            }
        )
    return out


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | task | heads | attn neurons | MLP neurons | KL in-frame / unseen | "
        "recovered in-frame / unseen | best baseline at this size: KL in-frame / unseen "
        "(recovered unseen) | random: KL unseen |",
        "|" + "---|" * 9,
    ]
    for r in rows:
        kept = [
            f"{r['kept'][g]:,} ({100 * r['kept'][g] / r['total'][g]:.1f} %)"
            for g in ("head", "attn_neuron", "mlp_neuron")
        ]
        ours, base = r["pruning"], r["baseline"]
        a, b = (ours[s] for s in SPLITS)
        c, d = (base[s] for s in SPLITS)
        lines.append(
            f"| {r['model']} | {r['task']} | {' | '.join(kept)} | {a['kl']:.3f} / {b['kl']:.3f} | "
            f"{a['recovered']:.2f} / {b['recovered']:.2f} | {r['best_baseline']}: "
            f"{c['kl']:.3f} / {d['kl']:.3f} ({d['recovered']:.2f}) | "
            f"{r['random']['unseen frames']['kl']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="folders written by node_baselines")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = [row for run in args.runs for row in rows_of(run)]
    print(markdown(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
