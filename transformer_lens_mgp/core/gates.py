"""Hard Concrete gates (Louizos, Welling & Kingma 2018): one learnable ``log_alpha`` per node.

The stretched-and-clamped distribution puts real probability mass on exactly 0 and exactly
1, so training explores discrete on/off choices while staying differentiable, and the
expected number of non-zero gates has a closed form used as the L0 penalty.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from .errors import UsageError


@dataclass(frozen=True)
class HardConcrete:
    """Constants of the distribution (the values every peer uses).

    Args:
        beta: temperature; lower is closer to a Bernoulli.
        gamma: left end of the stretch interval (< 0).
        zeta: right end of the stretch interval (> 1).
    """

    beta: float = 2 / 3
    gamma: float = -0.1
    zeta: float = 1.1

    def __post_init__(self):
        values = (self.beta, self.gamma, self.zeta)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise UsageError(f"Hard Concrete's beta, gamma and zeta are numbers; got {self}")
        if not (self.beta > 0 and self.gamma < 0 and self.zeta > 1):
            raise UsageError(f"Hard Concrete needs beta > 0, gamma < 0 < 1 < zeta; got {self}")

    def sample(
        self, log_alpha: Float[Tensor, "*nodes"], generator: torch.Generator | None = None
    ) -> Float[Tensor, "*nodes"]:
        """A reparameterised training-time sample in [0, 1], differentiable in ``log_alpha``."""
        eps = torch.finfo(log_alpha.dtype).eps
        u = torch.rand(
            log_alpha.shape, generator=generator, device=log_alpha.device, dtype=log_alpha.dtype
        ).clamp(eps, 1 - eps)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / self.beta)
        return self._stretch(s)

    def deterministic(self, log_alpha: Float[Tensor, "*nodes"]) -> Float[Tensor, "*nodes"]:
        """The evaluation-time mask: the stretched median of the distribution."""
        return self._stretch(torch.sigmoid(log_alpha))

    def expected_l0(self, log_alpha: Float[Tensor, "*nodes"]) -> Float[Tensor, "*nodes"]:
        """P(gate != 0) per node; its sum is the expected number of kept nodes."""
        return torch.sigmoid(log_alpha - self.beta * math.log(-self.gamma / self.zeta))

    def kept_softly(
        self, log_alpha: Float[Tensor, "*nodes"], temperature: float = 1.0
    ) -> Float[Tensor, "*nodes"]:
        """A differentiable stand-in for the rule that extracts circuits (keep a node when
        ``log_alpha > keep_threshold``): ``sigmoid((log_alpha - keep_threshold) / T)``. At
        ``T = 1`` (and the default constants) it is the chance that a sampled gate exceeds
        0.5; as ``T`` falls it tends to the rule itself, so its mean tends to the kept
        fraction of the extracted circuit."""
        return torch.sigmoid((log_alpha - self.keep_threshold) / temperature)

    def kept_straight_through(self, log_alpha: Float[Tensor, "*nodes"]) -> Float[Tensor, "*nodes"]:
        """The extraction rule's binary mask (1 where ``log_alpha > keep_threshold``) in the
        forward pass, with the gradient of :meth:`kept_softly` at ``T = 1``: trains the very
        circuit that extraction will return, while every node can still move."""
        soft = self.kept_softly(log_alpha)
        hard = (log_alpha > self.keep_threshold).to(log_alpha.dtype)
        return hard + soft - soft.detach()

    @property
    def keep_threshold(self) -> float:
        """``log_alpha`` above which the deterministic mask exceeds 0.5."""
        return math.log((0.5 - self.gamma) / (self.zeta - 0.5))

    def _stretch(self, s: Tensor) -> Tensor:
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def to_dict(self) -> dict:
        return asdict(self)
