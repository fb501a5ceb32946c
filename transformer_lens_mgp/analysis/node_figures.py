"""Plotly figures of single nodes: the ranked removal effects, where the top heads look, and
the order in which nodes enter a circuit as a sweep lets it grow."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from ..core.circuit import Circuit
from ..core.nodes import NODE_NAMES
from .heads import HeadProfiles
from .node_effects import NodeEffects

COLOURS = {"head": "#1f77b4", "mlp": "#ff7f0e", "mlp_neuron": "#2ca02c"}


DOMINANT = 20
"""A node effect this many times the median puts the ranked bars on a log axis."""


def plot_node_effects(effects: NodeEffects, n: int = 20) -> go.Figure:
    """The ``n`` nodes whose removal hurts the circuit most, as ranked bars of the KL increase
    (the logit-difference change on hover), coloured by granularity; on a log axis when the
    largest is over 20 times the median, so that one node does not flatten the rest."""
    moving = [e for e in effects.effects if e.delta_kl != 0 or e.delta_metric != 0]
    top = moving[:n][::-1]  # the largest at the top
    fig = go.Figure(
        go.Bar(
            x=[e.delta_kl for e in top],
            y=[e.node for e in top],
            orientation="h",
            marker_color=[COLOURS.get(e.granularity, "#7f7f7f") for e in top],
            customdata=[[e.granularity, e.delta_metric] for e in top],
            hovertemplate="%{y} (%{customdata[0]})<br>KL +%{x:.4f}"
            "<br>logit diff %{customdata[1]:+.4f}<extra></extra>",
        )
    )
    positive = sorted(e.delta_kl for e in top if e.delta_kl > 0)
    if len(positive) == len(top) > 2 and positive[-1] > DOMINANT * positive[len(positive) // 2]:
        fig.update_xaxes(type="log")
    fig.update_layout(
        title=f"the {len(top)} nodes the circuit misses most when removed alone "
        f"(circuit KL {effects.kl:.3f}, {effects.n_pairs} held-out pairs)",
        xaxis_title="KL increase without the node (nats)",
        height=200 + 22 * len(top),
        margin={"l": 120},
    )
    return fig


def plot_head_attention(profiles: HeadProfiles) -> go.Figure:
    """Heads x token groups: mean attention from each token role the task records (from the
    answer position alone when it records none), the direct effect in the row label. Heads
    that act before the answer (induction, duplicate-token, previous-token) show up in the
    rows of the roles they act from."""
    labels, z = [], []
    for h in profiles.heads:
        rows = h.attention_by_query or {"answer": h.attention}
        for query, row in rows.items():
            labels.append(f"{h.head} ({h.direct_effect:+.2f}) from {query}")
            z.append([row[g] for g in profiles.groups])
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(profiles.groups),
            y=labels,
            text=[[f"{v:.2f}" for v in row] for row in z],
            texttemplate="%{text}",
            colorscale="Purples",
            zmin=0,
            zmax=1,
            colorbar_title="attention",
            hovertemplate="%{y} -> %{x}: %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"where the top heads look from each token role (mean over {profiles.n_pairs} "
        "prompts; direct effect on the logit difference in brackets)",
        yaxis_autorange="reversed",
        height=200 + 22 * len(labels),
        margin={"l": 200},
    )
    return fig


def plot_example_patterns(profiles: HeadProfiles) -> go.Figure:
    """The top heads' attention from the answer position over one example prompt's tokens."""
    tokens = [f"{i}:{t}" for i, t in enumerate(profiles.example_tokens)]
    heads = [h.head for h in profiles.heads]
    z = [profiles.example_patterns[h] for h in heads]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=tokens,
            y=heads,
            colorscale="Purples",
            zmin=0,
            zmax=1,
            colorbar_title="attention",
            hovertemplate="%{y} -> %{x}: %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title="the same heads on one prompt: " + "".join(profiles.example_tokens)[:120],
        xaxis_tickangle=-60,
        yaxis_autorange="reversed",
        height=260 + 26 * len(heads),
    )
    return fig


def plot_node_entry(
    circuits: Sequence[Circuit], granularity: str = "head", max_nodes: int = 60
) -> go.Figure:
    """Sweep points (smallest circuit first) x the nodes any of them keeps: when each node
    enters as the circuit grows. Nodes kept earliest come first."""
    ordered = sorted(circuits, key=lambda c: c.size())
    kept = [c.kept(granularity) for c in ordered]
    first_seen: dict[tuple[int, ...], int] = {}
    for point, mask in enumerate(kept):
        for index in mask.nonzero().tolist():
            first_seen.setdefault(tuple(index), point)
    nodes = sorted(first_seen, key=lambda i: (first_seen[i], i))[:max_nodes]
    names = [NODE_NAMES[granularity].format(*i) for i in nodes]
    z = [[float(mask[i]) for i in nodes] for mask in kept]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=names,
            y=[f"{100 * c.size():.2f}%" for c in ordered],
            colorscale=[[0.0, "#f2f2f2"], [1.0, "#1f77b4"]],
            zmin=0,
            zmax=1,
            showscale=False,
            hovertemplate="%{x} at size %{y}: %{z}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"{granularity} nodes entering as the circuit grows "
        f"({len(nodes)} of {len(first_seen)} shown)",
        xaxis_title=granularity,
        yaxis_title="circuit size (finest nodes kept)",
        yaxis_type="category",
        height=240 + 28 * len(ordered),
    )
    return fig
