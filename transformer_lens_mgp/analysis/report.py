"""The HTML report: one self-contained file with a circuit's summary, numbers and figures."""

from __future__ import annotations

import html
import json
from pathlib import Path

from ..core.circuit import Circuit
from .plotting import (
    plot_edge_graph,
    plot_faithfulness_curve,
    plot_head_map,
    plot_kept_per_layer,
    plot_neuron_map,
    plot_training_curves,
)


def write_report(
    circuit: Circuit, path: str | Path, metrics: dict | None = None, title: str = "Circuit"
) -> Path:
    """One self-contained HTML file: summary, metrics (default: ``circuit.metrics``) and every
    figure, plotly.js inlined once."""
    metrics = circuit.metrics if metrics is None else metrics
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figures = [plot_head_map(circuit), plot_kept_per_layer(circuit)]
    if circuit.dims.has_mlp:
        figures.insert(0, plot_neuron_map(circuit))
    if circuit.history:
        figures.append(plot_training_curves(circuit))
    if metrics and metrics.get("faithfulness_curve"):
        figures.append(plot_faithfulness_curve(metrics["faithfulness_curve"]))
    if metrics and metrics.get("edges"):
        figures.append(plot_edge_graph(metrics["edges"]))
    parts = [
        fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False)
        for i, fig in enumerate(figures)
    ]
    body = (
        f"<h1>{html.escape(title)}</h1><pre>{html.escape(circuit.summary())}</pre>"
        + (
            f"<h2>metrics</h2><pre>{html.escape(json.dumps(metrics, indent=2))}</pre>"
            if metrics
            else ""
        )
        + "".join(parts)
    )
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"</head><body style='font-family:sans-serif;margin:2em'>{body}</body></html>",
        encoding="utf-8",
    )
    return path
