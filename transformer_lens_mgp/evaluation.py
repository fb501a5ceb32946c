"""Faithfulness of a circuit on held-out pairs, and a random circuit of equal size as a baseline.

A circuit is faithful when the model run as the circuit (every other node ablated)
predicts like the full model: low KL(full || circuit) and most of the task metric recovered
relative to the fully ablated model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .circuit import Circuit
from .data import PairedDataset
from .granularity import PARENT, ModelDims
from .interventions import (
    check_ablation,
    check_hook_points,
    masked_answer_logits,
    mean_activations,
    model_device,
    reference_pass,
    zero_activations,
)
from .objectives import accuracy, kl_divergence, recovered, task_metric


@dataclass
class Evaluation:
    """Faithfulness numbers of one circuit on one dataset.

    Args:
        kl: mean KL(full model || circuit) at the answer positions, in nats.
        metric_full / metric_circuit / metric_empty: mean task metric (logit or probability
            difference) of the full model, the circuit and the fully ablated model.
        recovered: ``(metric_circuit - metric_empty) / (metric_full - metric_empty)``.
        accuracy_full / accuracy_circuit: how often the top prediction is a correct answer.
        kept / total: nodes per granularity.
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


@torch.no_grad()
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
    ablation = ablation or circuit.config.get("ablation", "corrupted")
    check_ablation(ablation)
    circuit.check_model(model)
    dims = circuit.dims
    check_hook_points(model, dims)
    device = model_device(model)
    attn, mlp = (m if m is None else m.to(device) for m in circuit._site_masks())
    empty_attn, empty_mlp = torch.zeros_like(attn), None if mlp is None else torch.zeros_like(mlp)
    fixed = None
    if ablation == "mean":
        fixed = mean_activations(model, dataset.corrupted_tokens, dims, dataset.answer_positions)
    elif ablation == "zero":
        fixed = zero_activations(dims, device)
    has_metric = dataset.wrong_answer_tokens is not None
    sums = dict.fromkeys(
        ["kl", "metric_full", "metric_circuit", "metric_empty", "acc_full", "acc_circuit"], 0.0
    )
    for batch in dataset.batches(batch_size, shuffle=False):
        batch = batch.to(device)
        n = len(batch)
        full, corrupted = reference_pass(model, batch, dims, cache_corrupted=fixed is None)
        ablated = corrupted if fixed is None else fixed
        logits = masked_answer_logits(model, batch, dims, attn, mlp, ablated)
        sums["kl"] += kl_divergence(full, logits).item() * n
        sums["acc_full"] += accuracy(full, batch.answer_tokens).item() * n
        sums["acc_circuit"] += accuracy(logits, batch.answer_tokens).item() * n
        if has_metric:
            empty = masked_answer_logits(model, batch, dims, empty_attn, empty_mlp, ablated)
            sums["metric_full"] += task_metric(full, batch).sum().item()
            sums["metric_circuit"] += task_metric(logits, batch).sum().item()
            sums["metric_empty"] += task_metric(empty, batch).sum().item()
    mean = {k: v / len(dataset) for k, v in sums.items()}
    if not has_metric:
        for key in ("metric_full", "metric_circuit", "metric_empty"):
            mean[key] = float("nan")
    return Evaluation(
        kl=mean["kl"],
        metric_full=mean["metric_full"],
        metric_circuit=mean["metric_circuit"],
        metric_empty=mean["metric_empty"],
        recovered=recovered(mean["metric_circuit"], mean["metric_full"], mean["metric_empty"]),
        accuracy_full=mean["acc_full"],
        accuracy_circuit=mean["acc_circuit"],
        kept={g: circuit.n_kept(g) for g in dims.available()},
        total={g: circuit.n_total(g) for g in dims.available()},
        n_pairs=len(dataset),
    )


def random_circuit(circuit: Circuit, seed: int = 0) -> Circuit:
    """A circuit with as many nodes per trained granularity as ``circuit``, chosen at random
    top-down (children only under kept parents), as a baseline for faithfulness."""
    generator = torch.Generator().manual_seed(seed)
    dims = circuit.dims
    on, off = 10.0, -10.0
    chosen: dict[str, torch.Tensor] = {}
    for g in circuit.granularities:
        allowed = _allowed_under_parents(g, chosen, dims)
        candidates = allowed.flatten().nonzero()[:, 0]
        k = min(circuit.n_kept(g), len(candidates))
        picked = candidates[torch.randperm(len(candidates), generator=generator)[:k]]
        mask = torch.zeros(allowed.numel(), dtype=torch.bool)
        mask[picked] = True
        chosen[g] = mask.view(dims.shape(g))
    log_alpha = {g: torch.where(m, on, off) for g, m in chosen.items()}
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
