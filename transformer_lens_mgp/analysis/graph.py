"""The circuit as one graph: its kept heads and MLPs between the input and the logits, each
with what was measured of it (removal effect, direct effect, role), joined by the attribution
scores of the edges among them. ``graph.json`` in a run folder is this graph as networkx's
node-link data, so ``networkx.node_link_graph(json.load(f), edges="links")`` reads it back."""

from __future__ import annotations

import math

import networkx as nx

from .discovery import Discovery
from .edges import node_graph


def circuit_graph(run: Discovery) -> nx.DiGraph:
    """Nodes: ``input``, the kept heads and MLPs, ``logits`` (attributes ``layer``, ``kind``
    and, where measured, ``delta_kl``, ``delta_metric``, ``direct_effect``, ``role``,
    ``evidence`` and ``position``, the token role it acts from); edges: the scored edges
    (attribute ``weight``), none when not scored."""
    graph = node_graph(run.circuit)
    anatomy = run.anatomy
    if anatomy is not None:
        for effect in anatomy.effects.effects:
            if effect.node in graph:
                graph.nodes[effect.node].update(
                    delta_kl=effect.delta_kl, delta_metric=effect.delta_metric
                )
        for role in anatomy.roles:
            graph.nodes[role.head].update(
                role=role.role,
                evidence=role.evidence,
                direct_effect=role.direct_effect,
                position=role.position,
            )
    for edge in run.edges or ():
        if edge.source in graph and edge.target in graph:
            graph.add_edge(edge.source, edge.target, weight=edge.score)
    return graph


def graph_data(graph: nx.DiGraph) -> dict:
    """``graph`` as node-link data for ``graph.json`` (NaN written as null)."""
    data = nx.node_link_data(graph, edges="links")
    for node in data["nodes"]:
        for key, value in node.items():
            if isinstance(value, float) and math.isnan(value):
                node[key] = None
    return data
