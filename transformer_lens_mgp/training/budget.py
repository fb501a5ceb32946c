"""A KL budget instead of a size: the smallest circuit whose held-out KL stays within it.

Two parts. During training, one scale multiplies every ``lambda``: it starts at 1 and, after
the first quarter of the steps, its logarithm rises while the step's KL is under its aim and
falls while it is over (gradient ascent on the constraint, in log space so that one gain
serves budgets of any size). The KL it steers is the training one, so it aims under the
budget by the excess of held-out over training KL measured at the last snapshot. Every few
steps the circuit as extracted so far is measured on held-out pairs, and the fit returns the
smallest such snapshot whose held-out KL is within budget: the training KL (masks sampled,
pairs seen) is not the number the budget is about.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..core.errors import UsageError

BUDGET_LR = 0.03
"""Change of the log scale per step per unit of relative KL gap: at most ``e`` per 33 steps."""
LOG_SCALE_RANGE = (-8.0, 8.0)
"""The scale stays within ``e**-8 .. e**8`` of the given lambdas."""
HOLD_SHARE = 0.25
"""Share of the steps during which the scale stays at 1: the first steps prune before the KL
has told the masks apart, and a scale reacting to that passing KL would drop the price far
too low (masks then grow back slowly, and a price raised late meets saturated gates)."""
MIN_AIM = 0.25
"""The training KL aimed at never drops under this share of the budget."""
VALIDATION_SHARE = 0.2
"""Share of the pairs held out to measure candidate circuits, when no validation set is given."""
MAX_VALIDATION = 256
"""At most this many pairs are held out: enough to measure a circuit, the rest train."""


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
        hold_steps: steps before the scale starts to move.
    """

    def __init__(self, max_kl: float, hold_steps: int = 0):
        self.max_kl = max_kl
        self.hold_steps = hold_steps
        self.log_scale = 0.0
        self.generalisation_gap = 0.0
        self.recent: list[float] = []
        self.snapshots: list[Snapshot] = []

    @property
    def scale(self) -> float:
        return math.exp(self.log_scale)

    @property
    def aim(self) -> float:
        """The training KL the scale steers to: the budget less the last measured excess of
        held-out over training KL (the masks partly fit their pairs), at least a quarter of it."""
        return max(MIN_AIM * self.max_kl, self.max_kl - self.generalisation_gap)

    def update(self, kl: float, step: int) -> None:
        """One ascent step on the constraint after optimiser step ``step``."""
        self.recent.append(kl)
        if step < self.hold_steps:
            return
        gap = (self.aim - kl) / self.aim
        low, high = LOG_SCALE_RANGE
        self.log_scale = min(high, max(low, self.log_scale + BUDGET_LR * max(-1.0, gap)))

    def record(self, snapshot: Snapshot) -> None:
        """A measured circuit; its held-out KL against the training KL of the steps since the
        last one updates the generalisation gap."""
        self.snapshots.append(snapshot)
        if self.recent:
            training = sum(self.recent) / len(self.recent)
            self.generalisation_gap = max(0.0, snapshot.kl - training)
        self.recent = []

    def best(self) -> Snapshot | None:
        """The smallest snapshot within budget (latest on ties), None if none is."""
        within = [s for s in self.snapshots if s.kl <= self.max_kl]
        return min(reversed(within), key=lambda s: s.size) if within else None

    def most_faithful(self) -> Snapshot:
        return min(self.snapshots, key=lambda s: s.kl)

    def state_dict(self) -> dict:
        return {
            "log_scale": self.log_scale,
            "generalisation_gap": self.generalisation_gap,
            "recent": list(self.recent),
            "snapshots": [
                {"step": s.step, "kl": s.kl, "size": s.size, "log_alpha": s.log_alpha}
                for s in self.snapshots
            ],
        }

    def load_state_dict(self, state: dict) -> None:
        self.log_scale = float(state["log_scale"])
        self.generalisation_gap = float(state["generalisation_gap"])
        self.recent = [float(k) for k in state["recent"]]
        self.snapshots = [Snapshot(**s) for s in state["snapshots"]]


def split_validation(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint (train, validation) indices, the validation part ``VALIDATION_SHARE`` of ``n``
    (at most ``MAX_VALIDATION``)."""
    if n < 2:
        raise UsageError(
            f"choosing the circuit's size holds out pairs to measure candidate circuits, but the "
            f"dataset has {n} pair(s); give more pairs, a validation dataset "
            "(fit(validation=...)) or a fixed size (target=...)"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = min(n - 1, MAX_VALIDATION, max(1, round(VALIDATION_SHARE * n)))
    return order[n_val:].sort().values, order[:n_val].sort().values
