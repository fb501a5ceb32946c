"""Faithfulness of edge circuits, and edge circuits chosen by other rules at the same size.

:func:`evaluate_edges` runs the model with only an edge circuit's edges (every other edge
carries its corrupted write) and measures it like :func:`~.evaluation.evaluate` measures a node
circuit. :func:`attribution_edges` and :func:`random_edges` keep ``k`` edges of the same graph
by attribution score or at random: the baselines a learned edge circuit must beat at equal
count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..core.checks import check_positive_int
from ..core.circuit import Circuit
from ..core.data import PairedDataset
from ..core.edge_circuit import EdgeCircuit
from ..core.edge_graph import EdgeGraph, corrupted_activations, per_head_inputs, reader_node
from ..core.errors import UsageError
from ..core.model_api import attached, check_model_and_pairs, model_device
from ..runtime.forward import answer_logits, batches_with_rows
from ..runtime.guard import exclusive
from ..runtime.layout import forward_layout
from .edges import edge_scores
from .evaluation import Evaluation, FaithfulnessSums


@torch.no_grad()
def evaluate_edges(
    model,
    circuits: Sequence[EdgeCircuit],
    dataset: PairedDataset,
    *,
    batch_size: int = 32,
) -> list[Evaluation]:
    """Faithfulness of each edge circuit on ``dataset``: KL to the full model, logit
    difference recovered between the corrupted run (no edge) and the full model, accuracy.
    ``kept`` and ``total`` count edges (``edge``) and the node circuit's nodes."""
    if not circuits:
        raise UsageError("give at least one edge circuit to evaluate")
    check_positive_int("batch_size", batch_size)
    for circuit in circuits:
        circuit.nodes.check_model(model)
    check_model_and_pairs(model, circuits[0].nodes.dims, dataset=dataset)
    sums = FaithfulnessSums(len(circuits), dataset.wrong_answer_tokens is not None)
    device = model_device(model)
    with exclusive(model, "evaluate_edges"), forward_layout(model), per_head_inputs(model):
        for circuit in circuits:
            circuit.graph.check_model(model)
        node_masks = [c.nodes.site_masks().to(device) for c in circuits]
        for batch, _ in batches_with_rows(dataset, batch_size, device):
            full = answer_logits(model, batch.clean_tokens, batch.answer_positions)
            empty = answer_logits(model, batch.corrupted_tokens, batch.answer_positions)
            sums.add_reference(full, empty, batch)
            corrupted: dict[EdgeGraph, dict] = {}
            for i, circuit in enumerate(circuits):
                graph = circuit.graph
                if graph not in corrupted:
                    corrupted[graph] = corrupted_activations(model, graph, batch.corrupted_tokens)
                edge_masks = circuit.mask().to(device)
                hooks = graph.hooks(model, node_masks[i], edge_masks, corrupted[graph])
                with attached(model, hooks):
                    logits = answer_logits(model, batch.clean_tokens, batch.answer_positions)
                sums.add(i, full, logits, batch)
    available = circuits[0].nodes.dims.available()
    kept = [{"edge": c.n_kept} | {g: c.nodes.n_kept(g) for g in available} for c in circuits]
    total = [{"edge": c.n_total} | {g: c.nodes.n_total(g) for g in available} for c in circuits]
    return sums.evaluations(kept, total)


def attribution_edges(
    model,
    nodes: Circuit,
    dataset: PairedDataset,
    k: int,
    *,
    batch_size: int = 16,
    scores: dict[tuple[str, str], float] | None = None,
) -> EdgeCircuit:
    """The ``k`` edges among ``nodes``' kept nodes with the largest ``|attribution score|``
    (:func:`~.edges.edge_scores` per query, key and value input); pass ``scores`` to reuse
    them for several ``k``."""
    graph = EdgeGraph.of(nodes, bool(getattr(model.cfg, "parallel_attn_mlp", False)))
    if scores is None:
        scores = edge_scores(model, nodes, dataset, batch_size=batch_size, by_input=True)
    values = torch.tensor([abs(scores.get(edge, 0.0)) for edge in graph.edge_names])
    return EdgeCircuit.from_kept(nodes, graph, _top(values, k), fit_info={"rule": "attribution"})


def random_edges(model, nodes: Circuit, k: int, seed: int = 0) -> EdgeCircuit:
    """``k`` edges among ``nodes``' kept nodes drawn at random."""
    graph = EdgeGraph.of(nodes, bool(getattr(model.cfg, "parallel_attn_mlp", False)))
    values = torch.rand(graph.n_edges, generator=torch.Generator().manual_seed(seed))
    return EdgeCircuit.from_kept(nodes, graph, _top(values, k), fit_info={"rule": "random"})


def _top(values: torch.Tensor, k: int) -> torch.Tensor:
    check_positive_int("k", k)
    kept = torch.zeros(values.shape[0], dtype=torch.bool)
    kept[values.topk(min(k, values.shape[0])).indices] = True
    return kept


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
