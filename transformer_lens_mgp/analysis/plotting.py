"""Plotly figures of a Circuit, its training, its faithfulness curve, a sweep and its edges.

Figures are returned, never shown, so they work the same in notebooks, scripts and files.
Heatmaps are single traces (one cell per node), which keeps them responsive at tens of
thousands of neurons.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..core.circuit import Circuit
from .curves import FaithfulnessCurve, SweepPoint, pareto_areas

KEPT_SCALE = [[0.0, "#f2f2f2"], [1.0, "#1f77b4"]]


def plot_neuron_map(circuit: Circuit, granularity: str = "mlp_neuron") -> go.Figure:
    """Layers x MLP neurons (or x attention-neuron index): kept nodes coloured, with each
    node's deterministic mask and ``log_alpha`` on hover."""
    circuit.require_no_slots("plot_neuron_map")
    kept = circuit.kept(granularity).float()
    mask = circuit.mask(granularity)
    log_alpha = circuit.log_alpha.get(granularity, torch.full(kept.shape, float("nan")))
    if granularity == "attn_neuron":
        kept, mask, log_alpha = (t.flatten(1) for t in (kept, mask, log_alpha))
        x_title = "head x d_head"
    else:
        x_title = "neuron"
    custom = torch.stack([mask, log_alpha], dim=-1).numpy().round(3)
    fig = go.Figure(
        go.Heatmap(
            z=kept.numpy(),
            customdata=custom,
            colorscale=KEPT_SCALE,
            zmin=0,
            zmax=1,
            showscale=False,
            hovertemplate=(
                "layer %{y}, " + x_title + " %{x}<br>mask %{customdata[0]}"
                "<br>log_alpha %{customdata[1]}<extra></extra>"
            ),
        )
    )
    fig.update_layout(
        title=f"{granularity}: {circuit.n_kept(granularity)} of "
        f"{circuit.n_total(granularity)} kept",
        xaxis_title=x_title,
        yaxis_title="layer",
        height=300 + 12 * circuit.dims.n_layers,
    )
    return fig


