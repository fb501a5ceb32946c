"""The circuit as one graph: its kept heads and MLPs between the input and the logits, each
with what was measured of it (removal effect, direct effect, role), joined by the attribution
scores of the edges among them. ``graph.json`` in a run folder is this graph as networkx's
node-link data, so ``networkx.node_link_graph(json.load(f), edges="links")`` reads it back."""

from __future__ import annotations

import html
import math

import networkx as nx

from ..core.edge_graph import INPUT, LOGITS
from .discovery import Discovery
from .edges import kept_nodes


def circuit_graph(run: Discovery) -> nx.DiGraph:
    """Nodes: ``input``, the kept heads and MLPs, ``logits`` (attributes ``layer``, ``kind``
    and, where measured, ``delta_kl``, ``delta_metric``, ``direct_effect``, ``role``,
    ``evidence`` and ``position``, the token role it acts from); edges: the scored edges
    (attribute ``weight``), none when not scored."""
    circuit = run.circuit
    graph = nx.DiGraph()
    graph.add_node(INPUT, layer=-1, kind="input")
    for name, layer, kind in kept_nodes(circuit):
        graph.add_node(name, layer=layer, kind=kind)
    graph.add_node(LOGITS, layer=circuit.dims.n_layers, kind="logits")
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


def node_facts(graph: nx.DiGraph) -> dict[str, str]:
    """Per node, its measured facts as one line of hover text."""
    facts = {}
    for name, data in graph.nodes(data=True):
        bits = []
        if "role" in data:
            at = f" at {data['position']}" if data.get("position") else ""
            bits.append(html.escape(f"role: {data['role']}{at} ({data['evidence']})"))
        if "delta_metric" in data:
            bits.append(
                f"removed alone: logit diff {data['delta_metric']:+.3f}, KL {data['delta_kl']:+.3f}"
            )
        direct = data.get("direct_effect")
        if direct is not None and not math.isnan(direct):
            bits.append(f"direct effect {direct:+.3f}")
        if bits:
            facts[name] = "<br>".join(bits)
    return facts
