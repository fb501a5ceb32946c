"""CircuitPruner: learn Hard Concrete masks on five granularities at once, return a Circuit.

A fit, in phases:

1. check the model, the pairs and the config (resolved for this model) before any work;
2. freeze the model's weights and lay them out for its forward pass (both undone on exit,
   however the fit ends);
3. run the full model once over the pairs: its answer logits, the ablation values and the
   empty circuit's KL, the unit of the sparsity price;
4. step: one masked forward + backward over a batch of clean prompts per step, masks only
   receiving gradients; checkpoint the run every ``checkpoint_every`` steps;
5. with the default targets, measure the circuit on validation pairs and continue at half
   and a quarter of the targets if it meets the faithfulness level, at twice and four times
   (until one meets it) if not;
6. extract the Circuit: the smallest that met the level (under a KL budget: the smallest
   held-out snapshot within it).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ..core.circuit import Circuit
from ..core.data import PairedDataset
from ..core.errors import UsageError, UsageTypeError
from ..core.model_api import check_model_and_pairs, check_pairs, model_device, model_dims
from ..runtime.guard import fitting
from ..runtime.recompute import checkpointable_blocks, recomputed_blocks
from .budget import split_validation
from .checkpoint import checkpoint_path, fit_identity, load_checkpoint
from .config import PruningConfig
from .run import PruningRun
from .sizing import Ladder
from .steps import step_to_end


class CircuitPruner:
    """Finds the nodes a behaviour needs by training masks on clean/corrupted pairs.

    Args:
        model: a TransformerLens model (HookedTransformer or TransformerBridge). It is never
            modified: after ``fit`` returns or raises it has no hooks, the same weights and
            its own ``requires_grad`` flags.
        config: a :class:`PruningConfig` (default: ``PruningConfig()``, the best setting
            measured: a small circuit held on its targets).
        **overrides: settings of :class:`PruningConfig` to change, e.g. ``steps=300``.
    """

    def __init__(self, model, config: PruningConfig | None = None, **overrides):
        if config is not None and not isinstance(config, PruningConfig):
            raise UsageTypeError(f"config must be a PruningConfig, got {type(config).__name__}")
        self.model = model
        self.config = (config or PruningConfig()).replace(**overrides)

    def fit(
        self,
        train: PairedDataset,
        validation: PairedDataset | None = None,
        *,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
        progress: bool = True,
    ) -> Circuit:
        """Train the masks and return the extracted Circuit.

        With ``checkpoint_dir`` the run is saved atomically every ``checkpoint_every`` steps;
        ``resume=True`` continues from there (only the same fit: same config, model sizes
        and pairs) and ends with the same circuit as an uninterrupted fit. If training stops
        early (an error, a NaN, Ctrl-C) the masks learned so far are left in
        ``self.circuit_`` before the exception propagates.

        ``validation`` chooses the circuit's size: with the default targets, each rung's
        circuit is measured on it against the faithfulness level; under a KL budget
        (``max_kl``) the circuit so far, every ``eval_every`` steps. Without it, a fifth of
        ``train`` is held out (at most 256). A fit at a given size (``target``,
        ``sparsity``) takes none. After a size search, ``self.rungs_`` holds every circuit
        it measured (in ``circuit.fit_info["sizing"]``'s order), to compare them further.
        """
        config, dims, train, validation = self._checked(train, validation)
        if resume and checkpoint_dir is None:
            raise UsageError("resume=True needs the checkpoint_dir of the fit to continue")
        checkpoint = checkpoint_path(checkpoint_dir) if checkpoint_dir is not None else None
        identity = fit_identity(self.model, config, dims, train, validation)
        state = load_checkpoint(checkpoint, identity) if resume else None  # refused early
        self.circuit_ = ladder = None
        start = time.perf_counter()
        try:
            with self.execution(config):  # the run's tensors are made in it: no inference tensors
                run = PruningRun(self.model, config, dims, train, validation)
                run.prepare(progress)
                prepared = time.perf_counter()
                ladder = Ladder(run)
                if state is not None:
                    ladder.load_state_dict(state)
                while not ladder.done:
                    desc = "pruning" if not ladder.rungs else f"sizing, targets x{ladder.scale:g}"
                    step_to_end(ladder.run, checkpoint, identity, progress, desc, ladder.state_dict)
                    ladder.climb()
        except BaseException:
            self.circuit_ = None if ladder is None else ladder.run.circuit()
            raise
        run = ladder.run
        self.circuit_ = ladder.result(
            {
                "dataset": train.name,
                "n_pairs": len(train),
                "fingerprint": identity["train"],
                "model_fingerprint": identity["model"],
                "n_validation": None if validation is None else len(validation),
                "kl_empty": round(run.kl_empty, 6),
                "seconds": round(time.perf_counter() - start, 2),
                "prepare_seconds": round(prepared - start, 2),
            }
        )
        self.rungs_ = ladder.circuits(self.circuit_)
        return self.circuit_

    @contextmanager
    def execution(self, config: PruningConfig | None = None) -> Iterator[None]:
        """How the model runs during a fit (and a benchmark of its steps): weights frozen and
        laid out for the forward pass (see ``runtime.layout``), gradients on even inside a
        caller's ``no_grad`` or ``inference_mode``, bf16 autocast and block recomputation if
        asked. Everything is undone on exit."""
        config = (config or self.config).with_device(model_device(self.model))
        with ExitStack() as stack:
            stack.enter_context(fitting(self.model, "a fit", config.bf16))
            if config.gradient_checkpointing:
                stack.enter_context(recomputed_blocks(self.model))
            yield

    def _checked(self, train, validation):
        """(config resolved for the model, dims, training pairs, validation pairs)."""
        if not isinstance(train, PairedDataset):
            raise UsageTypeError(
                f"fit expects a PairedDataset, got {type(train).__name__}; build one with "
                "PairedDataset(clean_tokens=..., corrupted_tokens=..., answer_tokens=...) or a "
                "task builder such as tasks.ioi(model)"
            )
        dims = model_dims(self.model)
        check_model_and_pairs(self.model, dims, dataset=train)
        wrong = train.wrong_answer_tokens is not None
        config = self.config.resolved(dims, model_device(self.model), has_wrong_answers=wrong)
        if config.metric_weight and train.wrong_answer_tokens is None:
            raise UsageError(
                "metric_weight holds the circuit's task metric to the full model's, but these "
                "pairs have no wrong_answer_tokens (no logit difference): add wrong answers "
                "or set metric_weight=0"
            )
        if config.gradient_checkpointing:
            checkpointable_blocks(self.model)
        if config.per_role and not train.roles:
            raise UsageError(
                "per_role gives every node one mask per token role, but these pairs record "
                "none: build them with a task builder (tasks.ioi, ...) or add roles with "
                "data.with_roles(names, positions)"
            )
        if config.max_kl is None and not config.sizes_by_faithfulness():
            if validation is not None:
                raise UsageError(
                    "validation chooses the circuit's size, but this fit's size is given "
                    "(target or sparsity); drop them (and keep faithfulness) or set max_kl=..."
                )
            return config, dims, train, None
        if validation is None:
            kept, held_out = split_validation(len(train), config.seed)
            return config, dims, train[kept], train[held_out]
        if not isinstance(validation, PairedDataset):
            raise UsageTypeError(
                f"validation must be a PairedDataset, got {type(validation).__name__}"
            )
        if config.per_role and validation.roles != train.roles:
            raise UsageError(
                f"per_role: the validation pairs record roles {validation.roles}, the training "
                f"pairs {train.roles}; give both the same roles"
            )
        check_pairs(self.model, validation, "validation pairs")
        return config, dims, train, validation
