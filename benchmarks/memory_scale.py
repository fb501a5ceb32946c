"""Peak memory per training step against model size, measured up to a 1.5B-parameter Llama
shape and extrapolated to 8B and 70B: which GPU to ask for.

    python -m benchmarks.memory_scale --json runs/memory_scale.json

Random-weight Llama shapes (gated SiLU MLP, RMS norm, rotary, grouped key/value heads,
Llama-3's vocabulary of 128,256), float32, one batch of ``--batch`` pairs of ``--seq``
tokens. Each measurement is ``perf.py``'s, in a fresh process: the peak over what the process
holds once the model is loaded, so the weights are not in it (they are listed apart). Per
method, a line through the measured points on log-log axes (peak against parameter count)
gives the 8B and 70B rows; those are extrapolations, marked as such.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from benchmarks import perf
from benchmarks.perf import Shape

LLAMA_VOCAB = 128_256
MEASURED = {
    "llama-0.2B": Shape(6, 768, 12, 2048, 64, LLAMA_VOCAB, 4, llama=True),
    "llama-0.5B": Shape(12, 1024, 16, 4096, 64, LLAMA_VOCAB, 8, llama=True),
    "llama-1.5B": Shape(16, 2048, 32, 8192, 64, LLAMA_VOCAB, 8, llama=True),  # Llama-3.2-1B, untied
}
EXTRAPOLATED = {
    "llama-8B": Shape(32, 4096, 32, 14336, 128, LLAMA_VOCAB, 8, llama=True),  # Llama-3-8B
    "llama-70B": Shape(80, 8192, 64, 28672, 128, LLAMA_VOCAB, 8, llama=True),  # Llama-3-70B
}
MODES = ("floor", "ours", "ours-recompute", "eap")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", choices=list(MEASURED), default=list(MEASURED))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--json", type=Path, default=Path("runs/memory_scale.json"))
    args = parser.parse_args()

    measured = {}
    for name in args.shapes:
        shape = MEASURED[name]
        row = {"n_params": shape.n_params}
        for mode in args.modes:
            result = perf.run_one(perf.shape_name(shape), mode, args.batch, args.seq, 1, "cpu")
            row[mode] = result
            print(f"measured {name} {mode}", file=sys.stderr, flush=True)
        measured[name] = row
    fits = {mode: fit(measured, mode) for mode in args.modes}
    extrapolated = {
        name: {"n_params": shape.n_params}
        | {mode: predict(fits[mode], shape.n_params) for mode in args.modes}
        for name, shape in EXTRAPOLATED.items()
    }
    result = {
        "batch": args.batch,
        "seq": args.seq,
        "measured": measured,
        "fits": fits,
        "extrapolated": extrapolated,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print_table(result, args.modes)
    print(f"wrote {args.json}")


def fit(measured: dict, mode: str) -> dict | None:
    """Least-squares line of log(peak MiB) against log(parameters); None under two points."""
    points = [
        (math.log(row["n_params"]), math.log(row[mode]["peak_mib"]))
        for row in measured.values()
        if row.get(mode, {}).get("peak_mib", 0) > 0
    ]
    if len(points) < 2:
        return None
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum(
        (x - mean_x) ** 2 for x, _ in points
    )
    return {"slope": slope, "intercept": mean_y - slope * mean_x, "points": n}


def predict(line: dict | None, n_params: int) -> dict:
    if line is None:
        return {"reason": "fewer than two measured points"}
    return {"peak_mib": math.exp(line["intercept"] + line["slope"] * math.log(n_params))}


def print_table(result: dict, modes) -> None:
    """One Markdown row per shape: weights, then each method's peak per step."""
    heads = " | ".join(f"{m} step" for m in modes)
    print(f"\n| shape | parameters | weights fp32 / bf16 | {heads} |")
    print("|---" * (3 + len(modes)) + "|")
    rows = [(n, r, "") for n, r in result["measured"].items()]
    rows += [(n, r, " (extrapolated)") for n, r in result["extrapolated"].items()]
    for name, row, note in rows:
        weights = row["n_params"] * 4 / 2**30
        cells = [f"{name}{note}", f"{row['n_params'] / 1e9:.2f} B"]
        cells.append(f"{weights:.1f} / {weights / 2:.1f} GiB")
        cells += [_gib(row.get(mode, {})) for mode in modes]
        print("| " + " | ".join(cells) + " |")
    slopes = ", ".join(
        f"{mode} {line['slope']:.2f}" for mode, line in result["fits"].items() if line is not None
    )
    print(f"\nlog-log slopes (peak against parameters): {slopes}")


def _gib(measurement: dict) -> str:
    if "peak_mib" not in measurement:
        return "–"
    return f"{measurement['peak_mib'] / 1024:.2f} GiB"


if __name__ == "__main__":
    main()
