"""Run folders: what a discovery, an evaluation or a sweep leaves on disk, and its schema.

A discovery folder holds ``circuit.safetensors``, ``metrics.json`` (the held-out numbers of
the circuit and of a random circuit of the same size, and the run's facts), ``report.html``,
``nodes.json`` when the nodes were ranked and profiled, ``edges.json`` when edges were
scored, and ``edges.safetensors`` with ``learned_edges.json`` when edges were learned
(``tl-mgp edges`` adds those two and ``edges.html``). A sweep folder holds one subfolder per
point, ``sweep.json`` and ``sweep.html``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.checks import check_writable_folder
from ..core.circuit import Circuit
from ..core.data import PairedDataset
from ..core.edge_circuit import EdgeCircuit
from ..core.edge_graph import reader_node
from .anatomy import CircuitAnatomy, dissect
from .compare import CircuitComparison, compare
from .convergence import settling
from .curves import faithfulness_curve, pareto_areas
from .edge_evaluation import attribution_edges, evaluate_edges, random_edges
from .edges import edge_graph
from .evaluation import Evaluation, evaluate_many
from .subcircuits import random_circuit

CIRCUIT_FILE = "circuit.safetensors"
METRICS_FILE = "metrics.json"
NODES_FILE = "nodes.json"


def point_name(target: Mapping[str, float]) -> str:
    """A sweep point's folder name, stable across runs: ``head=0.1,mlp_neuron=0.05``."""
    text = ",".join(f"{g}={target[g]:g}" for g in sorted(target)) or "default"
    return re.sub(r"[^A-Za-z0-9_.,=-]", "_", text)


def check_out_dir(path: str | Path) -> Path:
    """Say now, before any work and without creating anything, why ``path`` could not become
    a folder of outputs."""
    return check_writable_folder(path, "the output folder (--out)")


