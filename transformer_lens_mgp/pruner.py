"""CircuitPruner: learn Hard Concrete masks on five granularities at once, return a Circuit.

Each step runs one no-grad forward over [clean; corrupted] (the full model's answer
distribution and the corrupted site activations) and one masked forward + backward over the
clean prompts. Only the masks' ``log_alpha`` receive gradients; the model's weights are
frozen for the duration of ``fit`` and its flags and hooks are restored however it ends.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .budget import HOLD_SHARE, KLBudget, Snapshot, check_max_kl, split_validation
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from .circuit import Circuit
from .data import PairedDataset
from .granularity import ModelDims, resolve_granularities, site_masks
from .interventions import (
    answer_logits,
    check_ablation,
    check_hook_points,
    fixed_ablation,
    frozen,
    mask_hooks,
    masked_answer_logits,
    model_device,
    site_activations,
)
from .layout import forward_layout
from .masks import HardConcrete
from .objectives import kl_divergence
from .recompute import checkpointable_blocks, recomputed_blocks
from .sparsity import DEFAULT_SPARSITY, SparsityControl, check_sparsity

EMPTY_KL_PAIRS = 64
"""Pairs on which the fully ablated model's KL is measured, once per fit."""
MIN_KL_EMPTY = 1e-3


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63)


@dataclass
class _FitState:
    """What one fit carries from step to step."""

    dims: ModelDims
    log_alpha: dict[str, torch.nn.Parameter]
    sparsity: SparsityControl
    optimizer: torch.optim.Optimizer
    noise: torch.Generator
    history: dict[str, list[float]]
    reference: torch.Tensor | None = None
    fixed: dict[str, torch.Tensor] | None = None
    budget: KLBudget | None = None
    validation_reference: torch.Tensor | None = None

    def checkpoint(self, step: int, config: dict) -> dict:
        return {
            "step": step,
            "config": config,
            "history": self.history,
            "log_alpha": {g: p.detach().cpu() for g, p in self.log_alpha.items()},
            "multipliers": {g: p.detach().cpu() for g, p in self.sparsity.multipliers.items()},
            "optimizer": self.optimizer.state_dict(),
            "budget": self.budget.state_dict() if self.budget else None,
        }


class TrainingDivergedError(RuntimeError):
    """The loss stopped being a finite number."""


