"""``tl-mgp``: parse arguments, call the library, print what it found.

Only the package's own errors (a wrong argument, file or setting) become a one-line
``tl-mgp: error:`` and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from pathlib import Path

from . import models, tasks
from .analysis.discovery import measure
from .analysis.run_folder import (
    CIRCUIT_FILE,
    EDGES_FILE,
    LEARNED_EDGES_FILE,
    check_out_dir,
    point_name,
    sweep_summary,
    write_comparison_folder,
    write_edges_folder,
    write_metrics,
    write_run_folder,
    write_sweep_folder,
)
from .analysis.text import discovery_text, edges_table, faithfulness_table, number
from .core.checks import check_device
from .core.circuit import Circuit
from .core.data import PairedDataset
from .core.edge_graph import check_hooked
from .core.errors import MissingFileError, TrainingDivergedError, UsageError
from .core.hooks import ABLATIONS
from .core.nodes import GRANULARITIES
from .core.pairs_file import read_pair_rows
from .tasks import TASKS
from .tasks.ioi import CORRUPTIONS as IOI_CORRUPTIONS
from .training.config import DEFAULT_TARGET, PAIRS_PER_STEP, PruningConfig
from .training.discover import EDGE_CHOICES, discover, fit_edges
from .training.edges import EdgeConfig
from .training.sweeps import dask_executor, sweep


def _per_granularity(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep or name not in GRANULARITIES:
        raise argparse.ArgumentTypeError(
            f"expected GRANULARITY=NUMBER (GRANULARITY one of {', '.join(GRANULARITIES)}), "
            f"got {text!r}"
        )
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} in {text!r} is not a number") from None


def _target_point(text: str) -> dict[str, float]:
    """``head=0.1,mlp_neuron=0.05``: one sweep point."""
    return dict(_per_granularity(part) for part in text.split(",") if part)


def _add_data_args(parser, out_required: bool = True) -> None:
    add = parser.add_argument
    add("--out", type=Path, required=out_required, default=None, help="output folder")
    add("--task", choices=sorted(TASKS), default=None, help="task (default: ioi)")
    add(
        "--data",
        type=Path,
        default=None,
        metavar="FILE",
        help="your own pairs, .jsonl or .csv (clean, corrupted, answer[, wrong]) instead of a task",
    )
    add(
        "--model",
        default=None,
        metavar="SOURCE",
        help="gemma-3-270m, a .gguf file, a Hugging "
        "Face folder or a TransformerLens name (default: the embedded SmolLM2)",
    )
    add("--corruption", choices=IOI_CORRUPTIONS, default=None, help="IOI only: abc (default)")
    add("--n", type=int, default=None, help=f"pairs to generate (default: {PAIRS_PER_STEP}/step)")
    add("--test-fraction", type=float, default=0.1, help="held-out share (default: 0.1)")
    add("--seed", type=int, default=0)
    add("--device", default=None, help="e.g. cuda (default: cpu)")
    add("--quiet", action="store_true", help="no progress bars")


def _add_fit_args(parser) -> None:
    add = parser.add_argument
    add("--steps", type=int, default=None, help="optimiser steps (default: 250)")
    add("--batch-size", type=int, default=None)
    add("--lr", type=float, default=None)
    add("--granularities", nargs="+", choices=GRANULARITIES, default=None)
    add("--ablation", choices=ABLATIONS, default="corrupted")
    add("--metric-weight", type=float, default=None, help="weight of the logit-difference gap")
    add("--gradient-checkpointing", action="store_true", help="less memory, one more forward")
    add("--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: auto")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tl-mgp", description="Multi-granular node pruning.")
    sub = parser.add_subparsers(dest="command", required=True)
    targets = ", ".join(f"{g}={t:g}" for g, t in DEFAULT_TARGET.items())
    disc = sub.add_parser("discover", help="fit a circuit on a task and write a run folder")
    _add_data_args(disc)
    _add_fit_args(disc)
    disc.add_argument(
        "--target",
        type=_per_granularity,
        nargs="+",
        default=[],
        metavar="G=FRACTION",
        help=f"kept fractions, one fit at that size (default: start at {targets} and keep the "
        "smallest of up to three fits that stays faithful on validation pairs)",
    )
    disc.add_argument(
        "--sparsity",
        type=_per_granularity,
        nargs="+",
        default=[],
        metavar="G=LAMBDA",
        help="fixed prices instead of targets",
    )
    disc.add_argument(
        "--max-kl",
        type=float,
        default=None,
        help="instead of a size, the largest held-out KL accepted",
    )
    disc.add_argument("--curve", action="store_true", help="faithfulness vs size (CPR/CMD)")
    disc.add_argument(
        "--per-role",
        action="store_true",
        help="one mask per node and token role of the task (IO, S1, ..., END, other)",
    )
    disc.add_argument(
        "--edges",
        choices=EDGE_CHOICES,
        default="scored",
        help="edges among the kept nodes: scored by attribution (default, the circuit's "
        "graph), also learned, or none (both need a HookedTransformer)",
    )
    disc.add_argument(
        "--no-node-effects",
        action="store_true",
        help="skip ranking the nodes and profiling the top heads and neurons",
    )

    sweep_parser = sub.add_parser("sweep", help="one circuit per target size (Pareto curve)")
    _add_data_args(sweep_parser)
    _add_fit_args(sweep_parser)
    sweep_parser.add_argument(
        "--targets",
        type=_target_point,
        nargs="+",
        required=True,
        metavar="G=F[,G=F...]",
        help="one sweep point each",
    )
    sweep_parser.add_argument("--workers", type=int, default=1, help="points fitted at once")
    sweep_parser.add_argument(
        "--dask-scheduler",
        default=None,
        metavar="ADDRESS",
        help="run the points on this Dask cluster",
    )

    comp = sub.add_parser("compare", help="what two saved circuits of one model share")
    comp.add_argument("circuits", type=Path, nargs=2, metavar="CIRCUIT")
    comp.add_argument("--out", type=Path, required=True, help="output folder")
    comp.add_argument("--names", nargs=2, default=None, metavar="NAME", help="labels")

    edges = sub.add_parser("edges", help="learn the edges among a saved circuit's nodes")
    _add_data_args(edges, out_required=False)
    edges.add_argument("run", type=Path, help="a run folder of discover, or its circuit file")
    edges.add_argument("--sparsity", type=float, default=None, help="price of every edge")
    edges.add_argument("--target-edges", type=int, default=None, help="edges to keep")
    edges.add_argument("--steps", type=int, default=None, help="optimiser steps (default 200)")
    edges.add_argument("--batch-size", type=int, default=None)
    edges.add_argument("--lr", type=float, default=None)

    evaluate = sub.add_parser("evaluate", help="evaluate a saved circuit on a task")
    _add_data_args(evaluate, out_required=False)
    evaluate.add_argument("circuit", type=Path, help="a circuit file written by discover")
    evaluate.add_argument("--curve", action="store_true", help="faithfulness vs size")
    return parser  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"discover": _discover, "sweep": _sweep, "evaluate": _evaluate,
                "compare": _compare, "edges": _edges}  # fmt: skip
    try:
        return commands[args.command](args)
    except (UsageError, TrainingDivergedError) as err:
        print(f"tl-mgp: error: {err}", file=sys.stderr)
        return 2


def _given(args, names: tuple[str, ...]) -> dict:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _config(args) -> PruningConfig:
    """``PruningConfig()`` with what the command line changed (a size turns the default
    targets off)."""
    fit = ("steps", "batch_size", "lr", "granularities", "metric_weight", "bf16", "max_kl")
    sized = {"target": dict(args.target)} if getattr(args, "target", None) else {}
    if getattr(args, "sparsity", None):
        sized["sparsity"] = dict(args.sparsity)
    return PruningConfig(seed=args.seed, ablation=args.ablation, **sized, **_given(args, fit),
                         gradient_checkpointing=args.gradient_checkpointing,
                         per_role=getattr(args, "per_role", False))  # fmt: skip


def _load(args):
    """The model, the train and test pairs, the pairs of unseen frames (a built-in task's;
    None for a pairs file) and the run's facts, after checking what can be checked before the
    work starts: the device and the output folder."""
    check_device(args.device)
    rows = _check_data_args(args)
    if args.out is not None:
        check_out_dir(args.out)
    start = time.perf_counter()
    model = models.load_model(args.model, device=args.device, progress=not args.quiet)
    print(f"model loaded in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    unseen = None
    if rows is not None:
        data = PairedDataset.from_rows(model, rows, name=args.data.stem)
        train, test = data.split(args.test_fraction, seed=args.seed)
    else:
        n = args.n if args.n is not None else PAIRS_PER_STEP * (getattr(args, "steps", None) or 250)
        pairs = tasks.split_pairs(args.task, model, n, args.seed, args.corruption,
                                  args.test_fraction)  # fmt: skip
        train, test, unseen = pairs.train, pairs.test, pairs.unseen
    task = args.task if rows is None else args.data.name
    facts = {"task": task, "model": args.model or f"{models.DEFAULT_MODEL_NAME} (embedded)"}
    if "corruption" in train.meta:
        facts["corruption"] = train.meta["corruption"]
    return model, train, test, unseen, facts


def _check_data_args(args):
    """The pairs file's rows (checked before the model loads), or None for a built-in task."""
    if args.data is None:
        args.task = args.task or "ioi"
        tasks.check_task(args.task, args.corruption)
        return None
    given = [f"--{n}" for n in ("task", "corruption", "n") if getattr(args, n) is not None]
    if given:
        raise UsageError(f"--data gives the pairs; drop {', '.join(given)}")
    return read_pair_rows(args.data)


