"""The result of an edge fit: which edges among a node circuit's kept nodes a behaviour needs.

An EdgeCircuit is its node :class:`~.circuit.Circuit`, the :class:`~.edge_graph.EdgeGraph`
among that circuit's kept nodes and one learned ``log_alpha`` per edge. Like a Circuit it is
data plus files and hooks: the optimiser that made it lives in ``training``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from .circuit import SURELY_DROPPED, SURELY_KEPT, Circuit
from .data import PairedDataset
from .edge_graph import EdgeGraph, corrupted_activations, per_head_inputs, reader_node
from .errors import UsageError
from .files import read_safetensors, write_safetensors
from .gates import HardConcrete
from .model_api import FwdHooks, attached, model_device

EDGES_SCHEMA_VERSION = 1
_EDGES_KEY = "transformer_lens_mgp.edges"
_NODES_KEY = "transformer_lens_mgp.nodes"
_NODE_PREFIX = "nodes."


@dataclass
class EdgeCircuit:
    """Edges kept among the nodes of ``nodes``.

    Args:
        nodes: the node circuit whose kept heads and MLPs are the graph's nodes.
        graph: the possible edges among them.
        log_alpha: learned Hard Concrete location per edge (``graph.edge_names`` order).
        hard_concrete: the gate constants used in training.
        config: the fit's settings, for the record.
        fit_info: what the fit measured (``kl_empty``, ``seconds``, ...).
        history: per-step training curves.
    """

    nodes: Circuit
    graph: EdgeGraph
    log_alpha: Float[Tensor, " edge"]
    hard_concrete: HardConcrete = field(default_factory=HardConcrete)
    config: dict = field(default_factory=dict)
    fit_info: dict = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self):
        if tuple(self.log_alpha.shape) != (self.graph.n_edges,):
            raise UsageError(
                f"log_alpha has shape {tuple(self.log_alpha.shape)}, but the graph has "
                f"{self.graph.n_edges} edges"
            )
        if not torch.isfinite(self.log_alpha).all():
            raise UsageError("log_alpha holds NaN or infinite values; fit the edges again")
        if EdgeGraph.of(self.nodes, self.graph.parallel_attn_mlp) != self.graph:
            raise UsageError("the edge graph is not the graph among the node circuit's kept nodes")

    @classmethod
    def from_kept(
        cls, nodes: Circuit, graph: EdgeGraph, kept: Bool[Tensor, " edge"], **fields
    ) -> EdgeCircuit:
        """Edges chosen rather than trained (e.g. the top edges of a ranking)."""
        kept = torch.as_tensor(kept, dtype=torch.bool)
        log_alpha = torch.where(kept, SURELY_KEPT, SURELY_DROPPED)
        return cls(nodes=nodes, graph=graph, log_alpha=log_alpha, **fields)

    def mask(self) -> Float[Tensor, " edge"]:
        """Binary deterministic mask per edge."""
        return (self.hard_concrete.deterministic(self.log_alpha) > 0.5).float()

    def kept(self) -> Bool[Tensor, " edge"]:
        return self.mask().bool()

    @property
    def n_kept(self) -> int:
        return int(self.kept().sum())

    @property
    def n_total(self) -> int:
        return self.graph.n_edges

    def edges(self) -> list[tuple[str, str]]:
        """Kept edges as ``(writer, reader)`` names, e.g. ``("L3.H1", "L7.H2.v")``."""
        kept = self.kept().tolist()
        return [edge for edge, keep in zip(self.graph.edge_names, kept, strict=True) if keep]

    def to_networkx(self):
        """Kept edges as a ``networkx.DiGraph``: nodes are writers and readers (attributes
        ``layer``, ``kind``: input, head, mlp, logits), edges from a writer to the node that
        reads (a head's q/k/v edges become one edge with attribute ``inputs``, e.g. "qv"), with
        ``weight`` the largest learned ``log_alpha`` among them."""
        import networkx as nx

        graph = nx.DiGraph()
        for u, v, alpha in self.kept_rows():
            reader, inputs = reader_node(v)
            for name in (u, reader):
                if name not in graph:
                    graph.add_node(name, **_node_attrs(name, self.graph.n_layers))
            if graph.has_edge(u, reader):
                data = graph.edges[u, reader]
                data["inputs"] += inputs
                data["weight"] = max(data["weight"], alpha)
            else:
                graph.add_edge(u, reader, inputs=inputs, weight=alpha)
        return graph

    def kept_rows(self) -> list[tuple[str, str, float]]:
        """``(writer, reader, log_alpha)`` of every kept edge."""
        keep = self.kept().tolist()
        alphas = self.log_alpha.tolist()
        return [
            (u, v, a) for (u, v), k, a in zip(self.graph.edge_names, keep, alphas, strict=True) if k
        ]

    def summary(self) -> str:
        """Kept edges, writers and readers, and any measured numbers."""
        kept = self.edges()
        writers = {u for u, _ in kept}
        readers = {v for _, v in kept}
        lines = [
            f"edges kept: {len(kept)} / {self.n_total} "
            f"({100 * len(kept) / max(1, self.n_total):.2f}%)",
            f"writers with a kept edge: {len(writers)} / {len(self.graph.writers)}",
            f"readers with a kept edge: {len(readers)} / {len(self.graph.readers)}",
        ]
        for key in ("validation_kl", "validation_recovered"):
            if key in self.fit_info:
                lines.append(f"{key}: {self.fit_info[key]:.4f}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"EdgeCircuit(edges={self.n_kept}/{self.n_total}, nodes={self.nodes!r})"

    # --- running a model as the edge circuit -------------------------------------------

    def fwd_hooks(self, source: PairedDataset | Tensor, *, model) -> FwdHooks:
        """TransformerLens ``fwd_hooks`` that run ``model`` on clean prompts as this edge
        circuit, with ``source`` the corrupted prompts of the same batch (a PairedDataset or
        a tensor of tokens). The model must give every head its own inputs: attach them
        inside ``with per_head_inputs(model):`` or use :meth:`applied`."""
        self.nodes.check_model(model)
        self.graph.check_model(model)
        tokens = source.corrupted_tokens if isinstance(source, PairedDataset) else source
        if not torch.is_tensor(tokens):
            raise UsageError(
                "pass the corrupted prompts as a PairedDataset or a tensor of token ids"
            )
        corrupted = corrupted_activations(model, self.graph, tokens.to(model_device(model)))
        device = model_device(model)
        return self.graph.hooks(
            model, self.nodes.site_masks().to(device), self.mask().to(device), corrupted
        )

    @contextmanager
    def applied(self, model, source: PairedDataset | Tensor) -> Iterator:
        """Inside the block, ``model`` runs as the edge circuit (per-head inputs switched on);
        on exit its hooks and settings are back as they were."""
        with per_head_inputs(model):
            hooks = self.fwd_hooks(source, model=model)
            with attached(model, hooks):
                yield model

    # --- files --------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """One safetensors file with the edges' and the node circuit's ``log_alpha``."""
        node_tensors, node_meta = self.nodes.file_parts()
        tensors = {f"{_NODE_PREFIX}{g}": t for g, t in node_tensors.items()}
        tensors["edges"] = self.log_alpha.detach().cpu().float().contiguous()
        meta = {
            "schema_version": EDGES_SCHEMA_VERSION,
            "graph": self.graph.to_dict(),
            "hard_concrete": self.hard_concrete.to_dict(),
            "config": self.config,
            "fit_info": self.fit_info,
            "history": self.history,
        }
        return write_safetensors(
            path, tensors, {_EDGES_KEY: meta, _NODES_KEY: node_meta}, "edges.safetensors"
        )

    @classmethod
    def load(cls, path: str | Path, model=None) -> EdgeCircuit:
        """Read a file written by :meth:`save`; with ``model``, check it fits that model."""
        tensors, meta = read_safetensors(path, "edge circuit")
        edges, node_meta = meta.get(_EDGES_KEY), meta.get(_NODES_KEY)
        if not isinstance(edges, dict) or not isinstance(node_meta, dict) or "edges" not in tensors:
            raise UsageError(
                f"{path} is not an edge circuit file (a node circuit loads with Circuit.load)"
            )
        if edges.get("schema_version") != EDGES_SCHEMA_VERSION:
            raise UsageError(
                f"{path} has edge schema {edges.get('schema_version')}, this version reads "
                f"{EDGES_SCHEMA_VERSION}; upgrade transformer-lens-mgp"
            )
        node_tensors = {k.removeprefix(_NODE_PREFIX): t for k, t in tensors.items() if k != "edges"}
        nodes = Circuit.from_file_parts(node_tensors, node_meta, path)
        try:
            circuit = cls(
                nodes=nodes,
                graph=EdgeGraph.from_dict(edges["graph"]),
                log_alpha=tensors["edges"],
                hard_concrete=HardConcrete(**edges["hard_concrete"]),
                config=dict(edges.get("config", {})),
                fit_info=dict(edges.get("fit_info", {})),
                history=dict(edges.get("history", {})),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise UsageError(f"{path} has damaged edge metadata ({err})") from None
        if model is not None:
            nodes.check_model(model)
        return circuit


def _node_attrs(name: str, n_layers: int) -> dict:
    """``layer`` and ``kind`` of a writer or reader name."""
    if name == "input":
        return {"layer": -1, "kind": "input"}
    if name == "logits":
        return {"layer": n_layers, "kind": "logits"}
    layer = int(name[1:].split(".")[0])
    return {"layer": layer, "kind": "mlp" if name.endswith(".mlp") else "head"}
