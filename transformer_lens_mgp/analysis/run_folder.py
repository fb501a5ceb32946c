"""Run folders: what a discovery, an evaluation or a sweep leaves on disk.

A discovery folder holds ``circuit.safetensors``, ``metrics.json``
(:meth:`Discovery.to_dict <.discovery.Discovery.to_dict>`), ``report.html``, ``graph.json``
(the circuit's nodes and, when scored, its edges: :mod:`.graph`), ``nodes.json`` when the
nodes were ranked and profiled, and
``edges.safetensors`` with ``learned_edges.json`` when edges were learned (``tl-mgp edges``
adds those two and ``edges.html``). A sweep folder holds one subfolder per point,
``sweep.json`` and ``sweep.html``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..core.checks import check_writable_folder
from ..core.circuit import Circuit
from ..core.edge_circuit import EdgeCircuit
from .compare import CircuitComparison, compare
from .curves import SweepPoint, pareto_areas
from .discovery import Discovery
from .graph import circuit_graph, graph_data

CIRCUIT_FILE = "circuit.safetensors"
METRICS_FILE = "metrics.json"
NODES_FILE = "nodes.json"
GRAPH_FILE = "graph.json"
EDGES_FILE = "edges.safetensors"
LEARNED_EDGES_FILE = "learned_edges.json"


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


def write_edges_folder(out_dir: str | Path, edges: EdgeCircuit, summary: Mapping) -> list[Path]:
    """``edges.safetensors``, ``learned_edges.json`` and the page ``edges.html``."""
    from .report import write_edge_report

    out = prepare_out_dir(out_dir)
    return [
        edges.save(out / EDGES_FILE),
        _write_json(out / LEARNED_EDGES_FILE, dict(summary)),
        write_edge_report(summary, out / "edges.html"),
    ]


RUN_FILES = (
    CIRCUIT_FILE,
    METRICS_FILE,
    NODES_FILE,
    GRAPH_FILE,
    "edges.json",
    EDGES_FILE,
    LEARNED_EDGES_FILE,
    "edges.html",
    "report.html",
)
"""Every file a discovery can write: a run folder holds one run, so a new run removes those of
them it does not write (other files are left alone)."""


def write_run_folder(out_dir: str | Path, run: Discovery, title: str = "Circuit") -> list[Path]:
    """Write the circuit, ``metrics.json``, what else was measured, and the report; remove
    the files an earlier run left that this one does not write."""
    from .report import write_report

    out = prepare_out_dir(out_dir)
    metrics = run.to_dict()
    written = [run.circuit.save(out / CIRCUIT_FILE), _write_json(out / METRICS_FILE, metrics)]
    if run.anatomy is not None:
        written.append(_write_json(out / NODES_FILE, run.anatomy.to_dict()))
    written.append(_write_json(out / GRAPH_FILE, graph_data(circuit_graph(run))))
    if run.learned_edges is not None:
        written.append(run.learned_edges.save(out / EDGES_FILE))
        written.append(_write_json(out / LEARNED_EDGES_FILE, metrics["learned_edges"]))
    written.append(write_report(run, out / "report.html", title=title))
    for name in set(RUN_FILES) - {p.name for p in written}:
        (out / name).unlink(missing_ok=True)
    return written


def write_metrics(out_dir: str | Path, run: Discovery) -> Path:
    """Only ``metrics.json``: the evaluation of a circuit that already has its file."""
    return _write_json(prepare_out_dir(out_dir) / METRICS_FILE, run.to_dict())


def sweep_summary(points: Sequence[SweepPoint], facts: Mapping) -> dict:
    """``sweep.json``: per point its target, folder, size and held-out numbers; CPR and CMD."""
    areas = pareto_areas(points)
    rows = [
        {
            "target": dict(point.target),
            "folder": point_name(point.target),
            "size": point.circuit.size(),
            "kept": {g: point.circuit.n_kept(g) for g in point.circuit.granularities},
            "fraction_kept": {
                g: point.circuit.fraction_kept(g) for g in point.circuit.granularities
            },
            **point.numbers(),
        }
        for point in points
    ]
    return {**dict(facts), "points": rows, "cpr": areas.cpr, "cmd": areas.cmd}


def write_sweep_folder(
    out_dir: str | Path, summary: dict, points: Sequence[SweepPoint]
) -> list[Path]:
    """``sweep.json`` and the report ``sweep.html`` (points, faithfulness against size, nodes
    entering as the circuit grows) beside the points' folders."""
    from .report import write_sweep_report

    out = prepare_out_dir(out_dir)
    report = write_sweep_report(points, summary, out / "sweep.html")
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