def _discover(args) -> int:
    wall = time.perf_counter()
    config = _config(args)  # a bad setting fails before the model loads
    model, train, test, unseen, facts = _load(args)
    loaded = time.perf_counter() - wall
    effects, progress = not args.no_node_effects, not args.quiet
    run = discover(model, train, test, config, unseen=unseen, node_effects=effects,
                   curve=args.curve, edges=args.edges, facts=facts, progress=progress)  # fmt: skip
    run = run.replace(timings=dataclasses.replace(run.timings, model_and_pairs=loaded))
    write_run_folder(args.out, run, title=f"{facts['task']} circuit")
    print(discovery_text(run))
    extra = ", nodes.json" if run.anatomy is not None else ""
    extra += f", {EDGES_FILE}, {LEARNED_EDGES_FILE}" if run.learned_edges is not None else ""
    print(f"wrote {args.out}/{CIRCUIT_FILE}, metrics.json, graph.json{extra}, report.html")
    return 0


def _edges(args) -> int:
    wall = time.perf_counter()
    path = args.run / CIRCUIT_FILE if args.run.is_dir() else args.run
    if not path.is_file():
        raise MissingFileError(f"no circuit at {path}; give a run folder written by tl-mgp "
                               "discover or its circuit.safetensors")  # fmt: skip
    out = args.out or path.parent
    fit = ("sparsity", "target_edges", "steps", "batch_size", "lr")
    config = EdgeConfig(seed=args.seed, **_given(args, fit))
    check_out_dir(out)
    model, train, test, _, _ = _load(args)
    check_hooked(model)
    circuit = Circuit.load(path, model=model)
    edges, summary = fit_edges(model, circuit, train, test, config, progress=not args.quiet)
    summary["wall_seconds"] = round(time.perf_counter() - wall, 1)
    write_edges_folder(out, edges, summary)
    print(edges.summary())
    print(edges_table(summary))
    strongest = ", ".join(f"{e['from']}->{e['to']}({e['inputs']})" for e in summary["edges"][:6])
    print(f"strongest kept edges: {strongest}")
    print(f"wrote {out}/{EDGES_FILE}, {LEARNED_EDGES_FILE}, edges.html")
    return 0


