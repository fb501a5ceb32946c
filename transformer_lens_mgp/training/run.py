"""One fit in progress: the masks, their optimiser, the sparsity price and the KL budget.

``PruningRun.step()`` is one optimiser step; every stateful part has ``state_dict`` /
``load_state_dict`` and the run saves them as one unit, so a checkpoint is "save the run" and
a resumed run replays exactly what an uninterrupted one would have done (the batches and the
gate noise of a step are functions of the seed and the step alone).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from ..core.circuit import Circuit
from ..core.data import PairedDataset
from ..core.errors import TrainingDivergedError
from ..core.hooks import AblationSource, mask_hooks
from ..core.metrics import kl_divergence, task_metric
from ..core.model_api import attached
from ..core.nodes import ModelDims, site_masks, with_ancestors
from ..core.placement import Placement
from ..runtime.forward import (
    answer_logits,
    masked_answer_batches,
    masked_kl,
    reference_logits,
)
from .budget import HOLD_SHARE, KLBudget, Snapshot
from .config import PruningConfig
from .sparsity import SparsityControl

EMPTY_KL_PAIRS = 64
"""Pairs on which the fully ablated model's KL is measured, once per fit."""
NO_GRAD_BATCHES = 4
"""Passes without gradient (the full model's answers, the empty circuit) take this many
training batches at once: they keep no activations, and larger batches run faster."""
MIN_KL_EMPTY = 1e-3
MIN_METRIC_SCALE = 1e-6


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63)


@dataclass(frozen=True)
class StepRecord:
    """What one step measured, as the flat ``name: value`` pairs of the training history
    (``loss``, ``kl``, ``lr``, ``l0/<g>``, ``kept/<g>`` (the soft kept share a target prices),
    ``size/<g>`` (the kept fraction of the circuit extracted now), ``target/<g>``,
    ``multiplier/<g>``, ``temperature``, ``budget_scale``) and, on a budget's measuring
    steps, the held-out snapshot."""

    step: int
    values: dict[str, float]
    snapshot: Snapshot | None = field(default=None, repr=False)

    @property
    def loss(self) -> float:
        return self.values["loss"]

    @property
    def kl(self) -> float:
        return self.values["kl"]


def batch_at(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """The pairs of a step: a function of (seed, step) alone, each epoch a new order."""
    batch_size = min(batch_size, n)
    per_epoch = math.ceil(n / batch_size)
    epoch, index = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(seed, epoch)))
    return order[index * batch_size : (index + 1) * batch_size]


def metric_gap(
    logits: Float[Tensor, "batch d_vocab"],
    reference: Float[Tensor, "batch d_vocab"],
    batch: PairedDataset,
    scale: float,
) -> Float[Tensor, ""]:
    """Mean over pairs of the squared difference between the circuit's task metric and the
    full model's, in units of ``scale`` (the fit's root mean square of the full model's metric
    minus the empty circuit's): the empty circuit's gap is 1. Pair by pair: holding only the
    batch's mean gap was tried and gave a less faithful circuit that still overshot."""
    gap = (task_metric(logits, batch) - task_metric(reference, batch)) / scale
    return gap.pow(2).mean()


def descend(
    run, hooks, batch, reference, penalty, step: int, metric: tuple[float, float] | None = None
) -> tuple[Tensor, Tensor]:
    """One optimiser step of ``run`` (a node or an edge fit): the KL of the model run with
    ``hooks`` on ``batch`` against the full model's ``reference`` logits, plus ``penalty``
    (and, with ``metric = (weight, scale)``, ``weight`` times :func:`metric_gap`),
    back-propagated to the masks; returns (loss, KL)."""
    # The masks stay attached through the backward pass: recomputed blocks rerun them.
    with attached(run.model, hooks):
        logits = answer_logits(run.model, batch.clean_tokens, batch.answer_positions)
        kl = kl_divergence(reference, logits)
        # The masks' prices live with the masks, the KL with the unembedding.
        loss = kl + penalty.to(kl.device)
        if metric is not None:
            weight, scale = metric
            loss = loss + weight * metric_gap(logits, reference.to(logits.device), batch, scale)
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"the loss became {loss.item()} at step {step} (KL {kl.item()}); lower lr "
                "or check the model's logits for NaN/inf on this dataset"
            )
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
    for group in run.optimizer.param_groups:
        group["lr"] = run.config.learning_rate(step)
    run.optimizer.step()
    return loss.detach(), kl.detach()


