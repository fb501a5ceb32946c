"""Circuits in the JSON format of MIB's circuit track (the EAP-IG ``Graph`` file), so circuits
found here can be scored by MIB and circuits found by other tools can be evaluated here.

The format names nodes ``input``, ``a{L}.h{H}`` (a head), ``m{L}`` (an MLP) and ``logits``,
each ``{"in_graph": bool, "score": float}``, and edges ``"{writer}->{reader}"`` with a
``<q>``, ``<k>`` or ``<v>`` suffix when the reader is a head's input, each
``{"in_graph": bool, "score": float}``; ``cfg`` holds ``n_layers``, ``n_heads``, ``d_model``
and ``parallel_attn_mlp``.

What maps and what does not: a head or an MLP is in the graph when any of its neurons is
kept; MIB has no unit for our attention or MLP neurons (its "neurons" are ``d_model``
dimensions of a node's output), so neuron resolution is lost on writing and a circuit read
from MIB keeps its heads and MLPs whole.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .edge_graph import HEAD_INPUTS, INPUT, LOGITS
from .errors import MissingFileError, UsageError
from .files import write_atomic_text
from .nodes import ModelDims

_HEAD = re.compile(r"^a(\d+)\.h(\d+)$")
_MLP = re.compile(r"^m(\d+)$")


def head_node(layer: int, head: int) -> str:
    return f"a{layer}.h{head}"


def mlp_node(layer: int) -> str:
    return f"m{layer}"


def mib_document(
    dims: ModelDims,
    scores: dict[str, float],
    in_graph: dict[str, bool],
    d_model: int,
    learned: dict[str, float] | None = None,
) -> dict:
    """MIB circuit JSON of nodes named and scored as :func:`node_table` gives them. Every edge
    between two nodes in the graph is in it, scored by the smaller of its nodes' scores; with
    ``learned`` (MIB edge names of learned edges with their scores), only those are."""
    edge_dict = {}
    for writer, reader, suffix in _all_edges(dims):
        if not (in_graph[writer] and in_graph[reader]):
            continue
        name = f"{writer}->{reader}{suffix}"
        if learned is None:
            edge_dict[name] = {"score": min(scores[writer], scores[reader]), "in_graph": True}
        else:
            score = learned.get(name)
            edge_dict[name] = {
                "score": 0.0 if score is None else score,
                "in_graph": score is not None,
            }
    return {
        "cfg": {"n_layers": dims.n_layers, "n_heads": dims.n_heads, "d_model": int(d_model),
                "parallel_attn_mlp": False},
        "nodes": {n: {"in_graph": in_graph[n], "score": scores[n]} for n in scores},
        "edges": edge_dict,
    }  # fmt: skip


def write_mib(path: str | Path, document: dict) -> Path:
    return write_atomic_text(path, json.dumps(document))


def read_mib(path: str | Path, dims: ModelDims) -> dict[str, torch.Tensor]:
    """Which heads and MLPs a MIB circuit JSON puts in the graph (a node also counts as in
    the graph when an edge in the graph touches it), as kept masks for a model of ``dims``."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no MIB circuit file at {path}")
    try:
        document = json.loads(path.read_text())
        cfg, nodes = document["cfg"], document["nodes"]
    except (ValueError, KeyError, TypeError):
        raise UsageError(
            f"{path} is not a MIB circuit file (JSON with cfg, nodes, edges)"
        ) from None
    shape = (cfg.get("n_layers"), cfg.get("n_heads"))
    if shape != (dims.n_layers, dims.n_heads):
        raise UsageError(
            f"{path} is a circuit of a model with {shape[0]} layers of {shape[1]} heads, "
            f"not this one's {dims.n_layers} of {dims.n_heads}"
        )
    named = {n for n, v in nodes.items() if isinstance(v, dict) and v.get("in_graph")}
    for name, edge in (document.get("edges") or {}).items():
        if isinstance(edge, dict) and edge.get("in_graph"):
            writer, _, reader = name.partition("->")
            named |= {writer, reader.split("<")[0]}
    heads = torch.zeros(dims.n_layers, dims.n_heads, dtype=torch.bool)
    mlps = torch.zeros(dims.n_layers, dtype=torch.bool)
    for name in named - {INPUT, LOGITS}:
        head, mlp = _HEAD.match(name), _MLP.match(name)
        if head and int(head[1]) < dims.n_layers and int(head[2]) < dims.n_heads:
            heads[int(head[1]), int(head[2])] = True
        elif mlp and int(mlp[1]) < dims.n_layers:
            mlps[int(mlp[1])] = True
        else:
            raise UsageError(f"{path}: node {name!r} is not a head or MLP of this model")
    return {"head": heads} if dims.d_mlp is None else {"head": heads, "mlp": mlps}


def node_table(
    dims: ModelDims,
    head_score: torch.Tensor,
    heads: torch.Tensor,
    mlp_score: torch.Tensor,
    mlps: torch.Tensor | None,
) -> tuple[dict[str, float], dict[str, bool]]:
    """MIB node names with their scores and whether each is in the graph."""
    scores, in_graph = {INPUT: 1.0}, {INPUT: True}
    for layer in range(dims.n_layers):
        for head in range(dims.n_heads):
            name = head_node(layer, head)
            scores[name] = round(float(head_score[layer, head]), 6)
            in_graph[name] = bool(heads[layer, head])
        name = mlp_node(layer)
        if mlps is None:
            scores[name], in_graph[name] = 0.0, False
        else:
            scores[name] = round(float(mlp_score[layer]), 6)
            in_graph[name] = bool(mlps[layer])
    scores[LOGITS], in_graph[LOGITS] = 1.0, True
    return scores, in_graph


def _all_edges(dims: ModelDims):
    """Every edge of MIB's graph of a sequential (attention, then MLP) model, in order:
    ``(writer, reader, suffix)``."""
    written = [INPUT]
    for layer in range(dims.n_layers):
        for head in range(dims.n_heads):
            for writer in written:
                for letter in HEAD_INPUTS:
                    yield writer, head_node(layer, head), f"<{letter}>"
        written += [head_node(layer, h) for h in range(dims.n_heads)]
        for writer in written:
            yield writer, mlp_node(layer), ""
        written.append(mlp_node(layer))
    for writer in written:
        yield writer, LOGITS, ""


def _mib_name(ours: str) -> str:
    """``L3.H1`` -> ``a3.h1``, ``L3.mlp`` -> ``m3``; ``input`` and ``logits`` stay."""
    if ours in (INPUT, LOGITS):
        return ours
    parts = ours.split(".")
    layer = int(parts[0][1:])
    return mlp_node(layer) if parts[1] == "mlp" else head_node(layer, int(parts[1][1:]))


def learned_edges(rows) -> dict[str, float]:
    """MIB names of learned edges, from ``(writer, reader, log_alpha)`` rows in our names."""
    out = {}
    for writer, reader, alpha in rows:
        node, _, letter = reader.rpartition(".")
        suffix = f"<{letter}>" if letter in HEAD_INPUTS else ""
        target = _mib_name(node if suffix else reader)
        out[f"{_mib_name(writer)}->{target}{suffix}"] = round(float(alpha), 6)
    return out
