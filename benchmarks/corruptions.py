"""How much an IOI circuit depends on the corruption it was trained with.

    python -m benchmarks.corruptions --out runs/corruptions

One small-circuit fit per IOI corruption (``abc``: three fresh names; ``abb``: the S2 swap;
``random``: independent random names), all on the same clean prompts. Reports the Jaccard
overlap of kept heads, attention neurons and MLP neurons between every two circuits, and each
circuit's held-out KL and recovered logit difference under every corruption (the pruned nodes
take that corruption's activations). Writes ``corruptions.json`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from tqdm.auto import tqdm

from transformer_lens_mgp import CircuitPruner, PruningConfig, load_model, tasks
from transformer_lens_mgp.analysis.evaluation import evaluate_many
from transformer_lens_mgp.tasks.ioi import CORRUPTIONS

GRANULARITIES = ("head", "attn_neuron", "mlp_neuron")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="default: the small default's")
    parser.add_argument("--corruptions", nargs="*", default=list(CORRUPTIONS))
    parser.add_argument("--out", type=Path, default=Path("runs/corruptions"))
    return parser.parse_args(argv)


def jaccard(a, b) -> float:
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    model = load_model(args.model)
    splits = {}
    for corruption in args.corruptions:  # same clean prompts and the same split for each
        data = tasks.ioi(model, n=args.n, seed=args.seed, corruption=corruption)
        splits[corruption] = data.split(args.test_fraction, seed=args.seed)
    steps = {} if args.steps is None else {"steps": args.steps}
    config = PruningConfig(**steps)
    circuits = {}
    for corruption in tqdm(args.corruptions, desc="fits"):
        circuits[corruption] = CircuitPruner(model, config).fit(
            splits[corruption][0], progress=False
        )
    names = list(circuits)
    cross = {}
    for corruption in names:  # every circuit, tested with this corruption's ablation
        results = evaluate_many(model, list(circuits.values()), splits[corruption][1])
        for trained, r in zip(names, results, strict=True):
            cross[f"{trained}|{corruption}"] = {"kl": r.kl, "recovered": r.recovered}
    overlap = {
        f"{a}|{b}": {
            g: jaccard(circuits[a].kept(g), circuits[b].kept(g))
            for g in GRANULARITIES
            if g in circuits[a].granularities
        }
        for a, b in itertools.combinations(names, 2)
    }
    kept = {c: {g: circuits[c].n_kept(g) for g in GRANULARITIES} for c in names}
    record = {
        "n_train": len(splits[names[0]][0]),
        "n_test": len(splits[names[0]][1]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "kept": kept,
        "cross": cross,
        "jaccard": overlap,
        "seconds": time.perf_counter() - start,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "corruptions.json").write_text(json.dumps(record, indent=2))
    print(markdown(record, names))


def markdown(record: dict, names: list[str]) -> str:
    lines = [
        "| trained with | heads | attn neurons | MLP neurons | "
        + " | ".join(f"KL / recovered under {c}" for c in names)
        + " |",
        "|" + "---|" * (4 + len(names)),
    ]
    for t in names:
        k = record["kept"][t]
        cells = [
            f"{record['cross'][f'{t}|{c}']['kl']:.3f} / "
            f"{record['cross'][f'{t}|{c}']['recovered']:.2f}"
            for c in names
        ]
        lines.append(
            f"| {t} | {k['head']:,} | {k['attn_neuron']:,} | {k['mlp_neuron']:,} | "
            + " | ".join(cells)
            + " |"
        )
    lines += ["", "| pair | Jaccard heads | attn neurons | MLP neurons |", "|---|---|---|---|"]
    for pair, j in record["jaccard"].items():
        lines.append(
            f"| {pair.replace('|', ' vs ')} | "
            + " | ".join(f"{j.get(g, float('nan')):.2f}" for g in GRANULARITIES)
            + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