class CircuitPruner:
    """Finds the nodes a behaviour needs by training masks on clean/corrupted pairs.

    Args:
        model: a TransformerLens model (HookedTransformer). It is never modified.
        granularities: which of ``block, head, attn_neuron, mlp, mlp_neuron`` to prune;
            default: every one the model has.
        sparsity: ``{granularity: lambda}``; the penalty is ``lambda`` times the expected
            fraction of that granularity's nodes kept. Granularities in neither ``sparsity``
            nor ``target`` take :data:`DEFAULT_SPARSITY`.
        target: ``{granularity: kept fraction}``, e.g. ``{"mlp_neuron": 0.05}``: instead of a
            fixed ``lambda``, a Lagrangian whose multipliers grow until the expected kept
            fraction meets the target (reached by the end of the warm-up).
        target_warmup: share of the steps over which each target moves from 1 to its value.
        max_kl: instead of a size, a budget in nats: one scale on every ``lambda`` rises while
            the training KL is under ``max_kl`` and falls while it is over, and ``fit``
            returns the smallest circuit seen whose KL on held-out pairs is within it.
        ablation: what a pruned node outputs: ``"corrupted"`` (its activation on the corrupted
            prompt, the default), ``"mean"`` (its mean over corrupted prompts) or ``"zero"``.
        seed: seeds the mask noise, the initialisation and the batch order.
        device: where the masks live; must be the model's device (default: the model's).
        init_log_alpha: initial ``log_alpha`` of every node. At 1 every mask starts on (its
            deterministic value is 0.78) while the penalty's gradient is not yet saturated.
        hard_concrete: the gate constants.
        gradient_checkpointing: keep only each block's input during the masked forward and
            rerun the block in the backward pass: much less memory for about one more
            forward of time. The circuit is the same.
        bf16: run the model's forward passes under ``torch.autocast`` in bfloat16 (masks,
            KL and optimiser stay float32). It pays where there are bf16 units (GPUs, CPUs
            with AVX-512 BF16 or AMX, where a SmolLM2 step takes half the time) and can be
            slower elsewhere. The circuit can differ slightly from a float32 fit.
    """

    def __init__(
        self,
        model,
        granularities: str | tuple[str, ...] | list[str] | None = None,
        sparsity: Mapping[str, float] | None = None,
        ablation: str = "corrupted",
        seed: int = 0,
        device: str | torch.device | None = None,
        init_log_alpha: float = 1.0,
        target: Mapping[str, float] | None = None,
        target_warmup: float = 0.5,
        hard_concrete: HardConcrete | None = None,
        max_kl: float | None = None,
        gradient_checkpointing: bool = False,
        bf16: bool = False,
    ):
        self.model = model
        self.granularities = granularities
        self.sparsity = dict(sparsity or {})
        self.ablation = ablation
        self.seed = seed
        self.device = device
        self.init_log_alpha = init_log_alpha
        self.target = dict(target or {})
        self.target_warmup = target_warmup
        self.hard_concrete = hard_concrete or HardConcrete()
        self.max_kl = max_kl
        self.gradient_checkpointing = gradient_checkpointing
        self.bf16 = bf16
        for name, flag in (("gradient_checkpointing", gradient_checkpointing), ("bf16", bf16)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} is True or False, got {flag!r}")
        check_ablation(ablation)
        check_sparsity(self.sparsity, self.target)
        check_max_kl(max_kl, self.target)
        if not isinstance(target_warmup, int | float) or not 0 <= target_warmup <= 1:
            raise ValueError(
                f"target_warmup is a share of the steps, in [0, 1]; got {target_warmup}"
            )
        if not math.isfinite(init_log_alpha):
            raise ValueError(f"init_log_alpha must be finite, got {init_log_alpha}")

    # --- public ---------------------------------------------------------------------------

    def fit(
        self,
        dataset: PairedDataset,
        steps: int = 200,
        batch_size: int = 8,
        lr: float = 0.1,
        progress: bool = True,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 50,
        resume: bool = False,
        validation: PairedDataset | None = None,
        eval_every: int | None = None,
    ) -> Circuit:
        """Train masks for ``steps`` optimiser steps and return the extracted Circuit.

        With ``checkpoint_dir``, masks, optimiser state and history are saved atomically every
        ``checkpoint_every`` steps; ``resume=True`` continues from there and ends with the same
        circuit as an uninterrupted fit. If training stops early (an error, a NaN, Ctrl-C), the
        masks learned so far are left in ``self.circuit_`` before the exception propagates.

        With ``max_kl``, the circuit so far is measured on ``validation`` every ``eval_every``
        steps (default: a tenth of the steps); without ``validation``, a fifth of ``dataset``
        is held out for it and the fit trains on the rest.
        """
        dims, granularities, device = self._validate(dataset, steps, batch_size, lr)
        dataset, validation, eval_every = self._budget_data(dataset, validation, eval_every, steps)
        if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
            raise ValueError(
                f"checkpoint_every must be a positive integer, got {checkpoint_every!r}"
            )
        if resume and checkpoint_dir is None:
            raise ValueError("resume=True needs the checkpoint_dir of the fit to continue")
        generator = torch.Generator().manual_seed(self.seed)
        log_alpha = {
            g: torch.nn.Parameter(
                self.init_log_alpha
                + 0.01 * torch.randn(dims.shape(g), generator=generator).to(device)
            )
            for g in granularities
        }
        targets = {g: t for g, t in self.target.items() if g in granularities}
        control = SparsityControl(
            lambdas={
                g: self.sparsity.get(g, DEFAULT_SPARSITY[g])
                for g in granularities
                if g not in targets
            },
            targets=targets,
            warmup_steps=round(self.target_warmup * steps),
            device=device,
        )
        optimizer = torch.optim.Adam(log_alpha.values(), lr=lr)
        run = _FitState(
            dims=dims,
            log_alpha=log_alpha,
            sparsity=control,
            optimizer=optimizer,
            noise=torch.Generator(device=device),
            history={
                "loss": [],
                "kl": [],
                **{f"l0/{g}": [] for g in granularities},
                **{f"kept/{g}": [] for g in targets},
                **{key: [] for key in control.record(0)},
            },
        )
        config = dict(
            granularities=list(granularities),
            sparsity=control.lambdas,
            target=targets,
            target_warmup=self.target_warmup,
            ablation=self.ablation,
            seed=self.seed,
            init_log_alpha=self.init_log_alpha,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            dataset=dataset.name,
            n_pairs=len(dataset),
            dims=dims.to_dict(),
        )
        config.update({k: True for k in ("gradient_checkpointing", "bf16") if getattr(self, k)})
        budget = None
        if self.max_kl is not None:
            budget = run.budget = KLBudget(self.max_kl, round(HOLD_SHARE * steps))
            config.update(max_kl=self.max_kl, n_validation=len(validation), eval_every=eval_every)
            run.history.update(budget_scale=[], val_step=[], val_kl=[], val_size=[])
        self.circuit_ = None
        checkpoint = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir else None
        start_step = 0
        state = load_checkpoint(checkpoint, config) if resume else None
        if state is not None:
            with torch.no_grad():
                for g, p in log_alpha.items():
                    p.copy_(state["log_alpha"][g])
                for g, p in control.multipliers.items():
                    p.copy_(state["multipliers"][g])
            run.optimizer.load_state_dict(state["optimizer"])
            if budget is not None:
                budget.load_state_dict(state["budget"])
            run.history, start_step = state["history"], state["step"]

        def snapshot(chosen: dict[str, torch.Tensor] | None = None) -> Circuit:
            return Circuit(
                dims=dims,
                log_alpha=chosen or {g: p.detach().cpu().clone() for g, p in log_alpha.items()},
                hard_concrete=self.hard_concrete,
                config=config,
                history=run.history,
            )

        start = time.perf_counter()
        try:
            with frozen(self.model), self._execution(device):
                run.reference = self._reference_logits(dataset, device, batch_size)
                run.fixed = fixed_ablation(self.model, self.ablation, dataset, dims)
                control.kl_scale = self._empty_circuit_kl(run, dataset, batch_size)
                if budget is not None:
                    run.validation_reference = self._reference_logits(
                        validation, device, batch_size
                    )
                config["kl_empty"] = round(control.kl_scale, 6)
                bar = tqdm(
                    range(start_step, steps),
                    initial=start_step,
                    total=steps,
                    desc="pruning",
                    disable=not progress,
                    dynamic_ncols=True,
                )
                for step in bar:
                    record = self._step(run, dataset, batch_size, step)
                    if budget is not None:
                        budget.update(record["kl"], step)
                        run.history["budget_scale"].append(budget.scale)
                        if (step + 1) % eval_every == 0 or step + 1 == steps:
                            self._measure(run, snapshot(), validation, step, batch_size)
                    if progress and (step % 5 == 0 or step == steps - 1):
                        bar.set_postfix_str(self._progress_text(record, log_alpha))
                    if checkpoint and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
                        save_checkpoint(checkpoint, run.checkpoint(step + 1, config))
        except BaseException:
            self.circuit_ = snapshot()
            raise
        config["seconds"] = round(time.perf_counter() - start, 2)
        self.circuit_ = snapshot(self._choose(budget, config) if budget else None)
        return self.circuit_

    @contextmanager
    def _execution(self, device: torch.device) -> Iterator[None]:
        """How the model runs during the fit: weights laid out for its forward pass (see
        ``layout``), and bf16 autocast and block recomputation if asked."""
        with ExitStack() as stack:
            stack.enter_context(forward_layout(self.model))
            if self.bf16:
                stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
            if self.gradient_checkpointing:
                stack.enter_context(recomputed_blocks(self.model))
            yield

    # --- KL budget --------------------------------------------------------------------------

    def _budget_data(self, dataset, validation, eval_every, steps):
        """(training pairs, validation pairs, eval_every): the pairs the budget is measured on."""
        if self.max_kl is None:
            if validation is not None or eval_every is not None:
                raise ValueError(
                    "validation and eval_every choose the circuit within a KL budget; "
                    "set max_kl=... on the CircuitPruner to use them"
                )
            return dataset, None, None
        if eval_every is None:
            eval_every = max(1, steps // 10)
        if not isinstance(eval_every, int) or eval_every < 1:
            raise ValueError(f"eval_every must be a positive integer, got {eval_every!r}")
        if validation is None:
            train, held_out = split_validation(len(dataset), self.seed)
            return dataset[train], dataset[held_out], eval_every
        if not isinstance(validation, PairedDataset):
            raise TypeError(f"validation must be a PairedDataset, got {type(validation).__name__}")
        if validation.max_token_id() >= self.model.cfg.d_vocab:
            raise ValueError(
                f"the validation pairs hold token id {validation.max_token_id()} but the "
                f"model's vocabulary has {self.model.cfg.d_vocab} tokens"
            )
        return dataset, validation, eval_every

    def _measure(
        self, run: _FitState, circuit: Circuit, validation, step: int, batch_size: int
    ) -> None:
        """The held-out KL and size of the circuit extracted at ``step``; the full model's
        answers on the held-out pairs were computed once, at the start of the fit."""
        device = run.validation_reference.device
        attn, mlp = (m if m is None else m.to(device) for m in circuit._site_masks())
        kl = self._circuit_kl(run, validation, run.validation_reference, attn, mlp, batch_size)
        size = circuit.size()
        run.budget.record(Snapshot(step + 1, kl, size, circuit.log_alpha))
        for key, value in (("val_step", step + 1), ("val_kl", kl), ("val_size", size)):
            run.history[key].append(value)

    def _choose(self, budget: KLBudget, config: dict) -> dict[str, torch.Tensor]:
        """The smallest snapshot within budget, or the most faithful one with a warning."""
        best = budget.best()
        if best is None:
            best = budget.most_faithful()
            warnings.warn(
                f"no circuit met max_kl={budget.max_kl}: the most faithful one seen has "
                f"held-out KL {best.kl:.3g} (step {best.step}); it is returned. Raise max_kl, "
                "lower the lambdas, or train longer",
                stacklevel=3,
            )
        config.update(chosen_step=best.step, validation_kl=round(best.kl, 6))
        return {g: t.clone() for g, t in best.log_alpha.items()}

    # --- steps ------------------------------------------------------------------------------

    def _step(self, run: _FitState, dataset: PairedDataset, batch_size: int, step: int) -> dict:
        """One optimiser step; appends to and returns the numbers recorded in the history."""
        device = run.reference.device
        indices = self._batch_indices(len(dataset), batch_size, step)
        batch = dataset[indices].trimmed().to(device)
        ablated = run.fixed
        if ablated is None:
            ablated = site_activations(self.model, batch.corrupted_tokens, run.dims)
        run.noise.manual_seed(_step_seed(self.seed, step))
        sampled = {g: self.hard_concrete.sample(p, run.noise) for g, p in run.log_alpha.items()}
        attn, mlp = site_masks(sampled, run.dims)
        l0 = {g: self.hard_concrete.expected_l0(p).mean() for g, p in run.log_alpha.items()}
        kept = {
            g: self.hard_concrete.keep_probability(p).mean()
            for g, p in run.log_alpha.items()
            if g in run.sparsity.targets
        }
        penalty = run.sparsity.penalty(l0, kept, step)
        # The masks stay attached through the backward pass: recomputed blocks rerun them.
        with self.model.hooks(fwd_hooks=mask_hooks(run.dims, attn, mlp, ablated)):
            logits = answer_logits(self.model, batch.clean_tokens, batch.answer_positions)
            kl = kl_divergence(run.reference[indices.to(device)], logits)
            loss = kl + (penalty if run.budget is None else run.budget.scale * penalty)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"the loss became {loss.item()} at step {step} (KL {kl.item()}); lower lr "
                    "or check the model's logits for NaN/inf on this dataset"
                )
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        run.optimizer.step()
        run.sparsity.ascend()
        record = {"loss": loss.item(), "kl": kl.item()}
        record.update({f"l0/{g}": v.item() for g, v in l0.items()})
        record.update({f"kept/{g}": v.item() for g, v in kept.items()})
        record.update(run.sparsity.record(step))
        for key, value in record.items():
            run.history[key].append(value)
        return record

    @torch.no_grad()
    def _reference_logits(self, dataset: PairedDataset, device, batch_size: int):
        """The full model's answer logits for every pair, computed once: they never change."""
        chunks = []
        for batch in dataset.batches(batch_size, shuffle=False):
            batch = batch.to(device)
            chunks.append(answer_logits(self.model, batch.clean_tokens, batch.answer_positions))
        reference = torch.cat(chunks)
        if not torch.isfinite(reference).all():
            raise TrainingDivergedError(
                "the unmasked model produced non-finite logits on this dataset; check the "
                "model's weights and that token ids are valid for its vocabulary"
            )
        return reference

    @torch.no_grad()
    def _empty_circuit_kl(self, run: _FitState, dataset: PairedDataset, batch_size: int) -> float:
        """KL(full || every pruned granularity ablated) on up to 64 pairs: the size of the
        behaviour, the unit in which each ``lambda`` prices a granularity."""
        device = run.reference.device
        zeros = {g: torch.zeros(p.shape, device=device) for g, p in run.log_alpha.items()}
        attn, mlp = site_masks(zeros, run.dims)
        n = min(len(dataset), EMPTY_KL_PAIRS)
        sample = dataset[torch.arange(n)]
        kl_empty = self._circuit_kl(run, sample, run.reference[:n], attn, mlp, batch_size)
        if not kl_empty > MIN_KL_EMPTY:
            warnings.warn(
                f"the circuit with every node ablated predicts like the full model (KL "
                f"{kl_empty:.2g} nats): the corruption hardly changes the behaviour, so there is "
                f"little to explain; sparsity is priced against {MIN_KL_EMPTY} nats instead",
                stacklevel=3,
            )
            kl_empty = MIN_KL_EMPTY
        return kl_empty

    @torch.no_grad()
    def _circuit_kl(self, run: _FitState, dataset, reference, attn, mlp, batch_size) -> float:
        """Mean KL(full || model run with these site masks) over ``dataset``, whose full-model
        answer logits are ``reference``."""
        total, start = 0.0, 0
        for batch in dataset.batches(batch_size, shuffle=False):
            batch = batch.to(reference.device)
            ablated = run.fixed
            if ablated is None:
                ablated = site_activations(self.model, batch.corrupted_tokens, run.dims)
            logits = masked_answer_logits(self.model, batch, run.dims, attn, mlp, ablated)
            total += kl_divergence(reference[start : start + len(batch)], logits).item() * len(
                batch
            )
            start += len(batch)
        return total / len(dataset)

    def _batch_indices(self, n: int, batch_size: int, step: int) -> torch.Tensor:
        """The pairs of a step: a function of (seed, step) alone, so a resumed fit replays the
        same batches as an uninterrupted one."""
        batch_size = min(batch_size, n)
        per_epoch = math.ceil(n / batch_size)
        epoch, index = divmod(step, per_epoch)
        order = torch.randperm(
            n, generator=torch.Generator().manual_seed(_step_seed(self.seed, epoch))
        )
        return order[index * batch_size : (index + 1) * batch_size]

    def _progress_text(self, record, log_alpha) -> str:
        threshold = self.hard_concrete.keep_threshold
        kept = " ".join(f"{g}={int((p > threshold).sum())}" for g, p in log_alpha.items())
        return f"loss={record['loss']:.3f} kl={record['kl']:.3f} kept: {kept}"

    def _validate(self, dataset, steps, batch_size, lr):
        model = self.model
        if not isinstance(dataset, PairedDataset):
            raise TypeError(
                f"fit expects a PairedDataset, got {type(dataset).__name__}; build one with "
                "PairedDataset(clean_tokens=..., corrupted_tokens=..., answer_tokens=...) or a "
                "task builder such as tasks.ioi(model)"
            )
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        cfg = getattr(model, "cfg", None)
        if cfg is None or not hasattr(cfg, "n_layers"):
            raise TypeError(
                f"expected a TransformerLens model with a .cfg, got {type(model).__name__}"
            )
        dims = ModelDims.from_cfg(cfg)
        granularities = resolve_granularities(
            self.granularities if self.granularities is not None else dims.available(), dims
        )
        check_hook_points(model, dims)
        if self.gradient_checkpointing:
            checkpointable_blocks(model)
        if dataset.max_token_id() >= cfg.d_vocab:
            raise ValueError(
                f"the dataset holds token id {dataset.max_token_id()} but the model's vocabulary "
                f"has {cfg.d_vocab} tokens; tokenize the prompts with this model's tokenizer"
            )
        device = model_device(model)
        if self.device is not None and torch.device(self.device).type != device.type:
            raise ValueError(
                f"device={self.device} but the model is on {device}; move the model "
                "first (model.to(device)) or leave device unset"
            )
        return dims, granularities, device
