"""``tl-mgp``: parse arguments, build a PruningConfig, call the library, print what it found.

Only the package's own errors (a wrong argument, file or setting) become a one-line
``tl-mgp: error:`` and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import sys
import time
from pathlib import Path

import torch

from . import models
from .analysis.edges import edge_scores
from .analysis.run_folder import (
    CIRCUIT_FILE,
    EDGES_FILE,
    LEARNED_EDGES_FILE,
    check_out_dir,
    measure_circuit,
    measure_edges,
    peak_memory_mib,
    point_name,
    sweep_summary,
    write_comparison_folder,
    write_edges_folder,
    write_metrics,
    write_run_folder,
    write_sweep_folder,
)
from .core.circuit import Circuit
from .core.edge_graph import check_hooked
from .core.errors import MissingFileError, TrainingDivergedError, UsageError
from .core.hooks import ABLATIONS
from .core.nodes import GRANULARITIES, ModelDims
from .tasks import TASKS
from .tasks.ioi import CORRUPTIONS as IOI_CORRUPTIONS
from .training.config import PRESETS, SMALL_CIRCUIT_TARGETS, Preset, PruningConfig
from .training.edges import EdgeConfig, EdgePruner
from .training.pruner import CircuitPruner
from .training.sparsity import DEFAULT_SPARSITY
from .training.sweeps import sweep


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


def _add_fit_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument(
        "--metric-weight",
        type=float,
        default=None,
        help="weight of the logit-difference gap to the full model, added to the KL",
    )
    parser.add_argument(
        "--metric-share",
        type=float,
        default=None,
        help="share of the steps, at the end, in which the metric term is added (1: every "
        "step; the small preset: its final phase)",
    )
    parser.add_argument(
        "--hard-finish",
        type=float,
        default=None,
        help="share of the steps, at the end, that train the extracted circuit's on/off masks",
    )
    parser.add_argument("--granularities", nargs="+", choices=GRANULARITIES, default=None)
    parser.add_argument("--ablation", choices=ABLATIONS, default="corrupted")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="rerun each block in the backward pass: less memory, one more forward of time",
    )
    parser.add_argument(
        "--bf16", action="store_true", help="bfloat16 autocast for the model's forward passes"
    )


def _add_data_args(
    parser: argparse.ArgumentParser, out_required: bool = True, curve: bool = True
) -> None:
    parser.add_argument(
        "--out", type=Path, required=out_required, default=None, help="output folder"
    )
    if curve:
        parser.add_argument(
            "--curve",
            action="store_true",
            help="also measure faithfulness against circuit size (MIB CPR/CMD) on held-out pairs",
        )
    parser.add_argument("--task", choices=sorted(TASKS), default="ioi", help="task (default: ioi)")
    parser.add_argument(
        "--model",
        default=None,
        help="TransformerLens model name (default: the embedded SmolLM2-135M-Instruct, offline)",
    )
    parser.add_argument(
        "--corruption",
        choices=IOI_CORRUPTIONS,
        default=None,
        help="IOI's corrupted prompts: abc (default), abb (the S2 swap) or random names",
    )
    parser.add_argument(
        "--n",
        type=int,
        default=None,
        help="pairs to generate (default: 2000; 8000 with --preset thorough)",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=None,
        help="held-out share for evaluation (default: 0.1, 200 of the default 2000 pairs)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="e.g. cuda (default: cpu)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tl-mgp", description="Circuit discovery by multi-granular node pruning."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    discover = sub.add_parser("discover", help="train masks on a task and write a run folder")
    _add_data_args(discover)
    _add_fit_args(discover)
    discover.add_argument(
        "--sparsity",
        type=_per_granularity,
        nargs="+",
        default=[],
        metavar="G=LAMBDA",
        help=f"lambda per granularity, in units of the empty circuit's KL; defaults: "
        f"{DEFAULT_SPARSITY}",
    )
    discover.add_argument(
        "--target",
        type=_per_granularity,
        nargs="+",
        default=[],
        metavar="G=FRACTION",
        help="kept fraction per granularity instead of a lambda, e.g. mlp_neuron=0.05",
    )
    discover.add_argument(
        "--preset",
        choices=(*PRESETS, "lambda"),
        default="small",
        help="without --sparsity, --target or --max-kl: 'small' (default) aims at "
        + ", ".join(f"{g}={t:g}" for g, t in SMALL_CIRCUIT_TARGETS.items())
        + f" for {PRESETS['small'].steps} steps on {PRESETS['small'].n_pairs} pairs with bf16 "
        f"where the device has it, the last {100 * PRESETS['small'].hard_finish:g} %% training "
        "the extracted circuit with its logit difference held to the model's; 'thorough' at "
        f"the same with {PRESETS['thorough'].steps} "
        f"steps on {PRESETS['thorough'].n_pairs} pairs; 'lambda' uses the fixed lambdas and "
        "200 steps of PruningConfig()",
    )
    discover.add_argument(
        "--float32",
        action="store_true",
        help="no bf16 autocast, even where the small preset would use it",
    )
    discover.add_argument(
        "--max-kl",
        type=float,
        default=None,
        help="instead of a size, the largest held-out KL accepted: the smallest circuit "
        "within it is returned (a fifth of the training pairs measure it)",
    )
    discover.add_argument(
        "--edges",
        nargs="?",
        const="scored",
        choices=("scored", "learned"),
        default=None,
        help="also the edges between the kept heads and MLPs: 'scored' (the default of a bare "
        "--edges) ranks them by attribution (edges.json); 'learned' trains edge masks among "
        "the kept nodes (edges.safetensors, learned_edges.json); both go in the report. "
        "Edges need a HookedTransformer (TransformerLens 3.x)",
    )
    discover.add_argument(
        "--no-node-effects",
        action="store_true",
        help="skip ranking the nodes (each removed alone) and profiling the top heads and "
        "neurons (nodes.json and the report's first sections)",
    )

    sweep_parser = sub.add_parser(
        "sweep", help="one circuit per target size; faithfulness against size (Pareto)"
    )
    _add_data_args(sweep_parser)
    _add_fit_args(sweep_parser)
    sweep_parser.add_argument(
        "--targets",
        type=_target_point,
        nargs="+",
        required=True,
        metavar="G=F[,G=F...]",
        help="one sweep point each, e.g. head=0.1,attn_neuron=0.1,mlp_neuron=0.05",
    )
    sweep_parser.add_argument(
        "--workers", type=int, default=1, help="points trained at once, in processes (CPU)"
    )
    sweep_parser.add_argument(
        "--dask-scheduler",
        default=None,
        metavar="ADDRESS",
        help="run each point as a task on this running Dask cluster (e.g. tcp://host:8786); "
        "its workers load the model themselves and share --out",
    )

    compare_parser = sub.add_parser(
        "compare", help="what two saved circuits of one model share (no model needed)"
    )
    compare_parser.add_argument("circuits", type=Path, nargs=2, metavar="CIRCUIT")
    compare_parser.add_argument("--out", type=Path, required=True, help="output folder")
    compare_parser.add_argument(
        "--names", nargs=2, default=None, metavar="NAME", help="labels (default: the folders)"
    )

    edges = sub.add_parser(
        "edges",
        help="learn the edges among a saved circuit's kept nodes (needs a HookedTransformer)",
    )
    _add_data_args(edges, out_required=False, curve=False)  # a curve is of nodes
    edges.add_argument(
        "run", type=Path, help="a run folder written by discover, or a circuit file in one"
    )
    edges.add_argument(
        "--sparsity",
        type=float,
        default=None,
        help="price of keeping every edge, in units of the corrupted run's KL (default 1.0)",
    )
    edges.add_argument(
        "--target-edges", type=int, default=None, help="instead of a price, edges to keep"
    )
    edges.add_argument("--steps", type=int, default=None, help="optimiser steps (default 200)")
    edges.add_argument("--batch-size", type=int, default=None)
    edges.add_argument("--lr", type=float, default=None)
    edges.add_argument("--quiet", action="store_true", help="no progress bar")

    evaluate = sub.add_parser("evaluate", help="evaluate a saved circuit on a task")
    _add_data_args(evaluate, out_required=False)
    evaluate.add_argument("circuit", type=Path, help="a circuit file written by discover")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {
        "discover": _discover,
        "sweep": _sweep,
        "evaluate": _evaluate,
        "compare": _compare,
        "edges": _edges,
    }
    command = commands[args.command]
    try:
        return command(args)
    except (UsageError, TrainingDivergedError) as err:
        print(f"tl-mgp: error: {err}", file=sys.stderr)
        return 2


def _config(args, **settings) -> PruningConfig:
    given = dict(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        metric_weight=args.metric_weight,
        metric_share=args.metric_share,
        hard_finish=args.hard_finish,
        granularities=args.granularities,
    )
    chosen = dict(
        ablation=args.ablation,
        seed=args.seed,
        gradient_checkpointing=args.gradient_checkpointing,
        bf16=args.bf16,
    )
    return PruningConfig(
        **{**settings, **chosen, **{k: v for k, v in given.items() if v is not None}}
    )


def _preset(args) -> Preset | None:
    """The preset ``discover`` runs, or None when the command line gives the size."""
    if args.command != "discover":
        return None
    if args.sparsity or args.target or args.max_kl is not None or args.preset == "lambda":
        return None
    return PRESETS[args.preset]


def _discover_config(args, model=None) -> PruningConfig:
    """The sizes asked for, or else the preset's targets and steps (bf16 where the device
    has it) for ``model``'s granularities."""
    preset = _preset(args)
    if preset is None:
        return _config(
            args, sparsity=dict(args.sparsity), target=dict(args.target), max_kl=args.max_kl
        )
    dims = None if model is None else ModelDims.from_cfg(model.cfg)
    chosen = preset.settings(args.device or "cpu", dims)
    config = _config(args, **chosen)
    bf16 = args.bf16 or (chosen["bf16"] and not args.float32)
    return config.replace(bf16=bf16)