class PruningRun:
    """The state of one fit of ``config`` on ``train`` (and ``validation``, for a budget).

    :meth:`prepare` runs the model once for what every step reuses (the full model's answers,
    the ablation values, the empty circuit's KL); then each :meth:`step` trains the masks.
    """

    def __init__(
        self,
        model,
        config: PruningConfig,
        dims: ModelDims,
        train: PairedDataset,
        validation: PairedDataset | None = None,
        start_targets: dict[str, float] | None = None,
    ):
        self.model, self.config, self.dims = model, config, dims
        self.train, self.validation = train, validation
        self.gates = config.hard_concrete
        self.placement = Placement.of(model, dims)
        device = self.placement.inputs
        generator = torch.Generator().manual_seed(config.seed)
        self.slots = (*train.roles, "other") if config.per_role else ()
        self.log_alpha = {
            g: torch.nn.Parameter(
                config.init_log_alpha
                + 0.01 * torch.randn(dims.shape(g, len(self.slots)), generator=generator).to(device)
            )
            for g in config.granularities
        }
        self.optimizer = torch.optim.Adam(self.log_alpha.values(), lr=config.lr)
        self.sparsity = SparsityControl(
            lambdas=dict(config.sparsity),
            targets=dict(config.target),
            warmup_steps=config.schedule.warmup_steps(config.steps),
            device=device,
            start=start_targets,
        )
        self.budget = None
        if config.max_kl is not None:
            self.budget = KLBudget(config.max_kl, round(HOLD_SHARE * config.steps))
        self.noise = torch.Generator(device=device)
        self.history: dict[str, list[float]] = {}
        self.step_index = 0
        # Made by prepare(): what every step reuses.
        self.reference: torch.Tensor | None = None
        self.validation_reference: torch.Tensor | None = None
        self.ablation: AblationSource | None = None
        self.kl_empty: float | None = None
        self.metric_scale: float | None = None

    # --- before the first step ----------------------------------------------------------

    def prepare(self, progress: bool = False) -> None:
        """The full model's answer logits, the ablation values shared by every batch and the
        empty circuit's KL (the unit of every lambda)."""
        batch_size = NO_GRAD_BATCHES * self.config.batch_size
        self.reference = reference_logits(self.model, self.train, batch_size, progress)
        if not torch.isfinite(self.reference).all():
            raise TrainingDivergedError(
                "the unmasked model produced non-finite logits on this dataset; check the "
                "model's weights and that token ids are valid for its vocabulary"
            )
        self.ablation = AblationSource.for_dataset(
            self.model, self.config.ablation, self.train, self.dims
        )
        if self.validation is not None:
            self.validation_reference = reference_logits(self.model, self.validation, batch_size)
        self.kl_empty, self.metric_scale = self._empty_circuit()
        self.sparsity.kl_scale = self.kl_empty

    def continued(
        self, config: PruningConfig, start_targets: dict[str, float] | None = None
    ) -> PruningRun:
        """A run of ``config`` (other targets, its own steps) that starts from this run's masks,
        multipliers and history and reuses what it prepared; its targets move from
        ``start_targets`` (default: this run's) to its own over its warm-up. The multipliers
        carry on from this run's (the linear one is 0 where this run ended under its target)
        and rise with the gap relative to the target."""
        start = dict(self.config.target) if start_targets is None else start_targets
        run = PruningRun(self.model, config, self.dims, self.train, self.validation, start)
        with torch.no_grad():
            for g, p in run.log_alpha.items():
                p.copy_(self.log_alpha[g])
        run.reference, run.validation_reference = self.reference, self.validation_reference
        run.ablation, run.kl_empty, run.metric_scale = (
            self.ablation,
            self.kl_empty,
            self.metric_scale,
        )
        run.sparsity.kl_scale = self.kl_empty
        run.sparsity.load_state_dict(self.sparsity.state_dict())
        run.history = {k: list(v) for k, v in self.history.items()}
        return run

    def empty_masks(self):
        """Site masks with every pruned node ablated: the empty circuit."""
        zeros = {g: torch.zeros(p.shape, device=p.device) for g, p in self.log_alpha.items()}
        return site_masks(zeros, self.dims)

    @torch.no_grad()
    def _empty_circuit(self) -> tuple[float, float | None]:
        """KL(full || every pruned granularity ablated) on up to 64 pairs: the size of the
        behaviour, the unit in which each ``lambda`` prices a granularity; and, for a fit
        with ``metric_weight``, the full model's task metric minus the empty circuit's, the
        unit of the metric gap (root mean square over the pairs, so that the empty circuit's
        gap is 1)."""
        n = min(len(self.train), EMPTY_KL_PAIRS)
        sample, reference = self.train[torch.arange(n)], self.reference[:n]
        batches = masked_answer_batches(
            self.model,
            sample,
            [self.empty_masks()],
            self.ablation,
            NO_GRAD_BATCHES * self.config.batch_size,
        )
        empty = torch.cat([logits.to(reference.device) for _, _, (logits,) in batches])
        kl_empty = kl_divergence(reference, empty).item()
        if not kl_empty > MIN_KL_EMPTY:
            warnings.warn(
                f"the circuit with every node ablated predicts like the full model (KL "
                f"{kl_empty:.2g} nats): the corruption hardly changes the behaviour, so there is "
                f"little to explain; sparsity is priced against {MIN_KL_EMPTY} nats instead",
                stacklevel=4,
            )
            kl_empty = MIN_KL_EMPTY
        if not self.config.metric_weight:
            return kl_empty, None
        gap = task_metric(reference, sample) - task_metric(empty, sample)
        return kl_empty, max(gap.pow(2).mean().sqrt().item(), MIN_METRIC_SCALE)

    # --- one step -----------------------------------------------------------------------

    def step(self) -> StepRecord:
        """One optimiser step on a batch of pairs; on a budget's measuring steps, also the
        held-out KL of the circuit as extracted so far."""
        step, config = self.step_index, self.config
        indices = self.batch_indices(step)
        batch = self.train[indices].trimmed().to(self.placement.inputs)
        ablated = self.ablation.values(self.model, batch)
        self.noise.manual_seed(step_seed(config.seed, step))
        if config.in_finish(step):
            masks = {g: self.gates.kept_straight_through(p) for g, p in self.log_alpha.items()}
        else:
            masks = {g: self.gates.sample(p, self.noise) for g, p in self.log_alpha.items()}
        l0 = {g: self.gates.expected_l0(p).mean() for g, p in self.log_alpha.items()}
        kept = self._kept_share(step)
        penalty = self.sparsity.penalty(l0, kept, step)
        if self.budget is not None:
            penalty = self.budget.scale * penalty
        slots = batch.role_slots() if self.slots else None  # each token its role's masks
        hooks = mask_hooks(self.dims, site_masks(masks, self.dims), ablated, slots)
        reference = self.reference[indices.to(self.reference.device)]
        priced = self.metric_scale is not None and config.prices_metric(step)
        metric = (config.metric_weight, self.metric_scale) if priced else None
        loss, kl = descend(self, hooks, batch, reference, penalty, step, metric)
        lr = self.learning_rate(step)
        self.sparsity.ascend(lr / config.lr)
        values = {"loss": loss.item(), "kl": kl.item(), "lr": lr}
        values.update({f"l0/{g}": v.item() for g, v in l0.items()})
        values.update({f"kept/{g}": v.item() for g, v in kept.items()})
        values.update({f"size/{g}": v for g, v in self.extracted_fractions().items()})
        values.update(self.sparsity.record(step))
        snapshot = None
        if self.budget is not None:
            self.budget.update(values["kl"], step)
            values["budget_scale"] = self.budget.scale
            if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                snapshot = self._measure(step + 1)
        for key, value in values.items():
            self.history.setdefault(key, []).append(value)
        self.step_index += 1
        return StepRecord(step, values, snapshot)

    def _kept_share(self, step: int) -> dict[str, torch.Tensor]:
        """Per targeted granularity, the share of its nodes that extraction keeps.

        Its value is measured sharply (at the annealed temperature, each node times its
        ancestors), so it is close to the extracted fraction. Its gradient reaches only the
        granularity's own ``log_alpha`` (a price on neurons must not close whole blocks), for
        nodes whose ancestors are kept, at temperature 1: a sharp measure's gradient
        vanishes far from the threshold and would leave those nodes stuck."""
        if not self.sparsity.targets:
            return {}
        with torch.no_grad():
            temperature = self.sparsity.temperature_at(step)
            soft = {g: self.gates.kept_softly(p, temperature) for g, p in self.log_alpha.items()}
            sharp = with_ancestors(soft)
        shares = {}
        for g in self.sparsity.targets:
            # the ancestors' part of each node's share (0 where the node's own underflows,
            # far below the threshold, where a price has nothing left to do)
            above = sharp[g] / soft[g].clamp(min=torch.finfo(soft[g].dtype).tiny)
            carrier = (self.gates.kept_softly(self.log_alpha[g]) * above).mean()
            shares[g] = carrier + (sharp[g].mean() - carrier).detach()
        return shares

    def learning_rate(self, step: int) -> float:
        return self.config.learning_rate(step)

    def batch_indices(self, step: int) -> torch.Tensor:
        return batch_at(len(self.train), self.config.batch_size, self.config.seed, step)

    def _measure(self, step: int) -> Snapshot:
        """The held-out KL and size of the circuit extracted after ``step`` steps."""
        circuit = self.circuit()
        kl = masked_kl(
            self.model,
            self.validation,
            self.validation_reference,
            circuit.site_masks(),
            self.ablation,
            self.config.batch_size,
        )
        snapshot = Snapshot(step, kl, circuit.size(), circuit.log_alpha)
        self.budget.record(snapshot)
        for key, value in (("val_step", step), ("val_kl", kl), ("val_size", snapshot.size)):
            self.history.setdefault(key, []).append(value)
        return snapshot

    def progress_text(self, record: StepRecord) -> str:
        """Loss, KL and the kept nodes of the circuit extracted after the step."""
        sizes = {
            k.removeprefix("size/"): v for k, v in record.values.items() if k.startswith("size/")
        }
        counts = " ".join(
            f"{g}={round(size * self.log_alpha[g].numel())}" for g, size in sizes.items()
        )
        return f"loss={record.loss:.3f} kl={record.kl:.3f} kept: {counts}"

    # --- results ------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.step_index >= self.config.steps

    def extracted_fractions(self) -> dict[str, float]:
        """Kept fraction per trained granularity of the circuit the masks describe now."""
        now = Circuit(
            dims=self.dims,
            log_alpha={g: p.detach() for g, p in self.log_alpha.items()},
            hard_concrete=self.gates,
            slots=self.slots,
        )
        return {g: now.fraction_kept(g) for g in self.log_alpha}

    def circuit(self, fit_info: dict | None = None) -> Circuit:
        """The circuit the masks describe now."""
        return Circuit(
            dims=self.dims,
            log_alpha={g: p.detach().cpu().clone() for g, p in self.log_alpha.items()},
            hard_concrete=self.gates,
            config=self.config.to_dict(),
            fit_info={"d_model": int(self.model.cfg.d_model), **(fit_info or {})},
            history={k: list(v) for k, v in self.history.items()},
            slots=self.slots,
        )

    def result(self, fit_info: dict) -> Circuit:
        """The fit's circuit: the masks now, or under a budget the smallest snapshot within
        it (the most faithful one, with a warning, if none is)."""
        circuit = self.circuit(fit_info)
        if self.budget is None:
            return circuit
        best = self.budget.best()
        if best is None:
            best = self.budget.most_faithful()
            warnings.warn(
                f"no circuit met max_kl={self.budget.max_kl}: the most faithful one seen has "
                f"held-out KL {best.kl:.3g} (step {best.step}); it is returned. Raise max_kl, "
                "lower the lambdas, or train longer",
                stacklevel=3,
            )
        circuit.log_alpha = {g: t.clone() for g, t in best.log_alpha.items()}
        circuit.fit_info.update(chosen_step=best.step, validation_kl=round(best.kl, 6))
        return circuit

    # --- checkpoints --------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "step": self.step_index,
            "log_alpha": {g: p.detach().cpu() for g, p in self.log_alpha.items()},
            "optimizer": self.optimizer.state_dict(),
            "sparsity": self.sparsity.state_dict(),
            "budget": None if self.budget is None else self.budget.state_dict(),
            "history": self.history,
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for g, p in self.log_alpha.items():
                p.copy_(state["log_alpha"][g])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sparsity.load_state_dict(state["sparsity"])
        if self.budget is not None:
            self.budget.load_state_dict(state["budget"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.step_index = int(state["step"])
