"""``tl-mgp``: discover a task's circuit, sweep circuit sizes, or evaluate a saved circuit."""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

from .circuit import Circuit
from .granularity import GRANULARITIES
from .pruner import CircuitPruner
from .sparsity import DEFAULT_SPARSITY


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
    parser.add_argument("--granularities", nargs="+", choices=GRANULARITIES, default=None)
    parser.add_argument("--ablation", choices=["corrupted", "mean", "zero"], default="corrupted")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="rerun each block in the backward pass: less memory, one more forward of time",
    )
    parser.add_argument(
        "--bf16", action="store_true", help="bfloat16 autocast for the model's forward passes"
    )


def _fit_kwargs(args) -> dict:
    given = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr)
    return {k: v for k, v in given.items() if v is not None}


def _memory_kwargs(args) -> dict:
    return {"gradient_checkpointing": args.gradient_checkpointing, "bf16": args.bf16}


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    from .tasks import TASKS

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
    parser.add_argument("--n", type=int, default=1000, help="pairs to generate (default: 1000)")
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="held-out share for evaluation (default: 0.2)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="e.g. cuda (default: cpu)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tl-mgp", description="Circuit discovery by multi-granular node pruning."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    discover = sub.add_parser("discover", help="train masks on a task and write a report")
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
        "--max-kl",
        type=float,
        default=None,
        help="instead of a size, the largest held-out KL accepted: the smallest circuit "
        "within it is returned (a fifth of the training pairs measure it)",
    )
    discover.add_argument(
        "--edges",
        action="store_true",
        help="also score the edges between the kept heads and MLPs (edges.json, in the report)",
    )

    sweep = sub.add_parser(
        "sweep", help="one circuit per target size; faithfulness against size (Pareto)"
    )
    _add_data_args(sweep)
    _add_fit_args(sweep)
    sweep.add_argument(
        "--targets",
        type=_target_point,
        nargs="+",
        required=True,
        metavar="G=F[,G=F...]",
        help="one sweep point each, e.g. head=0.1,attn_neuron=0.1,mlp_neuron=0.05",
    )
    sweep.add_argument(
        "--workers", type=int, default=1, help="points trained at once, in processes (CPU)"
    )

    evaluate = sub.add_parser("evaluate", help="evaluate a saved circuit on a task")
    _add_data_args(evaluate)
    evaluate.add_argument("circuit", type=Path, help="a circuit file written by discover")
    evaluate.add_argument("--out", type=Path, default=None, help="write metrics JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        command = {"discover": _discover, "sweep": _sweep, "evaluate": _evaluate}
        return command[args.command](args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"tl-mgp: error: {err}", file=sys.stderr)
        return 2


def _load(args):
    from .models import load_model
    from .tasks import TASKS

    start = time.perf_counter()
    model = load_model(args.model, device=args.device)
    print(f"model loaded in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    data = TASKS[args.task](model, n=args.n, seed=args.seed)
    train, test = data.split(args.test_fraction, seed=args.seed)
    return model, train, test


def _discover(args) -> int:
    from .evaluation import evaluate_many, faithfulness_curve, random_circuit

    wall = time.perf_counter()
    model, train, test = _load(args)
    fit_kwargs = _fit_kwargs(args)
    pruner = CircuitPruner(
        model,
        granularities=args.granularities,
        sparsity=dict(args.sparsity),
        target=dict(args.target),
        ablation=args.ablation,
        seed=args.seed,
        max_kl=args.max_kl,
        **_memory_kwargs(args),
    )
    circuit = pruner.fit(train, progress=not args.quiet, **fit_kwargs)
    result, baseline = evaluate_many(
        model, [circuit, random_circuit(circuit, seed=args.seed)], test
    )
    metrics = {
        "task": args.task,
        "model": args.model or "SmolLM2-135M-Instruct (embedded)",
        "n_train": len(train),
        "n_test": len(test),
        "circuit": result.to_dict(),
        "random_circuit_same_size": baseline.to_dict(),
        "fit_seconds": circuit.config.get("seconds"),
    }
    circuit.metrics = {
        "kl": result.kl,
        "recovered": result.recovered,
        "accuracy": result.accuracy_circuit,
    }
    if args.curve:
        curve = faithfulness_curve(model, circuit, test).to_dict()
        metrics["faithfulness_curve"] = circuit.metrics["faithfulness_curve"] = curve
        print(_curve_line(curve))
    if args.edges:
        from .edges import edge_graph

        graph = edge_graph(model, circuit, test)
        edges = [{"from": u, "to": v, "score": d["weight"]} for u, v, d in graph.edges(data=True)]
        edges.sort(key=lambda e: -abs(e["score"]))
        circuit.metrics["edges"] = edges
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "edges.json").write_text(json.dumps(edges, indent=2))
        print(
            f"{len(edges)} edges; strongest: "
            + ", ".join(f"{e['from']}->{e['to']} {e['score']:+.3f}" for e in edges[:5])
        )
    metrics["wall_seconds"] = round(time.perf_counter() - wall, 1)
    metrics["peak_rss_mib"] = round(_peak_rss_mib(), 1)
    args.out.mkdir(parents=True, exist_ok=True)
    circuit.save(args.out / "circuit.safetensors")
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    circuit.report(args.out / "report.html", title=f"{args.task} circuit")
    print(circuit.summary())
    print(_metrics_table(result, baseline))
    print(f"wall time {metrics['wall_seconds']} s, peak memory {metrics['peak_rss_mib']} MiB")
    print(f"wrote {args.out}/circuit.safetensors, metrics.json, report.html")
    return 0


def _sweep(args) -> int:
    from .plotting import plot_pareto
    from .sweeps import pareto_areas, point_name, sweep

    wall = time.perf_counter()
    model, train, test = _load(args)
    circuits = sweep(
        model,
        train,
        args.targets,
        validation=test,
        out_dir=args.out,
        workers=args.workers,
        fit_kwargs=_fit_kwargs(args),
        progress=not args.quiet,
        granularities=args.granularities,
        ablation=args.ablation,
        seed=args.seed,
        **_memory_kwargs(args),
    )
    areas = pareto_areas(circuits)
    points = [
        {
            "target": target,
            "folder": point_name(target),
            "size": circuit.size(),
            "kept": {g: circuit.n_kept(g) for g in circuit.granularities},
            "fraction_kept": {g: circuit.fraction_kept(g) for g in circuit.granularities},
            **circuit.metrics,
        }
        for target, circuit in zip(args.targets, circuits, strict=True)
    ]
    summary = {
        "task": args.task,
        "n_train": len(train),
        "n_test": len(test),
        "points": points,
        "cpr": areas.cpr,
        "cmd": areas.cmd,
        "wall_seconds": round(time.perf_counter() - wall, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps(summary, indent=2))
    plot_pareto(circuits).write_html(args.out / "pareto.html")
    print(f"{'target':<44} {'size':>8} {'KL':>8} {'recovered':>10}")
    for point in points:
        print(
            f"{point['folder']:<44} {point['size']:>8.4f} {_fmt(point['kl']):>8} "
            f"{_fmt(point['recovered']):>10}"
        )
    print(f"faithfulness vs size: CPR {areas.cpr:.3f}, CMD {areas.cmd:.3f}")
    print(f"wrote {args.out}/sweep.json, pareto.html and one folder per point")
    return 0


def _evaluate(args) -> int:
    from .evaluation import evaluate_many, faithfulness_curve, random_circuit

    model, _, test = _load(args)
    circuit = Circuit.load(args.circuit, model=model)
    result, baseline = evaluate_many(
        model, [circuit, random_circuit(circuit, seed=args.seed)], test
    )
    print(circuit.summary())
    print(_metrics_table(result, baseline))
    metrics = {"circuit": result.to_dict(), "random_circuit_same_size": baseline.to_dict()}
    if args.curve:
        metrics["faithfulness_curve"] = faithfulness_curve(model, circuit, test).to_dict()
        print(_curve_line(metrics["faithfulness_curve"]))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(metrics, indent=2))
    return 0


def _metrics_table(result, baseline) -> str:
    rows = [
        ("KL(full || circuit)", "kl"),
        ("metric recovered", "recovered"),
        ("accuracy", "accuracy_circuit"),
    ]
    lines = [f"{'held-out':<22} {'circuit':>10} {'random':>10}"]
    for label, key in rows:
        a, b = getattr(result, key), getattr(baseline, key)
        lines.append(f"{label:<22} {_fmt(a):>10} {_fmt(b):>10}")
    lines.append(f"{'full model accuracy':<22} {_fmt(result.accuracy_full):>10}")
    return "\n".join(lines)


def _curve_line(curve: dict) -> str:
    return f"faithfulness vs size: CPR {curve['cpr']:.3f}, CMD {curve['cmd']:.3f}"


def _fmt(x: float) -> str:
    return "n/a" if isinstance(x, float) and math.isnan(x) else f"{x:.4f}"


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    sys.exit(main())
