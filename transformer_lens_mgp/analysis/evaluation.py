"""Faithfulness of a circuit on held-out pairs.

A circuit is faithful when the model run as the circuit (every other node ablated)
predicts like the full model: low KL(full || circuit) and most of the task metric recovered
relative to the fully ablated model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..core.checks import check_positive_int
from ..core.circuit import Circuit, warn_if_other_weights
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
    progress: bool = False,
) -> list[Evaluation]:
    """:func:`evaluate` for several circuits of one model, sharing the full and empty runs
    (with ``progress``, a bar over the pairs)."""
    if not circuits:
        raise UsageError("give at least one circuit to evaluate")
    check_positive_int("batch_size", batch_size)
    ablation = ablation or circuits[0].ablation
    check_ablation(ablation)
    for circuit in circuits:
        circuit.check_model(model)
        circuit.check_roles(dataset)
    warn_if_other_weights(model, circuits)
    dims = circuits[0].dims
    check_model_and_pairs(model, dims, dataset=dataset)
    masks = [c.site_masks() for c in circuits]
    has_metric = dataset.wrong_answer_tokens is not None
    # The empty circuit comes first: its metric is the floor of "recovered".
    runs = ([masks[0].zeros()] if has_metric else []) + masks
    sums = FaithfulnessSums(len(circuits), has_metric)
    with exclusive(model, "evaluate"), forward_layout(model):
        full_logits = reference_logits(model, dataset, batch_size, progress)
        if not torch.isfinite(full_logits).all():
            raise UsageError(
                "the full model gives NaN or infinite logits on these pairs, so no faithfulness "
                "can be measured; check the model's weights (e.g. for NaN) and the token ids"
            )
        source = AblationSource.for_dataset(model, ablation, dataset, dims)
        batches = masked_answer_batches(model, dataset, runs, source, batch_size)
        bar = tqdm(total=len(dataset), desc="held-out evaluation", disable=not progress,
                   leave=False, dynamic_ncols=True)  # fmt: skip
        with bar:
            for batch, rows, logits in batches:
                empty, *logits = logits if has_metric else (None, *logits)
                sums.add_reference(full_logits[rows], empty, batch)
                for i, circuit_logits in enumerate(logits):
                    sums.add(i, full_logits[rows], circuit_logits, batch)
                bar.update(len(batch))
    kept = [{g: c.n_kept(g) for g in dims.available()} for c in circuits]
    total = [{g: c.n_total(g) for g in dims.available()} for c in circuits]
    return sums.evaluations(kept, total)


class FaithfulnessSums:
    """Running sums over batches of what an :class:`Evaluation` reports, for several circuits
    measured on the same pairs (node circuits here, edge circuits in ``edge_evaluation``)."""

    def __init__(self, n_circuits: int, has_metric: bool):
        self.has_metric = has_metric
        self.n = 0
        self.shared = dict.fromkeys(["acc_full", "metric_full", "metric_empty"], 0.0)
        self.own = [dict.fromkeys(["kl", "metric", "acc"], 0.0) for _ in range(n_circuits)]

    def add_reference(self, full: Tensor, empty: Tensor | None, batch: PairedDataset) -> None:
        """The full model's and the empty circuit's logits on ``batch`` (once per batch)."""
        self.n += len(batch)
        self.shared["acc_full"] += accuracy(full, batch.answer_tokens).item() * len(batch)
        if self.has_metric:
            self.shared["metric_full"] += task_metric(full, batch).sum().item()
            self.shared["metric_empty"] += task_metric(empty, batch).sum().item()

    def add(self, i: int, full: Tensor, logits: Tensor, batch: PairedDataset) -> None:
        """Circuit ``i``'s logits on ``batch``."""
        totals = self.own[i]
        totals["kl"] += kl_divergence(full, logits).item() * len(batch)
        totals["acc"] += accuracy(logits, batch.answer_tokens).item() * len(batch)
        if self.has_metric:
            totals["metric"] += task_metric(logits, batch).sum().item()

    def evaluations(self, kept: list[dict], total: list[dict]) -> list[Evaluation]:
        n, nan = self.n, float("nan")
        full_m = self.shared["metric_full"] / n if self.has_metric else nan
        empty_m = self.shared["metric_empty"] / n if self.has_metric else nan
        out = []
        for totals, kept_i, total_i in zip(self.own, kept, total, strict=True):
            metric = totals["metric"] / n if self.has_metric else nan
            out.append(
                Evaluation(
                    kl=totals["kl"] / n,
                    metric_full=full_m,
                    metric_circuit=metric,
                    metric_empty=empty_m,
                    recovered=recovered(metric, full_m, empty_m) if self.has_metric else nan,
                    accuracy_full=self.shared["acc_full"] / n,
                    accuracy_circuit=totals["acc"] / n,
                    kept=kept_i,
                    total=total_i,
                    n_pairs=n,
                )
            )
        return out
