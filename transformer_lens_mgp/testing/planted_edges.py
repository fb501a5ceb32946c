"""A small model whose edges are known by construction, to check that edge pruning finds them.

The model has no layer norm and every writer (the embeddings, each head, each MLP) writes into
a residual subspace of its own: a few coordinates no other writer touches. Each reader (a
head's query, key or value input, an MLP's input, the unembedding) has weights only on the
subspaces of the writers wired to it. So an edge that is not wired provably carries nothing:
dropping it leaves every activation unchanged. The wired edges are chosen so that each one
carries information the answer depends on; :func:`planted_edges` measures what dropping each
one alone costs, so a test can check that construction before trusting it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..analysis.edge_evaluation import evaluate_edges
from ..core.circuit import Circuit
from ..core.data import PairedDataset
from ..core.edge_circuit import EdgeCircuit
from ..core.edge_graph import INPUT, LOGITS, EdgeGraph, head_name, mlp_name
from ..core.nodes import ModelDims
from .tiny import build_cfg, model_from_cfg

N_LAYERS, N_HEADS, BLOCK = 3, 2, 4
"""Layers and heads of the planted model; coordinates of the residual stream per writer."""

WIRING: tuple[tuple[str, str], ...] = (
    (INPUT, "L0.H0.q"),
    (INPUT, "L0.H0.k"),
    (INPUT, "L0.H0.v"),
    (INPUT, "L0.H1.v"),
    ("L0.H0", "L0.mlp"),
    (INPUT, "L1.H0.q"),
    (INPUT, "L1.H0.k"),
    ("L0.mlp", "L1.H0.v"),
    ("L0.H1", "L1.H1.v"),
    (INPUT, "L1.mlp"),
    ("L1.H1", "L1.mlp"),
    (INPUT, "L2.H0.k"),
    ("L1.mlp", "L2.H0.q"),
    ("L1.H0", "L2.H0.v"),
    ("L0.H0", "L2.mlp"),
    ("L2.H0", "L2.mlp"),
    ("L1.H1", LOGITS),
    ("L2.H0", LOGITS),
    ("L2.mlp", LOGITS),
)
"""The edges that carry the behaviour. Head L2.H1 reads nothing (its output is constant), and
heads whose query and key read nothing attend uniformly."""


@dataclass
class PlantedEdges:
    """A model with known edges.

    Args:
        model: the planted HookedTransformer.
        dataset: clean/corrupted pairs whose answer is the model's own top prediction.
        nodes: the node circuit (every head and MLP kept).
        graph: the edges among them.
        wired: per edge of ``graph``, whether it is one of :data:`WIRING`.
        removal_cost: per edge, the KL(full || every edge but this one kept), over the pairs.
        kl_empty: the KL of the corrupted run (no edge at all).
    """

    model: object
    dataset: PairedDataset
    nodes: Circuit
    graph: EdgeGraph
    wired: torch.Tensor
    removal_cost: torch.Tensor
    kl_empty: float


def planted_edges(seed: int = 0, n: int = 64, scale: float = 1.5) -> PlantedEdges:
    """The planted model of this module, deterministic in ``seed``, with ``n`` pairs."""
    writers = [INPUT] + [
        name
        for layer in range(N_LAYERS)
        for name in [*(head_name(layer, h) for h in range(N_HEADS)), mlp_name(layer)]
    ]
    block = {name: slice(i * BLOCK, (i + 1) * BLOCK) for i, name in enumerate(writers)}
    cfg = build_cfg(
        n_layers=N_LAYERS,
        n_heads=N_HEADS,
        d_head=BLOCK,
        d_model=BLOCK * len(writers),
        d_mlp=2 * BLOCK,
        d_vocab=24,
        n_ctx=8,
        normalization_type=None,
        act_fn="relu",
        seed=seed,
    )
    model = model_from_cfg(cfg)
    g = torch.Generator().manual_seed(seed)

    def draw(*shape: int) -> torch.Tensor:
        return scale * torch.randn(*shape, generator=g) / shape[0] ** 0.5

    sources: dict[str, list[str]] = {}
    for u, v in WIRING:
        sources.setdefault(v, []).append(u)

    def reads(reader: str, width: int) -> torch.Tensor:
        """``[d_model, width]`` input weights of a reader: non-zero on its writers' rows."""
        w = torch.zeros(cfg.d_model, width)
        for u in sources.get(reader, []):
            w[block[u]] = draw(BLOCK, width)
        return w

    def writes(writer: str, height: int) -> torch.Tensor:
        """``[height, d_model]`` output weights of a writer: non-zero on its own columns."""
        w = torch.zeros(height, cfg.d_model)
        w[:, block[writer]] = draw(height, BLOCK)
        return w

    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.W_E.copy_(writes(INPUT, cfg.d_vocab) * cfg.d_vocab**0.5 / BLOCK**0.5)
        for layer, blk in enumerate(model.blocks):
            for h in range(N_HEADS):
                name = head_name(layer, h)
                for kind, weight in (("q", blk.attn.W_Q), ("k", blk.attn.W_K), ("v", blk.attn.W_V)):
                    gain = 3.0 if kind in "qk" else 1.0  # sharp attention where q and k read
                    weight[h] = gain * reads(f"{name}.{kind}", BLOCK)
                blk.attn.W_O[h] = writes(name, BLOCK)
            blk.mlp.W_in.copy_(reads(mlp_name(layer), cfg.d_mlp))
            blk.mlp.W_out.copy_(writes(mlp_name(layer), cfg.d_mlp))
        model.unembed.W_U.copy_(reads(LOGITS, cfg.d_vocab))
    dims = ModelDims.from_cfg(cfg)
    nodes = Circuit.from_kept(
        dims, {"head": torch.ones(dims.shape("head")), "mlp": torch.ones(dims.shape("mlp"))}
    )
    graph = EdgeGraph.of(nodes)
    wired = torch.tensor([edge in WIRING for edge in graph.edge_names])
    dataset = _dataset(model, n, g)
    costs, kl_empty = _removal_costs(model, nodes, graph, dataset)
    return PlantedEdges(model, dataset, nodes, graph, wired, costs, kl_empty)


def _dataset(model, n: int, generator) -> PairedDataset:
    """Random prompts, each corrupted by new random tokens everywhere; the answer is the
    model's own top prediction at the last position."""
    d_vocab, seq = model.cfg.d_vocab, model.cfg.n_ctx
    clean = torch.randint(0, d_vocab, (n, seq), generator=generator)
    corrupted = torch.randint(0, d_vocab, (n, seq), generator=generator)
    with torch.no_grad():
        answers = model(clean)[:, -1].argmax(-1)
    return PairedDataset(
        clean_tokens=clean, corrupted_tokens=corrupted, answer_tokens=answers, name="planted-edges"
    )


def _removal_costs(model, nodes, graph, dataset) -> tuple[torch.Tensor, float]:
    everything = torch.ones(graph.n_edges, dtype=torch.bool)
    circuits = [EdgeCircuit.from_kept(nodes, graph, ~everything)]
    for i in range(graph.n_edges):
        kept = everything.clone()
        kept[i] = False
        circuits.append(EdgeCircuit.from_kept(nodes, graph, kept))
    empty, *each = evaluate_edges(model, circuits, dataset, batch_size=len(dataset))
    return torch.tensor([e.kl for e in each]), empty.kl
