"""A KL budget instead of a size: the smallest circuit whose held-out KL stays within it.

Two parts. During training, one scale multiplies every ``lambda``: its logarithm rises while
the step's KL is under the budget and falls while it is over (gradient ascent on the
constraint ``KL <= max_kl``, in log space so one gain serves budgets of any size). Every few
steps the circuit as extracted so far is measured on held-out pairs; the fit returns the
smallest such snapshot whose held-out KL is within budget, because the training KL (masks
sampled, pairs seen) is not the number the budget is about.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

BUDGET_LR = 0.05
"""Change of the log scale per step per unit of relative KL gap: ``e`` per 20 steps at most."""
LOG_SCALE_RANGE = (-8.0, 8.0)
"""The scale stays within ``e**-8 .. e**8`` of the given lambdas."""
VALIDATION_SHARE = 0.2
"""Share of the pairs held out to measure the KL of snapshots, when no validation set is given."""


@dataclass
class Snapshot:
    """One measured circuit of the fit: its step, held-out KL and size."""

    step: int
    kl: float
    size: float
    log_alpha: dict[str, torch.Tensor] = field(repr=False)


class KLBudget:
    """The scale on the sparsity penalty and the snapshots it produced.

    Args:
        max_kl: the largest held-out KL(full || circuit) accepted, in nats.
    """

    def __init__(self, max_kl: float):
        self.max_kl = max_kl
        self.log_scale = 0.0
        self.snapshots: list[Snapshot] = []

    @property
    def scale(self) -> float:
        return math.exp(self.log_scale)

    def update(self, kl: float) -> None:
        """One ascent step on the constraint after an optimiser step."""
        gap = (self.max_kl - kl) / self.max_kl
        low, high = LOG_SCALE_RANGE
        self.log_scale = min(high, max(low, self.log_scale + BUDGET_LR * max(-1.0, gap)))

    def record(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)

    def best(self) -> Snapshot | None:
        """The smallest snapshot within budget (latest on ties), None if none is."""
        within = [s for s in self.snapshots if s.kl <= self.max_kl]
        return min(reversed(within), key=lambda s: s.size) if within else None

    def most_faithful(self) -> Snapshot:
        return min(self.snapshots, key=lambda s: s.kl)

    def state_dict(self) -> dict:
        return {
            "log_scale": self.log_scale,
            "snapshots": [
                {"step": s.step, "kl": s.kl, "size": s.size, "log_alpha": s.log_alpha}
                for s in self.snapshots
            ],
        }

    def load_state_dict(self, state: dict) -> None:
        self.log_scale = float(state["log_scale"])
        self.snapshots = [Snapshot(**s) for s in state["snapshots"]]


def check_max_kl(max_kl: float | None, target: dict) -> None:
    if max_kl is None:
        return
    if isinstance(max_kl, bool) or not isinstance(max_kl, int | float):
        raise ValueError(f"max_kl must be a number of nats, got {max_kl!r}")
    if not math.isfinite(max_kl) or max_kl <= 0:
        raise ValueError(f"max_kl must be a finite number > 0 (nats), got {max_kl!r}")
    if target:
        raise ValueError(
            f"max_kl chooses the circuit's size, target fixes it ({sorted(target)}); "
            "give one of them"
        )


def split_validation(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint (train, validation) indices, the validation part ``VALIDATION_SHARE`` of ``n``."""
    if n < 2:
        raise ValueError(
            f"max_kl holds out pairs to measure the KL of candidate circuits, but the dataset "
            f"has {n} pair(s); give more pairs or a validation dataset (fit(validation=...))"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = min(n - 1, max(1, round(VALIDATION_SHARE * n)))
    return order[n_val:].sort().values, order[:n_val].sort().values
