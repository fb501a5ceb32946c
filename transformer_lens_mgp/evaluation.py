"""Faithfulness of a circuit on held-out pairs, and a random circuit of equal size as a baseline.

A circuit is faithful when the model run as the circuit (every other node ablated)
predicts like the full model: low KL(full || circuit) and most of the task metric recovered
relative to the fully ablated model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .circuit import Circuit
from .data import PairedDataset
from .granularity import PARENT, ModelDims, finest
from .interventions import (
    check_ablation,
    check_hook_points,
    fixed_ablation,
    masked_answer_logits,
    model_device,
    reference_pass,
)
from .layout import forward_layout
from .objectives import accuracy, kl_divergence, recovered, task_metric


@dataclass
class Evaluation:
    """Faithfulness numbers of one circuit on one dataset.

    Args:
        kl: mean KL(full model || circuit) at the answer positions, in nats.
        metric_full: mean task metric (logit or probability difference) of the full model.
        metric_circuit: the same for the circuit.
        metric_empty: the same for the fully ablated model.
        recovered: ``(metric_circuit - metric_empty) / (metric_full - metric_empty)``.
        accuracy_full: how often the full model's top prediction is a correct answer.
        accuracy_circuit: the same for the circuit.
        kept: nodes kept per granularity.
        total: nodes per granularity.
        n_pairs: pairs evaluated.
    """

    kl: float
    metric_full: float
    metric_circuit: float
    metric_empty: float
    recovered: float
    accuracy_full: float
    accuracy_circuit: float
    kept: dict[str, int]
    total: dict[str, int]
    n_pairs: int

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(
    model,
    circuit: Circuit,
    dataset: PairedDataset,
    *,
    batch_size: int = 32,
    ablation: str | None = None,
) -> Evaluation:
    """Run the model as ``circuit`` on ``dataset`` and compare it with the full model.

    ``ablation`` defaults to the one the circuit was trained with.
    """
    return evaluate_many(model, [circuit], dataset, batch_size=batch_size, ablation=ablation)[0]


@torch.no_grad()
def evaluate_many(
    model,
    circuits: Sequence[Circuit],
    dataset: PairedDataset,
    *,
    batch_size: int = 32,
    ablation: str | None = None,
) -> list[Evaluation]:
    """:func:`evaluate` for several circuits of one model, sharing the full and empty runs."""
    if not circuits:
        raise ValueError("give at least one circuit to evaluate")
    ablation = ablation or circuits[0].config.get("ablation", "corrupted")
    check_ablation(ablation)
    for circuit in circuits:
        circuit.check_model(model)
    dims = circuits[0].dims
    check_hook_points(model, dims)
    device = model_device(model)
    masks = [tuple(m if m is None else m.to(device) for m in c._site_masks()) for c in circuits]
    empty_attn = torch.zeros_like(masks[0][0])
    empty_mlp = None if masks[0][1] is None else torch.zeros_like(masks[0][1])
    fixed = fixed_ablation(model, ablation, dataset, dims)
    has_metric = dataset.wrong_answer_tokens is not None
    shared = dict.fromkeys(["metric_full", "metric_empty", "acc_full"], 0.0)
    own = [dict.fromkeys(["kl", "metric", "acc"], 0.0) for _ in circuits]
    with forward_layout(model):
        for batch in dataset.batches(batch_size, shuffle=False):
            batch = batch.to(device)
            full, corrupted = reference_pass(model, batch, dims, cache_corrupted=fixed is None)
            ablated = corrupted if fixed is None else fixed
            shared["acc_full"] += accuracy(full, batch.answer_tokens).item() * len(batch)
            if has_metric:
                empty = masked_answer_logits(model, batch, dims, empty_attn, empty_mlp, ablated)
                shared["metric_full"] += task_metric(full, batch).sum().item()
                shared["metric_empty"] += task_metric(empty, batch).sum().item()
            for (attn, mlp), sums in zip(masks, own, strict=True):
                logits = masked_answer_logits(model, batch, dims, attn, mlp, ablated)
                sums["kl"] += kl_divergence(full, logits).item() * len(batch)
                sums["acc"] += accuracy(logits, batch.answer_tokens).item() * len(batch)
                if has_metric:
                    sums["metric"] += task_metric(logits, batch).sum().item()
    n = len(dataset)
    nan = float("nan")
    full_m = shared["metric_full"] / n if has_metric else nan
    empty_m = shared["metric_empty"] / n if has_metric else nan
    results = []
    for circuit, sums in zip(circuits, own, strict=True):
        metric = sums["metric"] / n if has_metric else nan
        results.append(
            Evaluation(
                kl=sums["kl"] / n,
                metric_full=full_m,
                metric_circuit=metric,
                metric_empty=empty_m,
                recovered=recovered(metric, full_m, empty_m),
                accuracy_full=shared["acc_full"] / n,
                accuracy_circuit=sums["acc"] / n,
                kept={g: circuit.n_kept(g) for g in dims.available()},
                total={g: circuit.n_total(g) for g in dims.available()},
                n_pairs=n,
            )
        )
    return results


_ON, _OFF = 10.0, -10.0
"""log_alpha of a node surely kept / surely dropped, for circuits chosen rather than trained."""


def random_circuit(circuit: Circuit, seed: int = 0) -> Circuit:
    """A circuit with as many nodes per trained granularity as ``circuit``, chosen at random
    top-down (children only under kept parents), as a baseline for faithfulness."""
    generator = torch.Generator().manual_seed(seed)
    dims = circuit.dims
    chosen: dict[str, torch.Tensor] = {}
    for g in circuit.granularities:
        allowed = _allowed_under_parents(g, chosen, dims)
        candidates = allowed.flatten().nonzero()[:, 0]
        k = min(circuit.n_kept(g), len(candidates))
        picked = candidates[torch.randperm(len(candidates), generator=generator)[:k]]
        mask = torch.zeros(allowed.numel(), dtype=torch.bool)
        mask[picked] = True
        chosen[g] = mask.view(dims.shape(g))
    log_alpha = {g: torch.where(m, _ON, _OFF) for g, m in chosen.items()}
    return Circuit(
        dims=dims,
        log_alpha=log_alpha,
        hard_concrete=circuit.hard_concrete,
        config={**circuit.config, "random_baseline_seed": seed},
    )


def _allowed_under_parents(g: str, chosen: dict, dims: ModelDims) -> torch.Tensor:
    """Nodes of ``g`` whose nearest trained ancestor was chosen (all, if none is trained)."""
    allowed = torch.ones(dims.shape(g), dtype=torch.bool)
    parent = PARENT[g]
    while parent is not None and parent not in chosen:
        parent = PARENT[parent]
    if parent is None:
        return allowed
    kept = chosen[parent]
    while kept.ndim < allowed.ndim:
        kept = kept[..., None]
    return allowed & kept


MIB_FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""Circuit sizes (kept fraction per granularity) of the MIB circuit track."""


