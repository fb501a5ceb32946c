"""The settings of a fit: one frozen dataclass per kind of fit, on one shared base.

``FitConfig`` holds what every fit has (steps, batches, learning rate and its
:class:`Schedule`, seed, gates, bf16, checkpoints) and checks it once; ``PruningConfig``
adds what a node fit prices, ``EdgeConfig`` (in ``training.edges``) what an edge fit prices.
``PruningConfig()`` is the best setting measured (docs/results.md): it aims at a small
circuit with a controller, lets the learning rate settle, trains the extracted circuit in a
final phase with the task metric held, and uses bf16 where the device has bf16 units.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..core.checks import check_positive_int, is_finite, is_int, is_number
from ..core.errors import UsageError, UsageTypeError
from ..core.gates import HardConcrete
from ..core.hooks import check_ablation
from ..core.nodes import GRANULARITIES, ModelDims, check_granularity, resolve_granularities
from .sparsity import DEFAULT_SPARSITY, check_sparsity

MAX_SEED = 2**63 - 1

DEFAULT_TARGET: dict[str, float] = {"head": 0.09, "attn_neuron": 0.06, "mlp_neuron": 0.045}
"""Kept fractions the default aims at, each a share of all the model's nodes of that kind
(so the attention neurons' is under the heads')."""
DEFAULT_METRIC_WEIGHT = 2.0
PAIRS_PER_STEP = 8
"""The command line generates this many pairs per step (a tenth held out): each training
pair is seen about once, which keeps 46,080 neuron masks from fitting the pairs."""


def replaced(config, overrides: Mapping):
    """A copy of the frozen dataclass ``config`` with ``overrides`` (checked like the original);
    a setting it does not have is refused by name."""
    names = [f.name for f in dataclasses.fields(config)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise UsageTypeError(f"unknown setting(s) {unknown}; {type(config).__name__} has {names}")
    return dataclasses.replace(config, **overrides)


def _check_share(name: str, value) -> None:
    if not is_number(value) or not 0 <= value <= 1:
        raise UsageError(f"{name} is a share of the steps, in [0, 1]; got {value!r}")


@dataclass(frozen=True)
class Schedule:
    """How a fit's steps are shared out, each part a share of the steps.

    Args:
        warmup: the first steps, over which each kept-fraction target comes down from 1 (every
            node) to its value, so that the KL picks the important nodes before the price peaks.
        decay: the last steps, over which the learning rate falls along a half cosine to 0, so
            that the masks (and the targets' prices, which rise at the same pace) settle.
        finish: the last steps, which train the circuit extraction returns (on/off masks in
            the forward pass, a straight-through gradient) instead of Hard Concrete samples,
            with the task metric held to the full model's (``metric_weight``).
    """

    warmup: float = 0.4
    decay: float = 0.6
    finish: float = 0.3

    def __post_init__(self):
        for f in dataclasses.fields(self):
            _check_share(f"schedule.{f.name}", getattr(self, f.name))

    def start_of(self, part: str, steps: int) -> int:
        """The first step of the final ``part`` (``"decay"`` or ``"finish"``) of ``steps``."""
        return steps - round(getattr(self, part) * steps)

    def warmup_steps(self, steps: int) -> int:
        return round(self.warmup * steps)

    def lr_at(self, lr: float, steps: int, step: int) -> float:
        """``lr`` at ``step``: a function of the step alone, so a resumed run follows it."""
        start = self.start_of("decay", steps)
        if step < start:
            return lr
        return lr * 0.5 * (1 + math.cos(math.pi * (step - start + 1) / (steps - start)))

    def in_finish(self, steps: int, step: int) -> bool:
        return step >= self.start_of("finish", steps)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Faithfulness:
    """The level a circuit must meet on validation pairs for the default fit to call it
    faithful, which sets its size: easy behaviours get small circuits, hard ones larger.

    Args:
        recovered: (low, high): bounds on the logit difference the circuit recovers (checked
            only for pairs with wrong answers).
        kl: the largest KL(full || circuit) as a share of KL(full || empty circuit).
    """

    recovered: tuple[float, float] = (0.9, 1.1)
    kl: float = 0.2

    def __post_init__(self):
        low_high = self.recovered
        if (
            not isinstance(low_high, list | tuple)
            or len(low_high) != 2
            or not all(is_finite(v) for v in low_high)
            or not low_high[0] < low_high[1]
        ):
            raise UsageError(
                f"faithfulness.recovered is (low, high) with low < high, e.g. (0.9, 1.1); "
                f"got {low_high!r}"
            )
        object.__setattr__(self, "recovered", (float(low_high[0]), float(low_high[1])))
        if not is_finite(self.kl) or not 0 < self.kl <= 1:
            raise UsageError(
                f"faithfulness.kl is a share of the empty circuit's KL, in (0, 1]; got {self.kl!r}"
            )

    def met(self, kl_share: float, recovered: float | None) -> bool:
        """Whether a circuit with this KL share and recovered metric meets the level."""
        low, high = self.recovered
        return kl_share <= self.kl and (recovered is None or low <= recovered <= high)

    def to_dict(self) -> dict:
        return {"recovered": list(self.recovered), "kl": self.kl}


def _as(kind, value, name: str):
    """``value`` as a ``kind`` dataclass (a mapping is read as its fields)."""
    if isinstance(value, Mapping):
        try:
            value = kind(**value)
        except TypeError as err:
            raise UsageTypeError(
                f"{name} {dict(value)!r} is not a {kind.__name__}: {err}"
            ) from None
    if not isinstance(value, kind):
        raise UsageTypeError(f"{name} must be a {kind.__name__}, got {value!r}")
    return value


@dataclass(frozen=True)
class FitConfig:
    """What every fit (of nodes or of edges) is set by, with one set of checks.

    Args:
        steps: optimiser steps.
        batch_size: pairs per step.
        lr: Adam's learning rate on ``log_alpha``.
        schedule: how the steps are shared out (:class:`Schedule`).
        seed: seeds the mask noise, the initialisation and the batch order.
        init_log_alpha: initial ``log_alpha`` of every mask (large: it starts on).
        hard_concrete: the gate constants.
        bf16: run the model's forward passes under bfloat16 autocast (masks, loss and
            optimiser stay float32); None: where the device has bf16 units (GPUs, CPUs with
            AVX-512 BF16 or AMX), where it pays.
        checkpoint_every: with a checkpoint folder, steps between checkpoints.
    """

    steps: int = 250
    batch_size: int = 8
    lr: float = 0.1
    schedule: Schedule = field(default_factory=Schedule)
    seed: int = 0
    init_log_alpha: float = 1.0
    hard_concrete: HardConcrete = field(default_factory=HardConcrete)
    bf16: bool | None = None
    checkpoint_every: int = 50

    def __post_init__(self):
        self._set("schedule", _as(Schedule, self.schedule, "schedule"))
        self._set("hard_concrete", _as(HardConcrete, self.hard_concrete, "hard_concrete"))
        for name in ("steps", "batch_size", "checkpoint_every"):
            check_positive_int(name, getattr(self, name))
        if not is_finite(self.lr) or self.lr <= 0:
            raise UsageError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise UsageError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if not is_finite(self.init_log_alpha):
            raise UsageError(f"init_log_alpha must be finite, got {self.init_log_alpha!r}")
        if self.bf16 is not None and not isinstance(self.bf16, bool):
            raise UsageTypeError(f"bf16 is True, False or None (auto), got {self.bf16!r}")

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)

    def replace(self, **overrides):
        """A copy with some settings changed (checked like the original)."""
        return replaced(self, overrides)

    def learning_rate(self, step: int) -> float:
        return self.schedule.lr_at(self.lr, self.steps, step)

    def in_finish(self, step: int) -> bool:
        """Whether ``step`` is in the final phase (``schedule.finish``)."""
        return self.schedule.in_finish(self.steps, step)

    def with_device(self, device) -> FitConfig:
        """The settings with ``bf16`` decided for ``device``."""
        return self if self.bf16 is not None else self.replace(bf16=has_bf16(device))

    def to_dict(self) -> dict:
        """JSON-able settings; ``from_dict`` reads them back."""
        out = dataclasses.asdict(self)
        out["schedule"] = self.schedule.to_dict()
        out["hard_concrete"] = self.hard_concrete.to_dict()
        return out

    @classmethod
    def from_dict(cls, values: Mapping):
        if not isinstance(values, Mapping):
            raise UsageTypeError(f"{cls.__name__}.from_dict takes a mapping, got {values!r}")
        return cls().replace(**dict(values))


@dataclass(frozen=True)
class PruningConfig(FitConfig):
    """How to train the node masks of one circuit (besides :class:`FitConfig`'s settings).

    Args:
        granularities: which of ``block, head, attn_neuron, mlp, mlp_neuron`` to prune;
            default (None): every one the model has.
        target: ``{granularity: kept fraction}``: a Lagrangian whose multipliers grow until
            the extracted circuit keeps that share of the granularity's nodes (reached by the
            end of the warm-up) and then hold it there. None: :data:`DEFAULT_TARGET` for the
            granularities pruned, unless ``sparsity`` or ``max_kl`` sets the size instead.
        sparsity: ``{granularity: lambda}``: a fixed price instead of a target, ``lambda``
            times the expected kept fraction in units of the empty circuit's KL; granularities
            in neither ``sparsity`` nor ``target`` take :data:`DEFAULT_SPARSITY`.
        faithfulness: with the default targets, the level (:class:`Faithfulness`) the
            circuit must meet on validation pairs: after the fit at the targets, further
            shorter fits continue from its masks at half (or, if it falls short, twice) the
            targets, and the smallest circuit that meets the level is returned. None, or a
            ``target``, ``sparsity`` or ``max_kl`` given: one fit at that size.
        max_kl: instead of a size, a budget in nats: one scale on every ``lambda`` rises while
            the training KL is under ``max_kl`` and falls while it is over, and the fit
            returns the smallest circuit seen whose KL on held-out pairs is within it.
        eval_every: with ``max_kl``, steps between held-out measurements (default: a tenth
            of the steps).
        ablation: what a pruned node outputs: ``"corrupted"`` (its activation on the corrupted
            prompt), ``"mean"`` (its mean over corrupted prompts) or ``"zero"``.
        metric_weight: weight of the task metric's squared gap to the full model's (per
            pair, in units of the empty circuit's gap), added to the KL over the final phase
            (every step when the schedule has none). The KL alone lets a circuit drop the
            nodes that argue against the answer, so its logit difference overshoots the
            model's. None: 2 where the pairs have wrong answers (every built-in task's do),
            else 0.
        gradient_checkpointing: keep only each block's input during the masked forward and
            rerun the block in the backward pass: much less memory for about one more
            forward of time. The circuit is the same.
        per_role: one mask per node and token role the pairs record (e.g. IOI's IO, S1,
            S1+1, S2, END) and one for every other position, trained in the same run; the
            targets are then shares of (node, position) pairs. Needs pairs with roles.
    """

    granularities: tuple[str, ...] | None = None
    target: Mapping[str, float] | None = None
    sparsity: Mapping[str, float] = field(default_factory=dict)
    faithfulness: Faithfulness | None = field(default_factory=Faithfulness)
    max_kl: float | None = None
    eval_every: int | None = None
    ablation: str = "corrupted"
    metric_weight: float | None = None
    gradient_checkpointing: bool = False
    per_role: bool = False

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.per_role, bool):
            raise UsageTypeError(f"per_role is True or False, got {self.per_role!r}")
        if self.granularities is not None:
            names = self.granularities
            names = (names,) if isinstance(names, str) else names
            if not isinstance(names, list | tuple):
                raise UsageTypeError(
                    f"granularities is a list of names from {GRANULARITIES}, got {names!r}"
                )
            if not names:
                raise UsageError(f"choose at least one granularity from {GRANULARITIES}")
            for name in names:
                check_granularity(name)
            self._set("granularities", tuple(g for g in GRANULARITIES if g in names))
        for name in ("sparsity", "target"):
            value = getattr(self, name)
            if value is None and name == "target":
                continue
            if not isinstance(value, Mapping):
                raise UsageTypeError(
                    f"{name} is a {{granularity: number}} mapping, e.g. {{'mlp_neuron': 0.05}}; "
                    f"got {value!r}"
                )
            self._set(name, dict(value))
        check_sparsity(self.sparsity, self.target or {})
        if self.faithfulness is not None:
            self._set("faithfulness", _as(Faithfulness, self.faithfulness, "faithfulness"))
        check_ablation(self.ablation)
        if self.metric_weight is not None and (
            not is_finite(self.metric_weight) or self.metric_weight < 0
        ):
            raise UsageError(
                f"metric_weight must be a finite number >= 0, got {self.metric_weight!r}"
            )
        if not isinstance(self.gradient_checkpointing, bool):
            raise UsageTypeError(
                f"gradient_checkpointing is True or False, got {self.gradient_checkpointing!r}"
            )
        self._check_budget()

    def _check_budget(self) -> None:
        if self.max_kl is None:
            if self.eval_every is not None:
                raise UsageError(
                    "eval_every spaces the held-out measurements of a KL budget; set max_kl too"
                )
            return
        if not is_finite(self.max_kl) or self.max_kl <= 0:
            raise UsageError(f"max_kl must be a finite number > 0 (nats), got {self.max_kl!r}")
        if self.target:
            raise UsageError(
                f"max_kl chooses the circuit's size, target fixes it ({sorted(self.target)}); "
                "give one of them"
            )
        if self.eval_every is not None:
            check_positive_int("eval_every", self.eval_every)

    def resolved(self, dims: ModelDims, device="cpu", has_wrong_answers: bool = True):
        """The settings made explicit for one model on ``device`` and its pairs: the
        granularities, the targets or a lambda for every untargeted one, ``eval_every``
        under a budget, bf16 and the metric weight."""
        granularities = resolve_granularities(
            self.granularities if self.granularities is not None else dims.available(), dims
        )
        target, faithfulness = self.target, None
        if target is None:
            sized = self.sparsity or self.max_kl is not None
            target = (
                {} if sized else {g: t for g, t in DEFAULT_TARGET.items() if g in granularities}
            )
            faithfulness = None if sized else self.faithfulness
        untrained = sorted(set(target) - set(granularities))
        if untrained:
            raise UsageError(
                f"target names {untrained}, which this fit does not prune (granularities "
                f"{list(granularities)}); add them to granularities or drop their targets"
            )
        sparsity = {
            g: self.sparsity.get(g, DEFAULT_SPARSITY[g]) for g in granularities if g not in target
        }
        eval_every = self.eval_every
        if self.max_kl is not None and eval_every is None:
            eval_every = max(1, self.steps // 10)
        metric_weight = self.metric_weight
        if metric_weight is None:
            metric_weight = DEFAULT_METRIC_WEIGHT if has_wrong_answers else 0.0
        return dataclasses.replace(
            self.with_device(device),
            granularities=granularities,
            target=target,
            sparsity=sparsity,
            faithfulness=faithfulness,
            eval_every=eval_every,
            metric_weight=metric_weight,
        )

    def prices_metric(self, step: int) -> bool:
        """Whether ``step`` adds the metric term: in the final phase, or every step when the
        schedule has none."""
        return bool(self.metric_weight) and (not self.schedule.finish or self.in_finish(step))

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["granularities"] = None if self.granularities is None else list(self.granularities)
        if self.faithfulness is not None:
            out["faithfulness"] = self.faithfulness.to_dict()
        return out

    def sizes_by_faithfulness(self) -> bool:
        """Whether the fit searches the size (resolved settings: the default targets)."""
        return self.faithfulness is not None and bool(self.target)


def has_bf16(device="cpu") -> bool:
    """Whether ``device`` computes in bfloat16 natively (CUDA with bf16, or a CPU whose oneDNN
    build reports bf16 support, e.g. AVX-512 BF16 or AMX)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False
