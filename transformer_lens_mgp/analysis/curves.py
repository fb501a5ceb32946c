"""Faithfulness against circuit size: one circuit's nodes added in order of score, and the
areas of MIB's circuit track (CPR, CMD) over a curve or over a sweep's circuits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..core.circuit import Circuit
from ..core.data import PairedDataset
from ..core.errors import UsageError
from .evaluation import Evaluation, evaluate_many
from .subcircuits import top_fraction

MIB_FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""Circuit sizes (kept fraction per granularity) of the MIB circuit track."""


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class ParetoAreas:
    """MIB's areas over a sweep's circuits, sizes running from the empty circuit
    (faithfulness 0 by definition) to the full model (1 by definition).

    Args:
        cpr: area under faithfulness against size (higher is better).
        cmd: area under ``|1 - faithfulness|`` (lower is better).
        sizes: the sizes, endpoints included.
        faithfulness: the faithfulness at each size.
    """

    cpr: float
    cmd: float
    sizes: list[float]
    faithfulness: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SweepPoint:
    """One point of a sweep: the target it was fitted for, its circuit and, with held-out
    pairs, its evaluation on them."""

    target: Mapping[str, float]
    circuit: Circuit
    evaluation: Evaluation | None = None

    def numbers(self) -> dict:
        """The held-out KL, recovered metric and accuracy (empty when not measured)."""
        e = self.evaluation
        if e is None:
            return {}
        return {
            "kl": e.kl,
            "recovered": e.recovered,
            "accuracy": e.accuracy_circuit,
            "n_validation": e.n_pairs,
        }


def _areas(x: Sequence[float], f: Sequence[float]) -> tuple[float, float]:
    """(CPR, CMD): the areas under ``f`` and under ``|1 - f|`` over ``x``."""
    x, f = np.asarray(x, dtype=float), np.asarray(f, dtype=float)
    return float(np.trapezoid(f, x)), float(np.trapezoid(np.abs(1 - f), x))


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
        raise UsageError(
            "faithfulness needs a task metric: build the dataset with wrong answers "
            "(wrong_answer_tokens=...), as every built-in task does"
        )
    fractions = sorted(float(f) for f in fractions)
    if len(fractions) < 2:
        raise UsageError("give at least two fractions to draw a curve")
    circuits = [top_fraction(circuit, f) for f in fractions]
    results = evaluate_many(model, circuits, dataset, batch_size=batch_size, ablation=ablation)
    faithfulness = [r.recovered for r in results]
    cpr, cmd = _areas(fractions, faithfulness)
    return FaithfulnessCurve(
        fractions=fractions,
        faithfulness=faithfulness,
        kl=[r.kl for r in results],
        kept=[r.kept for r in results],
        cpr=cpr,
        cmd=cmd,
    )


def pareto_areas(points: Sequence[SweepPoint]) -> ParetoAreas:
    """CPR and CMD over the sweep points' sizes (:meth:`Circuit.size`) and the metric each
    recovered on held-out pairs (:func:`~transformer_lens_mgp.sweep` with ``validation``)."""
    if not points:
        raise UsageError("pareto_areas needs at least one sweep point (a measured circuit)")
    missing = [i for i, p in enumerate(points) if p.evaluation is None]
    if missing:
        raise UsageError(
            f"sweep points {missing} have no measured faithfulness; run "
            "sweep(..., validation=...) or give each point an evaluate() result"
        )
    measured = sorted((p.circuit.size(), p.evaluation.recovered) for p in points)
    sizes = [0.0] + [s for s, _ in measured] + [1.0]
    faithfulness = [0.0] + [f for _, f in measured] + [1.0]
    cpr, cmd = _areas(sizes, faithfulness)
    return ParetoAreas(cpr=cpr, cmd=cmd, sizes=sizes, faithfulness=faithfulness)