@dataclass
class FaithfulnessCurve:
    """Faithfulness of a circuit's nodes added in order of ``log_alpha``.

    Args:
        fractions: kept fraction of the finest trained nodes (see :func:`top_fraction`).
        faithfulness: ``(m(C) - m(empty)) / (m(full) - m(empty))`` at each point.
        kl: KL(full || C) at each point.
        kept: nodes per granularity at each point (after hierarchy).
        cpr: area under the faithfulness curve over ``fractions`` (higher is better).
        cmd: area under ``|1 - faithfulness|`` (lower is better).
    """

    fractions: list[float]
    faithfulness: list[float]
    kl: list[float]
    kept: list[dict[str, int]]
    cpr: float
    cmd: float

    def to_dict(self) -> dict:
        return asdict(self)


def top_fraction(circuit: Circuit, fraction: float) -> Circuit:
    """The circuit keeping the ``fraction`` of the finest trained nodes of each branch
    (attention neurons and MLP neurons, when trained) with the highest score, at least one;
    a node's score is the smallest ``log_alpha`` on its path from the block, so no node ranks
    above its ancestors. Parents are kept exactly when a child is."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    dims, trained = circuit.dims, circuit.log_alpha
    log_alpha = {}
    for g in finest(trained):
        scores = trained[g]
        parent = PARENT[g]
        while parent is not None:
            if parent in trained:
                above = trained[parent]
                scores = torch.minimum(
                    scores, above.view(*above.shape, *[1] * (scores.ndim - above.ndim))
                )
            parent = PARENT[parent]
        k = max(1, math.ceil(fraction * scores.numel()))
        chosen = torch.zeros(scores.numel(), dtype=torch.bool)
        chosen[scores.flatten().topk(k).indices] = True
        log_alpha[g] = torch.where(chosen.view(scores.shape), _ON, _OFF)
    for g in trained:
        log_alpha.setdefault(g, torch.full(dims.shape(g), _ON))
    return Circuit(
        dims=dims,
        log_alpha=log_alpha,
        hard_concrete=circuit.hard_concrete,
        config={**circuit.config, "top_fraction": fraction},
    )


def faithfulness_curve(
    model,
    circuit: Circuit,
    dataset: PairedDataset,
    fractions: Sequence[float] = MIB_FRACTIONS,
    *,
    batch_size: int = 32,
    ablation: str | None = None,
) -> FaithfulnessCurve:
    """Faithfulness against circuit size, with MIB's CPR and CMD areas (Mueller et al. 2025).

    Needs a dataset with wrong answers (a task metric)."""
    if dataset.wrong_answer_tokens is None:
        raise ValueError(
            "faithfulness needs a task metric: build the dataset with wrong answers "
            "(wrong_answer_tokens=...), as every built-in task does"
        )
    fractions = sorted(float(f) for f in fractions)
    if len(fractions) < 2:
        raise ValueError("give at least two fractions to draw a curve")
    circuits = [top_fraction(circuit, f) for f in fractions]
    results = evaluate_many(model, circuits, dataset, batch_size=batch_size, ablation=ablation)
    f = [r.recovered for r in results]
    x = np.asarray(fractions)
    return FaithfulnessCurve(
        fractions=fractions,
        faithfulness=f,
        kl=[r.kl for r in results],
        kept=[r.kept for r in results],
        cpr=float(np.trapezoid(f, x)),
        cmd=float(np.trapezoid(np.abs(1 - np.asarray(f)), x)),
    )
