"""What a granularity's expected size costs in the loss: a fixed ``lambda``, or a target.

A fixed ``lambda_g`` prices the expected kept fraction of granularity ``g`` in units of the
behaviour's size, the KL of the fully ablated model (``kl_empty``): ``lambda_g = 0.5`` says
that dropping every node of ``g`` is worth half the KL the whole circuit can lose. The unit
makes one default serve tasks and models whose KL scales differ by orders of magnitude.

A target kept fraction ``t_g`` instead adds the Lagrangian term
``phi1 * (s - t) + phi2 * (s - t) ** 2``, whose multipliers rise by gradient *ascent* while the
circuit is larger than the target, so the pressure grows until the target is met (as in CoFi
and Edge Pruning). ``s`` measures what extraction will keep: the mean over nodes of
``sigmoid((log_alpha - threshold) / T)`` times the same for the node's ancestors (a node whose
parent is dropped is dropped), with the temperature ``T`` annealed from 0.5 to 0.1
over the warm-up. At ``T = 1`` (the chance that a sampled gate exceeds 0.5) a node far below the
threshold still counts (``sigmoid(-2) = 0.12``): a circuit of 6 % was priced as if it were twice
as large and landed far under its target. The target starts at 1 (everything kept) and moves
linearly to ``t_g`` over the warm-up, which lets the KL pick the important nodes before the
pressure peaks. The multipliers rise at the masks' learning rate's share of its peak, so that
they come to rest with the masks when the learning rate decays.

A fit that continues another (a rung of the size search) starts near its targets, with masks
that the KL has pushed far from the threshold. Its absolute gap is small by construction (a
few hundredths for the MLP neurons), and multipliers that rise with it stayed too low to
move those masks: halving the targets left the MLP neurons where they were. Its multipliers
rise with the gap *relative to the target* instead, so every granularity is pressed in
proportion to how far it is from its own target.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from ..core.errors import UsageError
from ..core.nodes import GRANULARITIES

DEFAULT_SPARSITY: dict[str, float] = {
    "block": 0.01,
    "head": 0.25,
    "attn_neuron": 0.5,
    "mlp": 0.01,
    "mlp_neuron": 1.0,
}
"""Default ``lambda_g``: the share of the behaviour (``kl_empty``) worth dropping every node of
a granularity."""


INITIAL_TEMPERATURE, FINAL_TEMPERATURE = 0.5, 0.1
"""Temperature of the kept-share measure at the first step and from the end of the warm-up on:
at the end a node 0.3 below the extraction threshold counts 0.05 of a node."""

MULTIPLIER_LR = 3.0
"""Gain of the multipliers' ascent per unit of gap; multipliers price in units of kl_empty."""

SMALLEST_TARGET = 1e-3
"""Below this a target counts as this much when the gap is taken relative to it."""


def check_sparsity(sparsity: Mapping[str, float], target: Mapping[str, float]) -> None:
    """Clear errors for lambdas and targets, before any work is done."""
    for name, values in (("sparsity", sparsity), ("target", target)):
        for g, value in values.items():
            if g not in GRANULARITIES:
                raise UsageError(f"{name} names unknown granularity {g!r}; use {GRANULARITIES}")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UsageError(f"{name}[{g!r}] must be a number, got {value!r}")
    for g, lam in sparsity.items():
        if not math.isfinite(lam) or lam < 0:
            raise UsageError(f"sparsity[{g!r}] must be a finite number >= 0, got {lam!r}")
    for g, t in target.items():
        if not 0 <= t <= 1:
            raise UsageError(
                f"target[{g!r}] is a kept fraction and must be in [0, 1], got {t!r} "
                "(e.g. 0.05 keeps 5 % of the nodes)"
            )
    both = sorted(set(sparsity) & set(target))
    if both:
        raise UsageError(
            f"{both} have both a sparsity lambda and a target; give each granularity one of them"
        )