def plot_head_map(circuit: Circuit) -> go.Figure:
    """Layers x heads, coloured by how many of each head's dimensions are kept; the count is
    printed in the kept heads' cells only."""
    circuit.require_no_slots("plot_head_map")
    counts = circuit.kept("attn_neuron").sum(-1)
    fig = go.Figure(
        go.Heatmap(
            z=counts.numpy(),
            text=[[str(c) if c else "" for c in row] for row in counts.tolist()],
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=circuit.dims.d_head,
            colorbar_title="kept dims",
            hovertemplate="L%{y}.H%{x}: %{z} dims kept<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"heads: {circuit.n_kept('head')} of {circuit.n_total('head')} kept",
        xaxis_title="head",
        yaxis_title="layer",
        height=300 + 12 * circuit.dims.n_layers,
    )
    return fig


def plot_kept_per_layer(circuit: Circuit) -> go.Figure:
    """Fraction of nodes kept in each layer, one bar group per pruned granularity (the others
    are kept whole)."""
    circuit.require_no_slots("plot_kept_per_layer")
    fig = go.Figure()
    layers = list(range(circuit.dims.n_layers))
    for g in circuit.granularities or circuit.dims.available():
        kept = circuit.kept(g).float()
        per_layer = kept.flatten(1).mean(-1) if kept.ndim > 1 else kept
        fig.add_bar(x=layers, y=per_layer.numpy(), name=g)
    fig.update_layout(
        title="kept fraction per layer", xaxis_title="layer", yaxis_title="fraction kept"
    )
    return fig


def plot_role_positions(circuit: Circuit) -> go.Figure:
    """A per-role circuit's kept heads and MLP neurons per token role (rows) and layer
    (columns): where in the prompt each layer's part of the mechanism reads and writes."""
    circuit.require_slots("plot_role_positions")
    parts = [g for g in ("head", "mlp_neuron") if g in circuit.dims.available()]
    titles = {"head": "kept heads", "mlp_neuron": "kept MLP neurons"}
    fig = make_subplots(rows=1, cols=len(parts), subplot_titles=[titles[g] for g in parts])
    for col, g in enumerate(parts, start=1):
        kept = circuit.kept(g)
        counts = kept.flatten(2).sum(-1)
        fig.add_heatmap(
            z=counts.numpy(),
            y=list(circuit.slots),
            colorscale="Blues",
            showscale=False,
            hovertemplate=f"%{{y}}, layer %{{x}}: %{{z}} {titles[g][5:]}<extra></extra>",
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text="layer", row=1, col=col)
    fig.update_layout(title="kept per token role and layer", height=380)
    return fig


def plot_training_curves(circuit: Circuit) -> go.Figure:
    """Loss and KL (left) and, per granularity, the kept fraction of the circuit extracted
    after each step against its target (right; the expected fraction for fits recorded
    before sizes were)."""
    history = circuit.history
    sized = any(key.startswith("size/") for key in history)
    size_key = "size/" if sized else "l0/"
    title = "kept fraction" if sized else "expected kept fraction"
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss and KL", title))
    for key in ("loss", "kl"):
        if history.get(key):
            fig.add_scatter(y=history[key], name=key, row=1, col=1)
    for key, values in history.items():
        if key.startswith(size_key):
            fig.add_scatter(y=values, name=key.removeprefix(size_key), row=1, col=2)
        if key.startswith("target/"):
            fig.add_scatter(y=values, name=key, line_dash="dash", row=1, col=2)
    fig.update_xaxes(title_text="step")
    if all(v > 0 for key in ("loss", "kl") for v in history.get(key, [])):
        fig.update_yaxes(type="log", row=1, col=1)
    return fig


def plot_faithfulness_curve(curve: FaithfulnessCurve | dict) -> go.Figure:
    """Faithfulness (left axis) and KL against the kept fraction, CPR and CMD in the title."""
    curve = curve if isinstance(curve, dict) else curve.to_dict()
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_scatter(
        x=curve["fractions"], y=curve["faithfulness"], name="faithfulness", mode="lines+markers"
    )
    fig.add_scatter(
        x=curve["fractions"],
        y=curve["kl"],
        name="KL",
        mode="lines+markers",
        line_dash="dot",
        secondary_y=True,
    )
    fig.update_xaxes(type="log", title_text="kept fraction per granularity")
    fig.update_yaxes(title_text="faithfulness", secondary_y=False)
    fig.update_yaxes(title_text="KL(full || circuit)", secondary_y=True)
    fig.update_layout(title=f"faithfulness vs size: CPR {curve['cpr']:.3f}, CMD {curve['cmd']:.3f}")
    return fig


def plot_pareto(points: list[SweepPoint]) -> go.Figure:
    """Faithfulness of each sweep circuit against its kept fraction, one line per granularity
    and one for the finest nodes (the size axis of CPR and CMD, given in the title)."""
    areas = pareto_areas(points)
    points = sorted(points, key=lambda p: p.circuit.size())
    ordered = [p.circuit for p in points]
    faithfulness = [p.evaluation.recovered for p in points]
    hover = [f"KL {p.evaluation.kl:.3f}<br>target {dict(p.target)}" for p in points]
    fig = go.Figure()
    fig.add_scatter(
        x=areas.sizes[1:],  # the empty circuit has no place on a log axis
        y=areas.faithfulness[1:],
        name="finest nodes (CPR/CMD)",
        mode="lines+markers",
        line_width=3,
    )
    for g in ordered[0].granularities:
        fig.add_scatter(
            x=[c.fraction_kept(g) for c in ordered],
            y=faithfulness,
            name=g,
            mode="lines+markers",
            line_dash="dot",
            text=hover,
            hovertemplate="%{x:.4f} kept, faithfulness %{y:.3f}<br>%{text}",
        )
    fig.update_xaxes(type="log", title_text="kept fraction")
    fig.update_yaxes(title_text="faithfulness (metric recovered)")
    fig.update_layout(
        title=f"faithfulness vs size over {len(points)} circuits: "
        f"CPR {areas.cpr:.3f}, CMD {areas.cmd:.3f}"
    )
    return fig


def plot_edge_graph(edges, max_edges: int = 150, title: str | None = None) -> go.Figure:
    """The circuit's edges (a graph from :func:`~transformer_lens_mgp.analysis.edges.edge_graph`, or
    its ``[{"from", "to", "score"}]`` list, where an entry may add a ``label`` for its hover
    text): nodes by layer from input to logits, the ``max_edges`` strongest edges drawn with
    width by ``|score|``, blue positive, red negative, and a slider for how many are shown.
    A graph draws every node it has, with what :func:`~.graph.circuit_graph` measured of it
    on hover; a head's ``role`` colours it (with a legend) and its ``position`` (the token role
    it acts from) joins its label."""
    facts: dict[str, dict] = {}
    if not isinstance(edges, list):
        facts = dict(edges.nodes(data=True))
        edges = [{"from": u, "to": v, "score": d["weight"]} for u, v, d in edges.edges(data=True)]
    edges = sorted(edges, key=lambda e: -abs(e["score"]))[:max_edges]
    ends = {e[k] for e in edges for k in ("from", "to")}
    names = sorted(ends | set(facts), key=_node_order)
    position = _edge_graph_layout(names)
    largest = max((abs(e["score"]) for e in edges), default=1.0) or 1.0
    fig = go.Figure()
    for e in edges:
        xs, ys = _arc(position[e["from"]], position[e["to"]])
        fig.add_scatter(
            x=xs,
            y=ys,
            mode="lines",
            line_width=0.5 + 6 * abs(e["score"]) / largest,
            line_color="#1f77b4" if e["score"] > 0 else "#d62728",
            opacity=0.7,
            hoverinfo="text",
            text=f"{e['from']} -> {e['to']}{e.get('label', '')}: {e['score']:+.4f}",
            showlegend=False,
        )
    shown = min(len(edges), 40)
    strong = {e[k] for e in edges[:shown] for k in ("from", "to")}
    roles = {n: d["role"] for n, d in facts.items() if "role" in d}
    positions = {n: d["position"] for n, d in facts.items() if d.get("position")}
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(roles.get(n, ""), []).append(n)
    for role, members in sorted(groups.items(), key=lambda item: (item[0] == "", item[0])):
        fig.add_scatter(
            x=[position[n][0] for n in members],
            y=[position[n][1] for n in members],
            mode="markers+text",
            # a label where a strong edge or a role makes the node worth reading; hover for all
            text=[
                n + (f"@{positions[n]}" if n in positions else "")
                if n in strong or n in roles
                else ""
                for n in members
            ],
            hovertext=[_node_hover(n, facts.get(n, {})) for n in members],
            textposition=["bottom center" if n.endswith(".mlp") else "top center" for n in members],
            marker=dict(
                size=12 if role else 10,
                color=_role_colour(role, sorted(set(roles.values()))),
                symbol=[_node_symbol(n) for n in members],
            ),
            hoverinfo="text",
            name=role or "other nodes",
            showlegend=bool(roles),
        )
    n_nodes = len(fig.data) - len(edges)
    counts = sorted({k for k in (10, 20, 40, 80, len(edges)) if k <= len(edges)})
    for i, trace in enumerate(fig.data[: len(edges)]):
        trace.visible = i < shown
    if len(counts) > 1:
        steps = [
            dict(
                method="restyle",
                label=str(k),
                args=[{"visible": [i < k for i in range(len(edges))] + [True] * n_nodes}],
            )
            for k in counts
        ]
        active = max(i for i, k in enumerate(counts) if k <= shown)
        fig.update_layout(
            sliders=[dict(active=active, steps=steps, currentvalue=dict(prefix="edges shown: "))]
        )
    fig.update_xaxes(title_text="layer (input left, logits right)")
    fig.update_yaxes(visible=False)
    tallest = max((y for _, y in position.values()), default=0)
    fig.update_layout(
        title=title or f"edges between kept nodes (the strongest of {len(edges)})",
        height=max(500, 250 + 55 * tallest),
    )
    return fig


def _node_hover(name: str, data: Mapping) -> str:
    """A node's name and its measured facts, a line each."""
    lines = [html.escape(name)]
    if data.get("kept_at"):
        lines.append(html.escape(f"kept at: {data['kept_at']}"))
    if "role" in data:
        at = f" at {data['position']}" if data.get("position") else ""
        lines.append(html.escape(f"role: {data['role']}{at} ({data['evidence']})"))
    if "delta_metric" in data:
        lines.append(
            f"removed alone: logit diff {data['delta_metric']:+.3f}, KL {data['delta_kl']:+.3f}"
        )
    direct = data.get("direct_effect")
    if direct is not None and not math.isnan(direct):
        lines.append(f"direct effect {direct:+.3f}")
    return "<br>".join(lines)


ROLE_COLOURS = ("#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _role_colour(role: str, every: list[str]) -> str:
    """One colour per named role, grey for unclassified heads, dark for the other nodes."""
    if not role:
        return "#333"
    if role == "unclassified":
        return "#aaa"
    named = [r for r in every if r != "unclassified"]
    return ROLE_COLOURS[named.index(role) % len(ROLE_COLOURS)]


def _edge_graph_layout(names: list[str]) -> dict[str, tuple[float, float]]:
    """Nodes by layer from left to right; in a layer the heads stacked upwards from 1 and
    the MLP below them at 0, so that edges between neighbours do not run along one line;
    the input and the logits half-way up."""
    finite = [_node_order(n)[0] for n in names if n != "logits"]
    stacked: dict[float, int] = {}
    position = {}
    for name in names:
        x = _node_order(name)[0] if name != "logits" else max(finite, default=0) + 1
        if name.endswith(".mlp"):
            position[name] = (x, 0.0)
        elif "." in name:
            stacked[x] = stacked.get(x, 0) + 1
            position[name] = (x, float(stacked[x]))
    middle = (max(stacked.values(), default=0) + 1) / 2
    for name in names:
        if "." not in name:
            position[name] = (_node_order(name)[0] if name != "logits" else max(finite) + 1, middle)
    return position


def _arc(
    start: tuple[float, float], end: tuple[float, float], bend: float = 0.15, points: int = 12
) -> tuple[list[float], list[float]]:
    """A quadratic Bezier from ``start`` to ``end``, bent to the left of its direction by
    ``bend`` of its length: edges that share a line stay apart."""
    (x0, y0), (x1, y1) = start, end
    cx, cy = (x0 + x1) / 2 - bend * (y1 - y0), (y0 + y1) / 2 + bend * (x1 - x0)
    ts = [i / (points - 1) for i in range(points)]
    xs = [(1 - t) ** 2 * x0 + 2 * (1 - t) * t * cx + t**2 * x1 for t in ts]
    ys = [(1 - t) ** 2 * y0 + 2 * (1 - t) * t * cy + t**2 * y1 for t in ts]
    return xs, ys


def _node_order(name: str) -> tuple[float, str]:
    """Left-to-right place of a node: input, then per layer its heads and its MLP, logits."""
    if name == "input":
        return (-1.0, name)
    if name == "logits":
        return (float("inf"), name)
    layer = int(name.split(".")[0][1:])
    return (layer + (0.5 if name.endswith(".mlp") else 0.0), name)


def _node_symbol(name: str) -> str:
    return "square" if name.endswith(".mlp") else "diamond" if "." not in name else "circle"


def plot_head_comparison(a: Circuit, b: Circuit, names: tuple[str, str] = ("A", "B")) -> go.Figure:
    """Layers x heads of two circuits of one model: kept by both, by one of them, or by
    neither (the head maps of the two side by side, in one picture)."""
    kept_a, kept_b = a.kept("head"), b.kept("head")
    code = kept_a.int() + 2 * kept_b.int()  # 0 neither, 1 only A, 2 only B, 3 both
    labels = ["neither", f"only {names[0]}", f"only {names[1]}", "both"]
    colours = ["#f2f2f2", "#1f77b4", "#ff7f0e", "#2ca02c"]
    scale = []  # one flat band per code
    for i, colour in enumerate(colours):
        scale += [[i / 4, colour], [(i + 1) / 4, colour]]
    text = [[labels[v] for v in row] for row in code.tolist()]
    fig = go.Figure(
        go.Heatmap(
            z=code.numpy(),
            text=text,
            zmin=-0.5,
            zmax=3.5,
            colorscale=scale,
            colorbar=dict(tickvals=[0, 1, 2, 3], ticktext=labels),
            hovertemplate="L%{y}.H%{x}: %{text}<extra></extra>",
        )
    )
    shared = int((kept_a & kept_b).sum())
    fig.update_layout(
        title=f"heads: {int(kept_a.sum())} in {names[0]}, {int(kept_b.sum())} in {names[1]}, "
        f"{shared} shared",
        xaxis_title="head",
        yaxis_title="layer",
        height=300 + 12 * a.dims.n_layers,
    )
    return fig
