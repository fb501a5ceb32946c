"""Faithfulness of a circuit on held-out pairs.

A circuit is faithful when the model run as the circuit (every other node ablated)
predicts like the full model: low KL(full || circuit) and most of the task metric recovered
relative to the fully ablated model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ..core.checks import check_positive_int
from ..core.circuit import Circuit
from ..core.data import PairedDataset
from ..core.errors import UsageError
from ..core.hooks import AblationSource, check_ablation
from ..core.metrics import accuracy, kl_divergence, recovered, task_metric
from ..core.model_api import check_model_and_pairs
from ..runtime.forward import masked_answer_batches, reference_logits
from ..runtime.guard import exclusive
from ..runtime.layout import forward_layout


@dataclass(frozen=True)
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
        raise UsageError("give at least one circuit to evaluate")
    check_positive_int("batch_size", batch_size)
    ablation = ablation or circuits[0].ablation
    check_ablation(ablation)
    for circuit in circuits:
        circuit.check_model(model)
    dims = circuits[0].dims
    check_model_and_pairs(model, dims, dataset=dataset)
    masks = [c.site_masks() for c in circuits]
    has_metric = dataset.wrong_answer_tokens is not None
    # The empty circuit comes first: its metric is the floor of "recovered".
    runs = ([masks[0].zeros()] if has_metric else []) + masks
    sums = {"acc_full": 0.0, "metric_full": 0.0, "metric_empty": 0.0}
    own = [dict.fromkeys(["kl", "metric", "acc"], 0.0) for _ in circuits]
    with exclusive(model, "evaluate"), forward_layout(model):
        full_logits = reference_logits(model, dataset, batch_size)
        if not torch.isfinite(full_logits).all():
            raise UsageError(
                "the full model gives NaN or infinite logits on these pairs, so no faithfulness "
                "can be measured; check the model's weights (e.g. for NaN) and the token ids"
            )
        source = AblationSource.for_dataset(model, ablation, dataset, dims)
        for batch, rows, logits in masked_answer_batches(model, dataset, runs, source, batch_size):
            full = full_logits[rows]
            sums["acc_full"] += accuracy(full, batch.answer_tokens).item() * len(batch)
            if has_metric:
                empty, *logits = logits
                sums["metric_full"] += task_metric(full, batch).sum().item()
                sums["metric_empty"] += task_metric(empty, batch).sum().item()
            for circuit_logits, totals in zip(logits, own, strict=True):
                totals["kl"] += kl_divergence(full, circuit_logits).item() * len(batch)
                totals["acc"] += accuracy(circuit_logits, batch.answer_tokens).item() * len(batch)
                if has_metric:
                    totals["metric"] += task_metric(circuit_logits, batch).sum().item()
    n = len(dataset)
    nan = float("nan")
    full_m = sums["metric_full"] / n if has_metric else nan
    empty_m = sums["metric_empty"] / n if has_metric else nan
    return [
        Evaluation(
            kl=totals["kl"] / n,
            metric_full=full_m,
            metric_circuit=totals["metric"] / n if has_metric else nan,
            metric_empty=empty_m,
            recovered=recovered(totals["metric"] / n, full_m, empty_m) if has_metric else nan,
            accuracy_full=sums["acc_full"] / n,
            accuracy_circuit=totals["acc"] / n,
            kept={g: circuit.n_kept(g) for g in dims.available()},
            total={g: circuit.n_total(g) for g in dims.available()},
            n_pairs=n,
        )
        for circuit, totals in zip(circuits, own, strict=True)
    ]
