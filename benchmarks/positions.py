"""Position-aware nodes against position-agnostic ones, at equal (node x position) count.

    python -m benchmarks.positions --task ioi --out runs/positions-ioi

``PruningConfig(per_role=True)`` gives each node one mask per token role the task records
(IOI: IO, S1, S1+1, S2, END) and one for every other position ("other"), all trained in one
run. A node of a position-agnostic circuit counts once per slot: the default circuit of k
heads holds 6k (head, slot) pairs on IOI. On in-frame and unseen-frame test pairs (as
``tl-mgp discover`` builds them):

- **pruning**: one fit at the default targets, every node at every position;
- **pruning per role**: one fit at the same targets over (node, slot) pairs;
- **integrated gradients per role**: node-level EAP-IG scores summed per slot, the best
  (node, slot) pairs at the per-role fit's counts, granularity by granularity; and
  integrated gradients per node at the agnostic fit's counts;
- **random per role** at the per-role fit's counts.

Writes ``positions.json`` and ``positions.html`` (the per-role circuit's kept heads and MLP
neurons per slot and layer) and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from einops import reduce

from benchmarks.node_baselines import add_pair_args, build_pairs
from transformer_lens_mgp import Circuit, CircuitPruner, ModelDims, PruningConfig, load_model
from transformer_lens_mgp.analysis.evaluation import evaluate_many
from transformer_lens_mgp.analysis.plotting import plot_role_positions
from transformer_lens_mgp.analysis.subcircuits import random_circuit, scored_circuit
from transformer_lens_mgp.testing.baselines import integrated_gradients_scores
from transformer_lens_mgp.training.config import DEFAULT_TARGET

COUNTED = ("head", "attn_neuron", "mlp_neuron")
TESTS = {"in-frame": "test", "unseen frames": "unseen"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_pair_args(parser)
    parser.add_argument("--steps", type=int, default=None, help="default: the default's")
    parser.add_argument("--score-pairs", type=int, default=128)
    parser.add_argument("--ig-steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/positions"))
    return parser.parse_args(argv)


def kept_per_slot(circuit: Circuit, g: str, n_slots: int) -> list[int]:
    """Kept nodes of ``g`` in each slot (a circuit without slots keeps its nodes in all)."""
    if not circuit.slots:
        return [circuit.n_kept(g)] * n_slots
    return reduce(circuit.kept(g).long(), "s ... -> s", "sum").tolist()


def candidates(model, train, agnostic: Circuit, per_role: Circuit, args) -> dict[str, Circuit]:
    """Every method's circuit."""
    dims = ModelDims.from_cfg(model.cfg)
    scoring = train[: args.score_pairs]
    role_scores = integrated_gradients_scores(model, scoring, dims, args.ig_steps, per_role=True)
    node_scores = integrated_gradients_scores(model, scoring, dims, args.ig_steps)
    return {
        "pruning": agnostic,
        "integrated gradients": scored_circuit(agnostic, node_scores),
        "pruning per role": per_role,
        "integrated gradients per role": scored_circuit(per_role, role_scores),
        "random per role": random_circuit(per_role, seed=0),
    }


def markdown(rows: list[dict], slot_names: list[str]) -> str:
    lines = [
        "| method | head x slot (heads) | attn neuron x slot | MLP neuron x slot | "
        "KL in-frame / unseen | recovered in-frame / unseen |",
        "|" + "---|" * 6,
    ]
    for r in rows:
        k, a, b = r["kept"], r["in-frame"], r["unseen frames"]
        lines.append(
            f"| {r['method']} | {k['head']:,} ({r['distinct_heads']}) | {k['attn_neuron']:,} | "
            f"{k['mlp_neuron']:,} | {a['kl']:.3f} / {b['kl']:.3f} | "
            f"{a['recovered']:.2f} / {b['recovered']:.2f} |"
        )
    lines += ["", "| method | nodes | " + " | ".join(slot_names) + " |"]
    lines.append("|" + "---|" * (2 + len(slot_names)))
    for r in rows:
        for g, counts in r["per_slot"].items():
            cells = " | ".join(f"{c:,}" for c in counts)
            lines.append(f"| {r['method']} | {g} | {cells} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    model = load_model(args.model)
    train, tests, _ = build_pairs(model, args)
    slot_names = [*train.roles, "other"]
    dims = ModelDims.from_cfg(model.cfg)
    target = {g: t for g, t in DEFAULT_TARGET.items() if g in dims.available()}
    steps = {} if args.steps is None else {"steps": args.steps}
    config = PruningConfig(target=target, seed=args.seed, **steps)
    agnostic = CircuitPruner(model, config).fit(train)
    per_role = CircuitPruner(model, config.replace(per_role=True)).fit(train)
    chosen = candidates(model, train, agnostic, per_role, args)
    results = {k: evaluate_many(model, list(chosen.values()), d) for k, d in tests.items()}
    rows = []
    for i, (method, c) in enumerate(chosen.items()):
        per_slot = {g: kept_per_slot(c, g, len(slot_names)) for g in ("head", "mlp_neuron")}
        row = {
            "method": method,
            "kept": {g: sum(kept_per_slot(c, g, len(slot_names))) for g in COUNTED},
            "distinct_heads": c.any_position().n_kept("head"),
            "per_slot": per_slot,
        }
        for name, key in TESTS.items():
            r = results[key][i]
            row[name] = {"kl": r.kl, "recovered": r.recovered, "accuracy": r.accuracy_circuit}
        rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "task": args.task,
        "slots": slot_names,
        "n_train": len(train),
        "n_test": {k: len(v) for k, v in tests.items()},
        "fit_seconds": {
            "pruning": agnostic.fit_info["seconds"],
            "pruning per role": per_role.fit_info["seconds"],
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seconds": time.perf_counter() - start,
        "rows": rows,
    }
    (args.out / "positions.json").write_text(json.dumps(record, indent=2))
    figure = plot_role_positions(per_role)
    figure.update_layout(title=f"{args.task}: kept per token role and layer")
    figure.write_html(args.out / "positions.html", include_plotlyjs=True)
    print(markdown(rows, slot_names))
    print(f"\n{len(train)} training pairs; {record['seconds'] / 60:.1f} min; {args.out}")


if __name__ == "__main__":
    main()