def _check_device(device: str | None) -> None:
    if device is None:
        return
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise UsageError(f"--device {device!r} is not a device name (e.g. cpu, cuda)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: this machine has no CUDA device; use --device cpu")


def _load(args):
    """The model and the task's (train, test) pairs, after checking what can be checked
    before the work starts: the device and the output folder."""
    _check_device(args.device)
    task_args = {}
    if args.corruption is not None:
        if args.task != "ioi":
            raise UsageError(
                f"--corruption chooses IOI's corrupted prompts; task {args.task!r} has one "
                "corruption only: drop --corruption or use --task ioi"
            )
        task_args["corruption"] = args.corruption
    if args.out is not None:
        check_out_dir(args.out)
    start = time.perf_counter()
    model = models.load_model(args.model, device=args.device)
    print(f"model loaded in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    preset = _preset(args) or PRESETS["small"]
    n = preset.n_pairs if args.n is None else args.n
    test_fraction = preset.test_fraction if args.test_fraction is None else args.test_fraction
    data = TASKS[args.task](model, n=n, seed=args.seed, **task_args)
    train, test = data.split(test_fraction, seed=args.seed)
    return model, train, test


def _facts(args, train) -> dict:
    facts = {
        "task": args.task,
        "model": args.model or f"{models.DEFAULT_MODEL_NAME} (embedded)",
        "n_train": len(train),
    }
    if "corruption" in train.meta:
        facts["corruption"] = train.meta["corruption"]
    return facts


def _discover(args) -> int:
    wall = time.perf_counter()
    _discover_config(args)  # a bad setting fails before the model loads
    model, train, test = _load(args)
    loaded = time.perf_counter() - wall
    if args.edges:
        check_hooked(model)  # before the fit, not after it
    config = _discover_config(args, model)
    circuit = CircuitPruner(model, config).fit(train, progress=not args.quiet)
    run = measure_circuit(
        model,
        circuit,
        test,
        seed=args.seed,
        curve=args.curve,
        edges=args.edges == "scored",
        anatomy=not args.no_node_effects,
        facts=_facts(args, train),
        progress=not args.quiet,
    )
    learned = None
    if args.edges == "learned":
        config = EdgeConfig(seed=args.seed)
        learned, summary = _fit_edges(model, circuit, train, test, config, args)
        run.metrics["learned_edges"] = summary
    run.metrics["wall_seconds"] = round(time.perf_counter() - wall, 1)
    run.metrics["time_parts"] = _time_parts(run.metrics["wall_seconds"], loaded, circuit)
    run.metrics["peak_rss_mib"] = peak_memory_mib()
    write_run_folder(args.out, run, title=f"{args.task} circuit")
    if learned is not None:
        learned.save(args.out / EDGES_FILE)
    print(circuit.summary())
    if run.metrics["settling"]:
        print(_settling_line(run.metrics["settling"]))
    print(_metrics_table(run))
    if args.curve:
        print(_curve_line(run.metrics["faithfulness_curve"]))
    if args.edges == "scored":
        edges = run.metrics["edges"]
        print(
            f"{len(edges)} edges; strongest: "
            + ", ".join(f"{e['from']}->{e['to']} {e['score']:+.3f}" for e in edges[:5])
        )
    if learned is not None:
        print(_edges_table(run.metrics["learned_edges"]))
    if run.anatomy is not None:
        print(_top_nodes_line(run.anatomy))
    memory = run.metrics["peak_rss_mib"]
    parts = ", ".join(
        f"{name} {seconds:.0f} s" for name, seconds in run.metrics["time_parts"].items()
    )
    print(
        f"wall time {run.metrics['wall_seconds']} s ({parts})"
        + ("" if memory is None else f", peak memory {memory:.1f} MiB")
    )
    nodes = ", nodes.json" if run.anatomy is not None else ""
    nodes += f", {EDGES_FILE}, {LEARNED_EDGES_FILE}" if learned is not None else ""
    print(f"wrote {args.out}/circuit.safetensors, metrics.json{nodes}, report.html")
    return 0


def _time_parts(wall: float, loaded: float, circuit) -> dict[str, float]:
    """Where a ``discover`` run's time went: loading the model and building the pairs, the
    fit's once-per-fit passes (the full model's answers, the empty circuit), its steps, and
    what came after (held-out evaluation, node effects, profiles and, with ``--edges``, the
    edge scores or the edge fit; writing the report is not counted)."""
    fit, prepare = circuit.fit_info["seconds"], circuit.fit_info["prepare_seconds"]
    steps = circuit.config["steps"]
    return {
        "model and pairs": round(loaded, 1),
        "full model's answers and empty circuit": round(prepare, 1),
        f"{steps} steps": round(fit - prepare, 1),
        "evaluation and analysis": round(wall - loaded - fit, 1),
    }


SCORED_PAIRS = 256
"""Training pairs on which attribution ranks edges, for the comparison at equal count."""


def _fit_edges(model, circuit: Circuit, train, test, config: EdgeConfig, args):
    """Learn the edges among ``circuit``'s kept nodes on ``train``; measure them on ``test``
    against attribution-ranked and random edges at equal count."""
    pruner = EdgePruner(model, circuit, config)  # refuses a bridge or a mean-ablated circuit
    edges = pruner.fit(train, progress=not args.quiet)
    scored = train[torch.arange(min(SCORED_PAIRS, len(train)))]
    scores = edge_scores(model, circuit, scored, by_input=True)
    return edges, measure_edges(model, edges, test, scores, seed=args.seed)


def _edges(args) -> int:
    wall = time.perf_counter()
    path = args.run / CIRCUIT_FILE if args.run.is_dir() else args.run
    if not path.is_file():
        raise MissingFileError(
            f"no circuit at {path}; give a run folder written by tl-mgp discover or its "
            "circuit.safetensors"
        )
    out = args.out or path.parent
    given = dict(
        sparsity=args.sparsity,
        target_edges=args.target_edges,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
    )
    config = EdgeConfig(seed=args.seed, **{k: v for k, v in given.items() if v is not None})
    check_out_dir(out)
    model, train, test = _load(args)
    check_hooked(model)
    circuit = Circuit.load(path, model=model)
    edges, summary = _fit_edges(model, circuit, train, test, config, args)
    summary["wall_seconds"] = round(time.perf_counter() - wall, 1)
    write_edges_folder(out, edges, summary)
    print(edges.summary())
    print(_edges_table(summary))
    print(
        "strongest kept edges: "
        + ", ".join(f"{e['from']}->{e['to']}({e['inputs']})" for e in summary["edges"][:6])
    )
    print(f"wrote {out}/{EDGES_FILE}, {LEARNED_EDGES_FILE}, edges.html")
    return 0


def _edges_table(summary: dict) -> str:
    lines = [f"{'held-out, edges chosen by':<28} {'edges':>7} {'KL':>8} {'recovered':>10}"]
    for rule, r in summary["evaluation"].items():
        lines.append(
            f"{rule:<28} {r['kept']['edge']:>7} {_fmt(r['kl']):>8} {_fmt(r['recovered']):>10}"
        )
    return "\n".join(lines)


def _settling_line(rows: list[dict]) -> str:
    """Kept against target, and how much the size still moved at the end of the fit (the
    targeted granularities, or every one when none had a target)."""
    targeted = [row for row in rows if row["target"] is not None]
    parts = []
    for row in targeted or rows:
        aim = "" if row["target"] is None else f" for {100 * row['target']:.1f} %"
        parts.append(
            f"{row['granularity']} {100 * row['kept']:.2f} %{aim} "
            f"(moved {100 * row['change']:.1f} %)"
        )
    return "size at the end (change over the last fifth of the steps): " + ", ".join(parts)


def _top_nodes_line(anatomy) -> str:
    top = anatomy.effects.top(6)
    line = "nodes that matter most (KL increase when removed alone): " + ", ".join(
        f"{e.node} +{e.delta_kl:.3f}" for e in top
    )
    if anatomy.heads is not None:
        head = anatomy.heads.heads[0]
        looks = max(head.attention, key=head.attention.get)
        line += (
            f"\ntop head {head.head} attends mostly to {looks} "
            f"({head.attention[looks]:.2f}), direct effect {head.direct_effect:+.3f}"
        )
    return line


@contextlib.contextmanager
def _dask_executor(address: str | None):
    """A Dask cluster's executor while the sweep runs, or None without an address."""
    if address is None:
        yield None
        return
    try:
        from distributed import Client
    except ImportError:
        raise UsageError(
            "--dask-scheduler needs Dask's distributed scheduler: pip install 'dask[distributed]'"
        ) from None
    try:
        client = Client(address, timeout="10s")
    except OSError as err:
        raise UsageError(f"no Dask scheduler answers at {address} ({err})") from None
    with client:
        yield client.get_executor()


def _sweep(args) -> int:
    wall = time.perf_counter()
    config = _config(args)
    model, train, test = _load(args)
    with _dask_executor(args.dask_scheduler) as executor:
        circuits = sweep(
            model,
            train,
            args.targets,
            config,
            validation=test,
            out_dir=args.out,
            workers=args.workers,
            executor=executor,
            load_model=functools.partial(models.load_model, args.model, device=args.device)
            if executor is not None
            else None,
            progress=not args.quiet,
        )
    summary = sweep_summary(args.targets, circuits, {**_facts(args, train), "n_test": len(test)})
    summary["wall_seconds"] = round(time.perf_counter() - wall, 1)
    write_sweep_folder(args.out, summary, circuits)
    print(f"{'target':<44} {'size':>8} {'KL':>8} {'recovered':>10}")
    for point in summary["points"]:
        print(
            f"{point_name(point['target']):<44} {point['size']:>8.4f} {_fmt(point['kl']):>8} "
            f"{_fmt(point['recovered']):>10}"
        )
    print(f"faithfulness vs size: CPR {summary['cpr']:.3f}, CMD {summary['cmd']:.3f}")
    print(f"wrote {args.out}/sweep.json, sweep.html and one folder per point")
    return 0


def _evaluate(args) -> int:
    if not args.circuit.is_file():
        raise MissingFileError(f"no circuit file at {args.circuit}")
    model, train, test = _load(args)
    circuit = Circuit.load(args.circuit, model=model)
    run = measure_circuit(
        model, circuit, test, seed=args.seed, curve=args.curve, facts=_facts(args, train)
    )
    print(circuit.summary())
    print(_metrics_table(run))
    if args.curve:
        print(_curve_line(run.metrics["faithfulness_curve"]))
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


def _metrics_table(run) -> str:
    rows = [
        ("KL(full || circuit)", "kl"),
        ("metric recovered", "recovered"),
        ("accuracy", "accuracy_circuit"),
    ]
    lines = [f"{'held-out':<22} {'circuit':>10} {'random':>10}"]
    for label, key in rows:
        a, b = getattr(run.result, key), getattr(run.baseline, key)
        lines.append(f"{label:<22} {_fmt(a):>10} {_fmt(b):>10}")
    lines.append(f"{'full model accuracy':<22} {_fmt(run.result.accuracy_full):>10}")
    return "\n".join(lines)


def _curve_line(curve: dict) -> str:
    return f"faithfulness vs size: CPR {curve['cpr']:.3f}, CMD {curve['cmd']:.3f}"


def _fmt(x: float) -> str:
    return "n/a" if isinstance(x, float) and math.isnan(x) else f"{x:.4f}"


if __name__ == "__main__":
    sys.exit(main())