class SparsityControl:
    """The sparsity term of the loss for one fit.

    Args:
        lambdas: fixed ``lambda_g`` for the granularities without a target, in units of
            ``kl_scale`` (set it to the fit's ``kl_empty``).
        targets: kept-fraction targets ``t_g``.
        warmup_steps: steps over which each target moves from its start to ``t_g``.
        start: where each target starts (default 1, every node kept). A fit that continues
            another starts from the other's targets, and its multipliers rise with the gap
            relative to the target (see the module docstring).
    """

    def __init__(
        self,
        lambdas: dict[str, float],
        targets: dict[str, float],
        warmup_steps: int,
        device: torch.device | str = "cpu",
        start: dict[str, float] | None = None,
    ):
        self.lambdas = dict(lambdas)
        self.targets = dict(targets)
        self.start = {g: (start or {}).get(g, 1.0) for g in targets}
        self.relative = start is not None
        self.kl_scale = 1.0
        self.warmup_steps = max(1, warmup_steps)
        self.multipliers = {g: torch.zeros(2, device=device) for g in targets}
        self._gaps: dict[str, Tensor] = {}

    def target_at(self, granularity: str, step: int) -> float:
        progress = min(1.0, (step + 1) / self.warmup_steps)
        start = self.start[granularity]
        return start - (start - self.targets[granularity]) * progress

    def temperature_at(self, step: int) -> float:
        """Temperature of the kept-share measure: geometric from :data:`INITIAL_TEMPERATURE`
        to :data:`FINAL_TEMPERATURE` over the warm-up, then constant."""
        progress = min(1.0, step / self.warmup_steps)
        return INITIAL_TEMPERATURE * (FINAL_TEMPERATURE / INITIAL_TEMPERATURE) ** progress

    def penalty(
        self, expected_l0: dict[str, Tensor], kept_share: dict[str, Tensor], step: int
    ) -> Tensor:
        """Sum over granularities of the cost of their size: ``lambda`` times the mean
        expected L0, or, for a target, the Lagrangian on the kept share (the soft count of
        what extraction keeps, see the module docstring)."""
        terms = []
        for g, fraction in expected_l0.items():
            if g in self.targets:
                gap = kept_share[g] - self.target_at(g, step)
                self._gaps[g] = gap.detach()
                phi = self.multipliers[g]
                terms.append(self.kl_scale * (phi[0] * gap + phi[1] * gap**2))
            else:
                terms.append(self.kl_scale * self.lambdas[g] * fraction)
        return torch.stack(terms).sum()

    def ascend(self, rate: float) -> None:
        """One gradient-ascent step on the multipliers after each optimiser step: their
        gradients are the gap (relative to the target in a continued fit) and its square, so
        a small gap moves them a little. Once the circuit is under its target the linear
        multiplier is reset to 0 (what it gathered while the size came down would otherwise
        go on pushing it far below), and the quadratic term, which never shrinks, pulls the
        size back up to the target.

        ``rate`` is the masks' learning rate as a share of its peak: the price comes to rest
        with the masks. A price that went on rising while the masks can barely move would
        only tip the nodes balanced on the threshold out, one by one, in the last steps."""
        for g, gap in self._gaps.items():
            excess = gap / max(self.targets[g], SMALLEST_TARGET) if self.relative else gap
            phi = self.multipliers[g] + rate * MULTIPLIER_LR * torch.stack([excess, excess**2])
            if gap < 0:
                phi[0] = 0.0
            self.multipliers[g] = phi
        self._gaps.clear()

    def state_dict(self) -> dict:
        return {g: phi.detach().cpu().clone() for g, phi in self.multipliers.items()}

    def load_state_dict(self, state: dict) -> None:
        for g, phi in self.multipliers.items():
            phi.copy_(state[g])

    def record(self, step: int) -> dict[str, float]:
        """Targets and multipliers now, for the training history."""
        out = {"temperature": self.temperature_at(step)} if self.targets else {}
        for g in self.targets:
            out[f"target/{g}"] = self.target_at(g, step)
            out[f"multiplier/{g}"] = self.multipliers[g][0].item()
        return out
