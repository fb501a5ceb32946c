"""Circuits chosen rather than trained: a random circuit of equal size (the baseline every
faithfulness number is read against), the circuit of equal size that another method's node
scores choose, and the top fraction of a circuit's nodes by score."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core.circuit import Circuit
from ..core.errors import UsageError
from ..core.nodes import PARENT, finest


def random_circuit(circuit: Circuit, seed: int = 0) -> Circuit:
    """A circuit with exactly as many kept nodes as ``circuit`` at every trained
    granularity, chosen at random top-down: children only under chosen parents, and every
    chosen parent given at least one chosen child so that none is dropped afterwards."""
    return _matched(circuit, None, seed, random_baseline_seed=seed)


def scored_circuit(circuit: Circuit, scores: dict[str, Tensor], method: str = "scores") -> Circuit:
    """The circuit of ``circuit``'s size that ``scores`` choose: at every trained granularity,
    parents first, as many nodes as ``circuit`` keeps, the highest-scoring ones under the
    chosen parents (each chosen parent first gets its best child, so none is dropped).

    This is how another method (attribution patching, integrated gradients, exact patching)
    is compared with pruning at equal size, granularity by granularity."""
    missing = [g for g in circuit.granularities if g not in scores]
    if missing:
        raise UsageError(f"scores for {missing} are missing; give one score per node of each")
    for g in circuit.granularities:
        if tuple(scores[g].shape) != circuit.shape(g):
            raise UsageError(
                f"scores[{g!r}] has shape {tuple(scores[g].shape)}, the circuit's {g} nodes "
                f"{circuit.shape(g)}"
            )
    return _matched(circuit, scores, 0, chosen_by=method)


def _matched(circuit: Circuit, scores: dict[str, Tensor] | None, seed: int, **how) -> Circuit:
    """As many nodes as ``circuit`` per trained granularity, top-down, by ``scores`` (highest
    first) or, without scores, at random."""
    generator = torch.Generator().manual_seed(seed)
    dims = circuit.dims
    chosen: dict[str, Tensor] = {}
    must_cover: dict[str, Tensor] = {}  # per granularity: ancestor nodes owed a child in it
    for g in circuit.granularities:  # parents first: a nearest trained ancestor is chosen
        ancestor = _nearest_trained(g, circuit)
        allowed = torch.ones(circuit.shape(g), dtype=torch.bool)
        ancestor_ndim = None
        if ancestor is not None:
            allowed &= _broadcast(chosen[ancestor], allowed.ndim)
            ancestor_ndim = chosen[ancestor].ndim
        priority = None if scores is None else scores[g].detach().float().cpu()
        owed = must_cover.pop(g, None)
        picked = _pick(allowed, owed, ancestor_ndim, circuit.n_kept(g), generator, priority)
        chosen[g] = picked
        branches = [c for c in circuit.granularities if _nearest_trained(c, circuit) == g]
        needed = 1 + dims.has_mlp if g == "block" else 1
        if len(branches) == needed:  # else an untrained branch keeps every chosen node
            must_cover.update(_assign_cover(picked, branches, circuit, generator))
    return _chosen_from(circuit, chosen, **how)


def _chosen_from(circuit: Circuit, kept: dict[str, Tensor], **how) -> Circuit:
    """A circuit of ``kept`` nodes, recording the circuit it was chosen from and how."""
    return Circuit.from_kept(
        circuit.dims,
        kept,
        hard_concrete=circuit.hard_concrete,
        config=circuit.config,
        fit_info={**circuit.fit_info, **how},
        slots=circuit.slots,
    )


def _nearest_trained(g: str, circuit: Circuit) -> str | None:
    parent = PARENT[g]
    while parent is not None and parent not in circuit.log_alpha:
        parent = PARENT[parent]
    return parent


def _broadcast(parent_mask: Tensor, ndim: int) -> Tensor:
    while parent_mask.ndim < ndim:
        parent_mask = parent_mask[..., None]
    return parent_mask


def _assign_cover(
    picked: Tensor, branches: list[str], circuit: Circuit, generator
) -> dict[str, Tensor]:
    """Which child granularity owes each picked node a child: the only branch, or (a block
    with both an attention and an MLP branch) one of the two, within each branch's count."""
    if not branches:
        return {}
    nodes = picked.flatten().nonzero()[:, 0]
    nodes = nodes[torch.randperm(len(nodes), generator=generator)]
    if len(branches) == 1:
        return {branches[0]: nodes}
    quota = {b: circuit.n_kept(b) for b in branches}
    owed: dict[str, list[int]] = {b: [] for b in branches}
    for node in nodes.tolist():
        open_ = [b for b in branches if quota[b] > 0]
        branch = open_[int(torch.randint(len(open_), (1,), generator=generator))]
        quota[branch] -= 1
        owed[branch].append(node)
    return {b: torch.tensor(v, dtype=torch.long) for b, v in owed.items()}


def _pick(
    allowed: Tensor,
    owed: Tensor | None,
    ancestor_ndim: int | None,
    k: int,
    generator,
    priority: Tensor | None = None,
) -> Tensor:
    """``k`` allowed nodes: first one under each owed ancestor node, then the rest; the best by
    ``priority`` where given, else at random."""
    flat_allowed = allowed.flatten()
    mask = torch.zeros(flat_allowed.numel(), dtype=torch.bool)
    if owed is not None and len(owed):
        n_ancestors = math.prod(allowed.shape[:ancestor_ndim])
        per_ancestor = allowed.view(-1, allowed.numel() // n_ancestors)
        ranks = None if priority is None else priority.view(per_ancestor.shape)
        for node in owed.tolist():
            children = per_ancestor[node].nonzero()[:, 0]
            if ranks is None:
                child = children[torch.randint(len(children), (1,), generator=generator)]
            else:
                child = children[ranks[node, children].argmax()]
            mask[node * per_ancestor.shape[1] + child] = True
    rest = (flat_allowed & ~mask).nonzero()[:, 0]
    extra = max(0, k - int(mask.sum()))
    if priority is None:
        order = torch.randperm(len(rest), generator=generator)
    else:
        order = priority.flatten()[rest].argsort(descending=True, stable=True)
    mask[rest[order[:extra]]] = True
    return mask.view(allowed.shape)


def top_fraction(circuit: Circuit, fraction: float) -> Circuit:
    """The circuit keeping the ``fraction`` of the finest trained nodes of each branch
    (attention neurons and MLP neurons, when trained) with the highest score, at least one;
    a node's score is the smallest ``log_alpha`` on its path from the block, so no node ranks
    above its ancestors. Parents are kept exactly when a child is."""
    if not 0 < fraction <= 1:
        raise UsageError(f"fraction must be in (0, 1], got {fraction}")
    trained = circuit.log_alpha
    kept = {}
    for g in finest(trained):
        scores = trained[g]
        parent = PARENT[g]
        while parent is not None:
            if parent in trained:
                scores = torch.minimum(scores, _broadcast(trained[parent], scores.ndim))
            parent = PARENT[parent]
        k = max(1, math.ceil(fraction * scores.numel()))
        chosen = torch.zeros(scores.numel(), dtype=torch.bool)
        chosen[scores.flatten().topk(k).indices] = True
        kept[g] = chosen.view(scores.shape)
    for g in trained:
        kept.setdefault(g, torch.ones(circuit.shape(g), dtype=torch.bool))
    return _chosen_from(circuit, kept, top_fraction=fraction)
