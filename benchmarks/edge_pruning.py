"""Learned edges among a node circuit's kept nodes, against attribution-ranked and random edges
at equal count, on pairs and templates the fits never saw; and what an edge step costs.

    python -m benchmarks.edge_pruning --circuit runs/ioi/circuit.safetensors --out runs/edges-ioi

The node circuit comes from a node fit (``./run.sh demo`` writes ``runs/ioi/circuit.safetensors``).
Edges are fitted on new IOI pairs (``--seed``), built from part of the templates and names
(``tasks.vocabulary_split``); a tenth of them are held out ("in-template"), and a second set
comes from the templates and names left out ("unseen templates"). For each ``--sparsity``
the learned edge circuit is compared with the same number of edges ranked by attribution
patching (``edge_scores`` per query, key and value input, on the training pairs) and drawn at
random; the node circuit itself is every edge.

Cost (``--cost``): seconds and peak memory of one step on one batch: the node fit's step, the
edge fit's step, and edge attribution patching over the whole model (every node kept), the
one-pass score that edge-level peers start from. Memory is the process's peak resident set
above what it held before the step (``VmHWM`` after ``/proc/self/clear_refs``).

Writes ``edges.json``, ``edges.safetensors`` (the circuit of the first sparsity) and prints
markdown tables.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from benchmarks.perf import peak_mib, start_peak
from transformer_lens_mgp import (
    Circuit,
    CircuitPruner,
    EdgePruner,
    edge_scores,
    load_model,
    per_head_inputs,
    tasks,
)
from transformer_lens_mgp.analysis.edge_evaluation import measure_edges
from transformer_lens_mgp.training.edges import EdgeRun
from transformer_lens_mgp.training.run import PruningRun

TESTS = ("in-template", "unseen templates")
ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--circuit", required=True, help="the node circuit's file")
    parser.add_argument("--n", type=int, default=600, help="IOI pairs to fit the edges on")
    parser.add_argument("--n-unseen", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1, help="seed of the edge fit's pairs")
    parser.add_argument(
        "--score-pairs", type=int, default=256, help="training pairs the attribution scores use"
    )
    parser.add_argument("--sparsity", type=float, nargs="+", default=[1.0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--cost", action="store_true", help="also time one step of each kind")
    parser.add_argument("--cost-only", action="store_true", help="only time the steps")
    parser.add_argument("--cost-kind", choices=COST_KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("runs/edges-ioi"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    model = load_model()
    nodes = Circuit.load(args.circuit, model)
    split = tasks.vocabulary_split("ioi")
    pairs = tasks.ioi(model, n=args.n, seed=args.seed, **split.train)
    train, test = pairs.split(0.1, seed=args.seed)
    if args.cost_kind is not None:  # one measurement, in this fresh process
        print(
            COST_PREFIX + json.dumps(measure_one(args.cost_kind, model, nodes, train, args.batch))
        )
        return
    unseen = tasks.ioi(model, n=args.n_unseen, seed=args.seed + 1, **split.held_out)
    print(f"node circuit: {nodes!r}; {len(train)} training, {len(test)} + {len(unseen)} test pairs")
    scored = train[torch.arange(min(args.score_pairs, len(train)))]
    scores = {} if args.cost_only else edge_scores(model, nodes, scored, by_input=True)

    rows = []
    if args.cost_only:
        args.sparsity, args.cost = [], True
    for i, sparsity in enumerate(args.sparsity):
        start = time.perf_counter()
        learned = EdgePruner(
            model, nodes, sparsity=sparsity, steps=args.steps, batch_size=args.batch
        ).fit(train)
        seconds = time.perf_counter() - start
        if i == 0:
            learned.save(args.out / "edges.safetensors")
        for test_name, data in zip(TESTS, (test, unseen), strict=True):
            summary = measure_edges(model, learned, data, scores)
            for rule, result in summary["evaluation"].items():
                rows.append(
                    dict(
                        sparsity=sparsity,
                        test=test_name,
                        rule=rule,
                        edges=result["kept"]["edge"],
                        of=result["total"]["edge"],
                        kl=result["kl"],
                        recovered=result["recovered"],
                        accuracy=result["accuracy_circuit"],
                        accuracy_full=result["accuracy_full"],
                        fit_seconds=seconds if rule == "learned" else None,
                    )
                )
        print_rows([r for r in rows if r["sparsity"] == sparsity])

    cost = measure_cost(args) if args.cost else None
    if cost:
        print_cost(cost)
    report = {
        "circuit": str(args.circuit),
        "nodes": {g: nodes.n_kept(g) for g in nodes.dims.available()},
        "pairs": {
            "train": len(train),
            "scored": len(scored),
            "in-template": len(test),
            "unseen": len(unseen),
        },
        "steps": args.steps,
        "batch": args.batch,
        "rows": rows,
        "cost": cost,
    }
    path = args.out / "edges.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")


COST_KINDS = ("node step", "edge step, the circuit's nodes", "edge step, every node kept")
COST_KINDS += ("edge attribution, whole model",)


def measure_cost(args) -> dict:
    """Each kind of step in a fresh process (a process's resident peak never comes down, so
    one that already ran a fit would hide a step's memory)."""
    out = {}
    for kind in COST_KINDS:
        cmd = [sys.executable, "-m", "benchmarks.edge_pruning", "--circuit", str(args.circuit)]
        cmd += ["--n", str(args.n), "--seed", str(args.seed), "--batch", str(args.batch)]
        done = subprocess.run(
            [*cmd, "--cost-kind", kind], capture_output=True, text=True, cwd=ROOT, check=False
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith(COST_PREFIX)]
        if done.returncode or not lines:
            out[kind] = {"error": done.stderr[-1500:]}
            continue
        out[kind] = json.loads(lines[-1].removeprefix(COST_PREFIX))
    return out


COST_PREFIX = "COST "


def measure_one(kind: str, model, nodes: Circuit, train, batch: int, steps: int = 3) -> dict:
    """Seconds per step (mean of ``steps`` after one warm-up) and peak MiB of the steps
    (warm-up included) above what the process held once the run was prepared."""
    data = train[torch.arange(batch * (steps + 1))]
    everything = Circuit.from_kept(
        nodes.dims, {"head": torch.ones(nodes.dims.shape("head"), dtype=torch.bool)}
    )
    if kind == "edge attribution, whole model":
        one_batch = data[torch.arange(batch)]
        base = start_peak(False)
        edge_scores(model, everything, one_batch, batch_size=batch, by_input=True)  # warm-up
        start = time.perf_counter()
        scores = edge_scores(model, everything, one_batch, batch_size=batch, by_input=True)
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "peak_mib": peak_mib(False) - base, "edges": len(scores)}
    if kind == "node step":
        pruner = CircuitPruner(model, steps=steps + 1, batch_size=batch)
        execution = pruner.execution()
        make = lambda: PruningRun(model, pruner.config.resolved(nodes.dims), nodes.dims, data)  # noqa: E731
    else:
        circuit = nodes if kind == "edge step, the circuit's nodes" else everything
        pruner = EdgePruner(model, circuit, steps=steps + 1, batch_size=batch)
        execution = pruner.execution()
        make = lambda: EdgeRun(model, pruner.config, circuit, pruner.graph, data)  # noqa: E731
    with execution, per_head_inputs(model) if kind != "node step" else nullcontext():
        run = make()
        run.prepare()
        base = start_peak(False)  # the steps' peak, the warm-up's included
        run.step()
        start = time.perf_counter()
        for _ in range(steps):
            run.step()
        out = {"seconds": (time.perf_counter() - start) / steps, "peak_mib": peak_mib(False) - base}
        if isinstance(run, EdgeRun):
            out.update(writers=len(run.graph.writers), edges=run.graph.n_edges)
    return out


def print_rows(rows: list[dict]) -> None:
    print("| sparsity | test pairs | edges chosen by | edges | KL | recovered | accuracy |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['sparsity']} | {r['test']} | {r['rule']} | {r['edges']} / {r['of']} | "
            f"{r['kl']:.3f} | {r['recovered']:.2f} | {r['accuracy']:.3f} "
            f"(full {r['accuracy_full']:.3f}) |"
        )


def print_cost(cost: dict) -> None:
    print("| one step of | writers | edges | seconds | peak MiB above start |")
    print("|---|---|---|---|---|")
    for name, value in cost.items():
        if "error" in value:
            print(f"| {name} | failed: {value['error'].splitlines()[-1:]} | | | |")
        else:
            print(
                f"| {name} | {value.get('writers', '')} | {value.get('edges', '')} | "
                f"{value['seconds']:.2f} | {value['peak_mib']:.0f} |"
            )


if __name__ == "__main__":
    main()
