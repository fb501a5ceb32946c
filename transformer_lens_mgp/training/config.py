"""PruningConfig: every setting of one fit, checked once, recorded with the circuit."""

from __future__ import annotations

import dataclasses
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

SMALL_CIRCUIT_TARGETS: dict[str, float] = {"head": 0.09, "attn_neuron": 0.06, "mlp_neuron": 0.045}
"""Kept-fraction targets of the presets (each a share of all the model's nodes of that kind, so
the attention neurons' is under the heads'). On IOI with SmolLM2 the small preset ends at
9.3 % of heads, 5.9 % of attention neurons and 4.4 % of MLP neurons (docs/results.md)."""

SMALL_CIRCUIT_STEPS = 250
SMALL_CIRCUIT_HARD_FINISH = 0.3
"""The small preset's last 30 % of steps train the extracted circuit itself: on SmolLM2 it
lowered the held-out KL on all three tasks (IOI 0.543 to 0.420, Gendered Pronouns 0.165 to
0.145, Greater-Than 0.170 to 0.066) and brought the recovered logit difference closer to 1
(docs/results.md)."""
SMALL_CIRCUIT_METRIC_WEIGHT, SMALL_CIRCUIT_METRIC_SHARE = 2.0, SMALL_CIRCUIT_HARD_FINISH
"""Over the same final phase the small preset holds each pair's logit difference to the full
model's: the KL alone lets the circuit drop the nodes that argue against the answer (IOI
recovered 1.35). Priced only in that phase, the earlier steps choose the nodes by the KL
alone: on IOI recovery falls to 1.12 at KL 0.462 with every count settled (seeds 1 and 2:
1.03 and 1.12; priced over every step: 1.16 at KL 0.521, the MLP neurons still moving by
4.8 %; docs/results.md)."""
THOROUGH_STEPS, THOROUGH_PAIRS = 1000, 8000