def _sweep(args) -> int:
    wall = time.perf_counter()
    config = _config(args)
    model, train, test, _, facts = _load(args)
    loader = functools.partial(models.load_model, args.model, device=args.device)
    with dask_executor(args.dask_scheduler) as executor:
        points = sweep(model, train, args.targets, config, validation=test, out_dir=args.out,
                       workers=args.workers, executor=executor,
                       load_model=loader if executor is not None else None,
                       progress=not args.quiet)  # fmt: skip
    summary = sweep_summary(points, {**facts, "n_train": len(train), "n_test": len(test)})
    summary["wall_seconds"] = round(time.perf_counter() - wall, 1)
    write_sweep_folder(args.out, summary, points)
    print(f"{'target':<44} {'size':>8} {'KL':>8} {'recovered':>10}")
    for p in summary["points"]:
        print(f"{point_name(p['target']):<44} {p['size']:>8.4f} {number(p['kl']):>8} "
              f"{number(p['recovered']):>10}")  # fmt: skip
    print(f"faithfulness vs size: CPR {summary['cpr']:.3f}, CMD {summary['cmd']:.3f}")
    print(f"wrote {args.out}/sweep.json, sweep.html and one folder per point")
    return 0


def _evaluate(args) -> int:
    if not args.circuit.is_file():
        raise MissingFileError(f"no circuit file at {args.circuit}")
    model, train, test, unseen, facts = _load(args)
    circuit = Circuit.load(args.circuit, model=model)
    facts["n_train"] = len(train)
    run = measure(model, circuit, test, unseen=unseen, seed=args.seed, curve=args.curve,
                  facts=facts)  # fmt: skip
    print(circuit.summary())
    print(faithfulness_table(run))
    if run.curve is not None:
        print(f"faithfulness vs size: CPR {run.curve.cpr:.3f}, CMD {run.curve.cmd:.3f}")
    if args.out is not None:
        print(f"wrote {write_metrics(args.out, run)}")
    return 0


def _compare(args) -> int:
    check_out_dir(args.out)
    a, b = (Circuit.load(path) for path in args.circuits)
    names = tuple(args.names or (_label(args.circuits[0]), _label(args.circuits[1])))
    comparison = write_comparison_folder(args.out, a, b, names)
    print(comparison.table())
    print(f"shared heads: {', '.join(comparison.shared_heads) or 'none'}")
    print(f"wrote {args.out}/comparison.json, comparison.html")
    return 0


def _label(path: Path) -> str:
    """A circuit's name from its file: the run folder's name for ``circuit.safetensors``."""
    return path.parent.name if path.stem == "circuit" and path.parent.name else path.stem


if __name__ == "__main__":
    sys.exit(main())