def prepare_out_dir(path: str | Path) -> Path:
    """The folder ``path``, created if needed (checked first by :func:`check_out_dir`)."""
    path = check_out_dir(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class CircuitRun:
    """A circuit measured on held-out pairs, as written to a run folder.

    Args:
        circuit: the circuit (its ``metrics`` hold the headline numbers).
        result: the circuit's evaluation.
        baseline: a random circuit of the same size, evaluated on the same pairs.
        metrics: the ``metrics.json`` content.
        anatomy: node effects and the top heads' and neurons' profiles, when measured.
    """

    circuit: Circuit
    result: Evaluation
    baseline: Evaluation
    metrics: dict
    anatomy: CircuitAnatomy | None = None


def measure_circuit(
    model,
    circuit: Circuit,
    test: PairedDataset,
    *,
    seed: int = 0,
    curve: bool = False,
    edges: bool = False,
    anatomy: bool = False,
    facts: Mapping | None = None,
    progress: bool = False,
) -> CircuitRun:
    """Evaluate ``circuit`` and a random circuit of its size on ``test`` (and, if asked, its
    faithfulness curve, edge scores and anatomy: node effects, top heads and neurons); the
    headline numbers go to ``circuit.metrics``. ``progress`` shows bars for the evaluation
    and the node effects."""
    rivals = [circuit, random_circuit(circuit, seed=seed)]
    result, baseline = evaluate_many(model, rivals, test, progress=progress)
    metrics = {
        **dict(facts or {}),
        "n_test": len(test),
        "circuit": result.to_dict(),
        "random_circuit_same_size": baseline.to_dict(),
        "fit_seconds": circuit.fit_info.get("seconds"),
        "settling": [row.to_dict() for row in settling(circuit)],
    }
    circuit.metrics = {
        "kl": result.kl,
        "recovered": result.recovered,
        "accuracy": result.accuracy_circuit,
    }
    if curve:
        points = faithfulness_curve(model, circuit, test).to_dict()
        metrics["faithfulness_curve"] = circuit.metrics["faithfulness_curve"] = points
    if edges:
        graph = edge_graph(model, circuit, test)
        scored = [{"from": u, "to": v, "score": d["weight"]} for u, v, d in graph.edges(data=True)]
        scored.sort(key=lambda e: -abs(e["score"]))
        metrics["edges"] = circuit.metrics["edges"] = scored
    parts = dissect(model, circuit, test, progress=progress) if anatomy else None
    return CircuitRun(circuit, result, baseline, metrics, parts)


EDGES_FILE = "edges.safetensors"
LEARNED_EDGES_FILE = "learned_edges.json"


def measure_edges(
    model,
    edges: EdgeCircuit,
    test: PairedDataset,
    scores: Mapping[tuple[str, str], float] | None = None,
    seed: int = 0,
) -> dict:
    """``learned_edges``: the kept edges (with their attribution ``score`` where ``scores``
    are given, else their ``log_alpha``) and the held-out faithfulness of the learned edges,
    of as many edges ranked by attribution (with ``scores``) and drawn at random, and of the
    node circuit (every edge)."""
    k = max(1, edges.n_kept)
    rivals = {"learned": edges, "random": random_edges(model, edges.nodes, k, seed=seed)}
    if scores is not None:
        rivals["attribution"] = attribution_edges(model, edges.nodes, test, k, scores=scores)
    every = EdgeCircuit.from_kept(edges.nodes, edges.graph, [True] * edges.n_total)
    rivals["node circuit (every edge)"] = every
    results = evaluate_edges(model, list(rivals.values()), test)
    merged: dict[tuple[str, str], dict] = {}
    for u, v, alpha in edges.kept_rows():
        reader, inputs = reader_node(v)
        row = merged.setdefault((u, reader), {"from": u, "to": reader, "inputs": "", "score": 0.0})
        row["inputs"] += inputs
        row["score"] += scores.get((u, v), 0.0) if scores is not None else alpha
    rows = sorted(merged.values(), key=lambda r: -abs(r["score"]))
    return {
        "n_kept": edges.n_kept,
        "n_total": edges.n_total,
        "score": "attribution" if scores is not None else "log_alpha",
        "edges": rows,
        "evaluation": {rule: r.to_dict() for rule, r in zip(rivals, results, strict=True)},
        "n_test": len(test),
        "fit_seconds": edges.fit_info.get("seconds"),
    }


def write_edges_folder(out_dir: str | Path, edges: EdgeCircuit, summary: dict) -> list[Path]:
    """``edges.safetensors``, ``learned_edges.json`` and the page ``edges.html``."""
    from .report import write_edge_report

    out = prepare_out_dir(out_dir)
    return [
        edges.save(out / EDGES_FILE),
        _write_json(out / LEARNED_EDGES_FILE, summary),
        write_edge_report(summary, out / "edges.html"),
    ]


def write_run_folder(out_dir: str | Path, run: CircuitRun, title: str = "Circuit") -> list[Path]:
    """Write the circuit, ``metrics.json``, ``nodes.json`` and ``edges.json`` (if measured) and
    the report."""
    from .report import write_report

    out = prepare_out_dir(out_dir)
    written = [run.circuit.save(out / CIRCUIT_FILE), _write_json(out / METRICS_FILE, run.metrics)]
    if run.anatomy is not None:
        written.append(_write_json(out / NODES_FILE, run.anatomy.to_dict()))
    if "edges" in run.metrics:
        written.append(_write_json(out / "edges.json", run.metrics["edges"]))
    if "learned_edges" in run.metrics:
        written.append(_write_json(out / LEARNED_EDGES_FILE, run.metrics["learned_edges"]))
    report = write_report(
        run.circuit, out / "report.html", run.metrics, title=title, anatomy=run.anatomy
    )
    written.append(report)
    return written


def write_metrics(out_dir: str | Path, run: CircuitRun) -> Path:
    """Only ``metrics.json``: the evaluation of a circuit that already has its file."""
    return _write_json(prepare_out_dir(out_dir) / METRICS_FILE, run.metrics)


def sweep_summary(
    targets: Sequence[Mapping[str, float]], circuits: Sequence[Circuit], facts: Mapping
) -> dict:
    """``sweep.json``: per point its target, folder, size and held-out numbers; CPR and CMD."""
    areas = pareto_areas(circuits)
    points = [
        {
            "target": dict(target),
            "folder": point_name(target),
            "size": circuit.size(),
            "kept": {g: circuit.n_kept(g) for g in circuit.granularities},
            "fraction_kept": {g: circuit.fraction_kept(g) for g in circuit.granularities},
            **circuit.metrics,
        }
        for target, circuit in zip(targets, circuits, strict=True)
    ]
    return {**dict(facts), "points": points, "cpr": areas.cpr, "cmd": areas.cmd}


def write_sweep_folder(
    out_dir: str | Path, summary: dict, circuits: Sequence[Circuit]
) -> list[Path]:
    """``sweep.json`` and the report ``sweep.html`` (points, faithfulness against size, nodes
    entering as the circuit grows) beside the points' folders."""
    from .report import write_sweep_report

    out = prepare_out_dir(out_dir)
    report = write_sweep_report(circuits, summary, out / "sweep.html")
    return [_write_json(out / "sweep.json", summary), report]


def write_comparison_folder(
    out_dir: str | Path, a: Circuit, b: Circuit, names: tuple[str, str]
) -> CircuitComparison:
    """``comparison.json`` (overlap per granularity, shared and unique heads) and
    ``comparison.html`` (the two head maps in one figure)."""
    from .plotting import plot_head_comparison

    comparison = compare(a, b, names)
    out = prepare_out_dir(out_dir)
    _write_json(out / "comparison.json", comparison.to_dict())
    plot_head_comparison(a, b, names).write_html(out / "comparison.html")
    return comparison


def _write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, indent=2))
    return path


def peak_memory_mib() -> float | None:
    """This process's peak resident memory, where the platform reports it (not on Windows)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)