def replaced(config, overrides: Mapping):
    """A copy of the frozen dataclass ``config`` with ``overrides`` (checked like the original);
    a setting it does not have is refused by name."""
    names = [f.name for f in dataclasses.fields(config)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise UsageTypeError(f"unknown setting(s) {unknown}; {type(config).__name__} has {names}")
    return dataclasses.replace(config, **overrides)


@dataclass(frozen=True)
class PruningConfig:
    """How to train the masks of one circuit.

    Args:
        granularities: which of ``block, head, attn_neuron, mlp, mlp_neuron`` to prune;
            default (None): every one the model has.
        sparsity: ``{granularity: lambda}``; the penalty is ``lambda`` times the expected
            fraction of that granularity's nodes kept, in units of the empty circuit's KL.
            Granularities in neither ``sparsity`` nor ``target`` take :data:`DEFAULT_SPARSITY`.
        target: ``{granularity: kept fraction}``, e.g. ``{"mlp_neuron": 0.05}``: instead of a
            fixed ``lambda``, a Lagrangian whose multipliers grow until the expected kept
            fraction meets the target (reached by the end of the warm-up).
        target_warmup: share of the steps over which each target moves from 1 to its value.
        max_kl: instead of a size, a budget in nats: one scale on every ``lambda`` rises while
            the training KL is under ``max_kl`` and falls while it is over, and the fit
            returns the smallest circuit seen whose KL on held-out pairs is within it.
        eval_every: with ``max_kl``, steps between held-out measurements (default: a tenth
            of the steps).
        ablation: what a pruned node outputs: ``"corrupted"`` (its activation on the corrupted
            prompt, the default), ``"mean"`` (its mean over corrupted prompts) or ``"zero"``.
        steps: optimiser steps.
        batch_size: pairs per step.
        lr: Adam's learning rate on ``log_alpha``.
        lr_decay: share of the steps, at the end, over which the learning rate falls along a
            half cosine from ``lr`` to 0, so that the masks settle (0: constant).
        hard_finish: share of the steps, at the end, that train the circuit extraction
            would return: binary masks (kept or dropped) in the forward pass instead of
            Hard Concrete samples, with a straight-through gradient (0: none).
        seed: seeds the mask noise, the initialisation and the batch order.
        init_log_alpha: initial ``log_alpha`` of every node. At 1 every mask starts on (its
            deterministic value is 0.78) while the penalty's gradient is not yet saturated.
        hard_concrete: the gate constants.
        gradient_checkpointing: keep only each block's input during the masked forward and
            rerun the block in the backward pass: much less memory for about one more
            forward of time. The circuit is the same.
        bf16: run the model's forward passes under ``torch.autocast`` in bfloat16 (masks,
            KL and optimiser stay float32). It pays where there are bf16 units (GPUs, CPUs
            with AVX-512 BF16 or AMX) and can be slower elsewhere; the circuit can differ
            slightly from a float32 fit.
        checkpoint_every: with a checkpoint folder, steps between checkpoints.
        metric_weight: weight of the task metric's squared gap (the circuit's logit or
            probability difference minus the full model's, per pair, in units of the full
            model's minus the empty circuit's) added to the KL. KL alone lets a circuit drop
            the nodes that argue against the answer, so its logit difference overshoots the
            full model's; this term holds it to the full model's. Needs pairs with wrong
            answers.
        metric_share: share of the steps, at the end, in which the metric term is added
            (1: every step). With ``hard_finish``, setting it to the same share holds the
            returned circuit's metric while the earlier steps choose nodes by the KL alone.
    """

    granularities: tuple[str, ...] | None = None
    sparsity: Mapping[str, float] = field(default_factory=dict)
    target: Mapping[str, float] = field(default_factory=dict)
    target_warmup: float = 0.5
    max_kl: float | None = None
    eval_every: int | None = None
    ablation: str = "corrupted"
    steps: int = 200
    batch_size: int = 8
    lr: float = 0.1
    lr_decay: float = 0.0
    hard_finish: float = 0.0
    seed: int = 0
    init_log_alpha: float = 1.0
    hard_concrete: HardConcrete = field(default_factory=HardConcrete)
    gradient_checkpointing: bool = False
    bf16: bool = False
    checkpoint_every: int = 50
    metric_weight: float = 0.0
    metric_share: float = 1.0

    def __post_init__(self):
        if self.granularities is not None:
            names = self.granularities
            names = (names,) if isinstance(names, str) else tuple(names)
            if not names:
                raise UsageError(f"choose at least one granularity from {GRANULARITIES}")
            for name in names:
                check_granularity(name)
            self._set("granularities", tuple(g for g in GRANULARITIES if g in names))
        for name in ("sparsity", "target"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise UsageTypeError(
                    f"{name} is a {{granularity: number}} mapping, e.g. {{'mlp_neuron': 0.05}}; "
                    f"got {value!r}"
                )
            self._set(name, dict(value))
        check_sparsity(self.sparsity, self.target)
        if isinstance(self.hard_concrete, Mapping):
            self._set("hard_concrete", HardConcrete(**self.hard_concrete))
        if not isinstance(self.hard_concrete, HardConcrete):
            raise UsageTypeError(
                f"hard_concrete must be a HardConcrete, got {self.hard_concrete!r}"
            )
        check_ablation(self.ablation)
        for name in ("steps", "batch_size", "checkpoint_every"):
            check_positive_int(name, getattr(self, name))
        if not is_finite(self.lr) or self.lr <= 0:
            raise UsageError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise UsageError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if not is_finite(self.init_log_alpha):
            raise UsageError(f"init_log_alpha must be finite, got {self.init_log_alpha!r}")
        if not is_finite(self.metric_weight) or self.metric_weight < 0:
            raise UsageError(
                f"metric_weight must be a finite number >= 0, got {self.metric_weight!r}"
            )
        for name in ("target_warmup", "lr_decay", "hard_finish", "metric_share"):
            value = getattr(self, name)
            if not is_number(value) or not 0 <= value <= 1:
                raise UsageError(f"{name} is a share of the steps, in [0, 1]; got {value!r}")
        for name in ("gradient_checkpointing", "bf16"):
            if not isinstance(getattr(self, name), bool):
                raise UsageTypeError(f"{name} is True or False, got {getattr(self, name)!r}")
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

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)

    def replace(self, **overrides) -> PruningConfig:
        """A copy with some settings changed (checked like the original)."""
        return replaced(self, overrides)

    def resolved(self, dims: ModelDims) -> PruningConfig:
        """The settings made explicit for one model: its granularities, a lambda for every
        untargeted one, and ``eval_every`` under a budget."""
        granularities = resolve_granularities(
            self.granularities if self.granularities is not None else dims.available(), dims
        )
        untrained = sorted(set(self.target) - set(granularities))
        if untrained:
            raise UsageError(
                f"target names {untrained}, which this fit does not prune (granularities "
                f"{list(granularities)}); add them to granularities or drop their targets"
            )
        sparsity = {
            g: self.sparsity.get(g, DEFAULT_SPARSITY[g])
            for g in granularities
            if g not in self.target
        }
        eval_every = self.eval_every
        if self.max_kl is not None and eval_every is None:
            eval_every = max(1, self.steps // 10)
        return dataclasses.replace(
            self, granularities=granularities, sparsity=sparsity, eval_every=eval_every
        )

    def to_dict(self) -> dict:
        """JSON-able settings; ``from_dict`` reads them back."""
        out = dataclasses.asdict(self)
        out["granularities"] = None if self.granularities is None else list(self.granularities)
        out["hard_concrete"] = self.hard_concrete.to_dict()
        return out

    @classmethod
    def from_dict(cls, values: Mapping) -> PruningConfig:
        return cls().replace(**dict(values))


@dataclass(frozen=True)
class Preset:
    """A named setting of ``tl-mgp discover``: kept-fraction targets, steps and how many
    pairs to generate (a tenth held out), with bfloat16 autocast where the device has it.

    Args:
        name: what ``--preset`` calls it.
        target: ``{granularity: kept fraction}``.
        steps: optimiser steps.
        n_pairs: pairs the task builder generates (they are free, and more of them keep
            46,080 neuron masks from fitting the training pairs).
        test_fraction: share of the pairs held out for evaluation.
        target_warmup: share of the steps over which the targets come down.
        lr_decay: share of the steps, at the end, over which the learning rate falls to 0.
        hard_finish: share of the steps, at the end, that train the extracted circuit's
            on/off masks instead of Hard Concrete samples.
        metric_weight: weight of the logit-difference gap to the full model (needs pairs
            with wrong answers; every built-in task has them).
        metric_share: share of the steps, at the end, in which that term is added.
    """

    name: str
    target: Mapping[str, float]
    steps: int
    n_pairs: int = 2000
    test_fraction: float = 0.1
    target_warmup: float = 0.4
    lr_decay: float = 0.6
    hard_finish: float = 0.0
    metric_weight: float = 0.0
    metric_share: float = 1.0

    def settings(self, device="cpu", dims: ModelDims | None = None) -> dict:
        """The preset's ``PruningConfig`` settings for a model on ``device``; with ``dims``,
        targets of granularities the model lacks (an attention-only model's MLP neurons) are
        left out."""
        target = {g: t for g, t in self.target.items() if dims is None or g in dims.available()}
        return dict(
            target=target,
            steps=self.steps,
            target_warmup=self.target_warmup,
            lr_decay=self.lr_decay,
            hard_finish=self.hard_finish,
            metric_weight=self.metric_weight,
            metric_share=self.metric_share,
            bf16=has_bf16(device),
        )

    def config(self, device="cpu", dims: ModelDims | None = None, **overrides) -> PruningConfig:
        """The fit's settings (see :meth:`settings`), with ``overrides``."""
        return PruningConfig(**{**self.settings(device, dims), **overrides})


PRESETS: dict[str, Preset] = {
    "small": Preset(
        "small",
        target=SMALL_CIRCUIT_TARGETS,
        steps=SMALL_CIRCUIT_STEPS,
        hard_finish=SMALL_CIRCUIT_HARD_FINISH,
        metric_weight=SMALL_CIRCUIT_METRIC_WEIGHT,
        metric_share=SMALL_CIRCUIT_METRIC_SHARE,
    ),
    "thorough": Preset(
        "thorough", target=SMALL_CIRCUIT_TARGETS, steps=THOROUGH_STEPS, n_pairs=THOROUGH_PAIRS
    ),
}
"""``small``: the default of ``tl-mgp discover``, a few minutes on a laptop CPU; ``thorough``:
the same targets with four times the steps and pairs, for a GPU or an afternoon (measured
before the hard finish and the metric term, which it leaves off)."""


def small_circuit(device="cpu", dims: ModelDims | None = None, **overrides) -> PruningConfig:
    """The setting ``tl-mgp discover`` uses unless told a size (``PRESETS["small"]``)."""
    return PRESETS["small"].config(device, dims, **overrides)


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
