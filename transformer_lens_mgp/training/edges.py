"""EdgePruner: learn which edges among a node circuit's kept nodes a behaviour needs.

Node pruning says which heads and MLPs matter; edges say which of them feed which. After node
pruning the graph is small, so one Hard Concrete mask per edge among the kept nodes is cheap:
each step is one masked forward and backward of the model, and what it keeps beyond the node
fit's step grows with the kept writers (one write per kept head, MLP and the embeddings), not
with the model. The fit mirrors :class:`~.pruner.CircuitPruner`: the same gates, an L0 price or
a target edge count, checkpoints, and the model untouched however the fit ends.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..analysis.edge_evaluation import evaluate_edges
from ..core.checks import check_positive_int, is_finite
from ..core.circuit import Circuit
from ..core.data import PairedDataset
from ..core.edge_circuit import EdgeCircuit
from ..core.edge_graph import EdgeGraph, check_hooked, corrupted_activations, per_head_inputs
from ..core.errors import UsageError, UsageTypeError
from ..core.metrics import kl_divergence
from ..core.model_api import check_model_and_pairs, model_device
from ..runtime.forward import answer_logits, reference_logits
from ..runtime.guard import fitting
from .checkpoint import checkpoint_path, fit_identity, load_checkpoint
from .config import FitConfig, Schedule
from .run import (
    EMPTY_KL_PAIRS,
    MIN_KL_EMPTY,
    NO_GRAD_BATCHES,
    StepRecord,
    batch_at,
    descend,
    step_seed,
)
from .sparsity import SparsityControl
from .steps import step_to_end

EDGE = "edge"


EDGE_SCHEDULE = Schedule(warmup=0.4, decay=0.5, finish=0.0)
"""An edge fit starts from a circuit already found, so it has no final phase of its own."""


@dataclass(frozen=True)
class EdgeConfig(FitConfig):
    """How to train the edge masks among a node circuit's kept nodes (besides
    :class:`~.config.FitConfig`'s settings).

    Args:
        sparsity: ``lambda``: the price of keeping every edge, in units of the KL of the
            corrupted run (every edge dropped). Ignored with ``target_edges``.
        target_edges: instead of a price, the number of edges to keep: a Lagrangian whose
            multipliers grow until the circuit has that many (reached by the end of the
            warm-up).

    Its defaults differ from a node fit's where an edge fit differs: 200 steps (the graph
    is small), every edge starting surely on (``init_log_alpha=3``: the node circuit with
    every edge is where it starts), :data:`EDGE_SCHEDULE`, and float32 unless asked (bf16 was
    not measured to pay for edge fits).
    """

    steps: int = 200
    schedule: Schedule = field(default_factory=lambda: EDGE_SCHEDULE)
    init_log_alpha: float = 3.0
    bf16: bool | None = False
    sparsity: float = 1.0
    target_edges: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.target_edges is not None:
            check_positive_int("target_edges", self.target_edges)
        if not is_finite(self.sparsity) or self.sparsity < 0:
            raise UsageError(f"sparsity must be a finite number >= 0, got {self.sparsity!r}")


class EdgeRun:
    """The state of one edge fit: the masks, their optimiser and the sparsity price."""

    def __init__(self, model, config: EdgeConfig, nodes: Circuit, graph: EdgeGraph, train):
        self.model, self.config, self.nodes, self.graph = model, config, nodes, graph
        self.train = train
        self.gates = config.hard_concrete
        device = model_device(model)
        generator = torch.Generator().manual_seed(config.seed)
        noise = torch.randn(graph.n_edges, generator=generator)
        self.log_alpha = torch.nn.Parameter((config.init_log_alpha + 0.01 * noise).to(device))
        self.optimizer = torch.optim.Adam([self.log_alpha], lr=config.lr)
        targets = {}
        if config.target_edges is not None:
            targets[EDGE] = min(1.0, config.target_edges / graph.n_edges)
        self.sparsity = SparsityControl(
            lambdas={EDGE: config.sparsity},
            targets=targets,
            warmup_steps=config.schedule.warmup_steps(config.steps),
            device=device,
        )
        self.node_masks = nodes.site_masks().to(device)
        self.noise = torch.Generator(device=device)
        self.history: dict[str, list[float]] = {}
        self.step_index = 0
        self.reference: torch.Tensor | None = None
        self.kl_empty: float | None = None

    def prepare(self, progress: bool = False) -> None:
        """The full model's answers and the KL of the corrupted run (every edge dropped), the
        unit of the price."""
        batch_size = NO_GRAD_BATCHES * self.config.batch_size
        self.reference = reference_logits(self.model, self.train, batch_size, progress)
        n = min(len(self.train), EMPTY_KL_PAIRS)
        sample = self.train[torch.arange(n)].to(model_device(self.model))
        with torch.no_grad():
            corrupted = answer_logits(self.model, sample.corrupted_tokens, sample.answer_positions)
        kl_empty = kl_divergence(self.reference[:n].to(corrupted.device), corrupted).item()
        self.kl_empty = max(kl_empty, MIN_KL_EMPTY)
        self.sparsity.kl_scale = self.kl_empty

    def step(self) -> StepRecord:
        """One optimiser step on a batch of pairs (a function of the seed and the step)."""
        step, config = self.step_index, self.config
        indices = batch_at(len(self.train), config.batch_size, config.seed, step)
        batch = self.train[indices].trimmed().to(model_device(self.model))
        corrupted = corrupted_activations(self.model, self.graph, batch.corrupted_tokens)
        self.noise.manual_seed(step_seed(config.seed, step))
        if config.in_finish(step):
            sampled = self.gates.kept_straight_through(self.log_alpha)
        else:
            sampled = self.gates.sample(self.log_alpha, self.noise)
        l0 = {EDGE: self.gates.expected_l0(self.log_alpha).mean()}
        kept = self._kept_share(step)
        penalty = self.sparsity.penalty(l0, kept, step)
        hooks = self.graph.hooks(self.model, self.node_masks, sampled, corrupted)
        reference = self.reference[indices.to(self.reference.device)]
        loss, kl = descend(self, hooks, batch, reference, penalty, step)
        lr = config.learning_rate(step)
        self.sparsity.ascend(lr / config.lr)
        kept_now = int((self.log_alpha.detach() > self.gates.keep_threshold).sum())
        values = {"loss": loss.item(), "kl": kl.item(), "lr": lr, "l0/edge": l0[EDGE].item()}
        values["edges"] = kept_now
        values.update(self.sparsity.record(step))
        for key, value in values.items():
            self.history.setdefault(key, []).append(value)
        self.step_index += 1
        return StepRecord(step, values)

    def _kept_share(self, step: int) -> dict[str, torch.Tensor]:
        """The share of edges extraction keeps, measured sharply, with the gradient of the
        same measure at temperature 1 (see ``PruningRun._kept_share``)."""
        if not self.sparsity.targets:
            return {}
        with torch.no_grad():
            sharp = self.gates.kept_softly(self.log_alpha, self.sparsity.temperature_at(step))
        carrier = self.gates.kept_softly(self.log_alpha).mean()
        return {EDGE: carrier + (sharp.mean() - carrier).detach()}

    @property
    def done(self) -> bool:
        return self.step_index >= self.config.steps

    def progress_text(self, record) -> str:
        return f"loss={record.loss:.3f} kl={record.kl:.3f} edges={record.values['edges']}"

    def circuit(self, fit_info: dict | None = None) -> EdgeCircuit:
        return EdgeCircuit(
            nodes=self.nodes,
            graph=self.graph,
            log_alpha=self.log_alpha.detach().cpu().clone(),
            hard_concrete=self.gates,
            config=self.config.to_dict(),
            fit_info=dict(fit_info or {}),
            history={k: list(v) for k, v in self.history.items()},
        )

    def state_dict(self) -> dict:
        return {
            "step": self.step_index,
            "log_alpha": self.log_alpha.detach().cpu(),
            "optimizer": self.optimizer.state_dict(),
            "sparsity": self.sparsity.state_dict(),
            "history": self.history,
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sparsity.load_state_dict(state["sparsity"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.step_index = int(state["step"])


class EdgePruner:
    """Finds the edges among ``circuit``'s kept nodes that a behaviour needs.

    Args:
        model: the HookedTransformer the node circuit was found on. It is never modified:
            after ``fit`` returns or raises it has no hooks, the same weights, settings and
            ``requires_grad`` flags.
        circuit: the node circuit (trained with ``ablation="corrupted"``).
        config: an :class:`EdgeConfig` (default: the defaults).
        **overrides: settings of :class:`EdgeConfig` to change, e.g. ``target_edges=50``.
    """

    def __init__(self, model, circuit: Circuit, config: EdgeConfig | None = None, **overrides):
        if not isinstance(circuit, Circuit):
            raise UsageTypeError(f"circuit must be a Circuit, got {type(circuit).__name__}")
        if config is not None and not isinstance(config, EdgeConfig):
            raise UsageTypeError(f"config must be an EdgeConfig, got {type(config).__name__}")
        if circuit.ablation != "corrupted":
            raise UsageError(
                f"edge masks mix clean and corrupted writes, but this circuit was trained with "
                f"ablation={circuit.ablation!r}; fit the node circuit with ablation='corrupted'"
            )
        circuit.check_model(model)
        circuit.require_no_slots("EdgePruner")
        check_hooked(model)
        self.model, self.circuit = model, circuit
        config = (config or EdgeConfig()).replace(**overrides)
        self.config = config.with_device(model_device(model))
        self.graph = EdgeGraph.of(circuit, bool(getattr(model.cfg, "parallel_attn_mlp", False)))

    def fit(
        self,
        train: PairedDataset,
        validation: PairedDataset | None = None,
        *,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
        progress: bool = True,
    ) -> EdgeCircuit:
        """Train the edge masks and return the EdgeCircuit; with ``validation``, its held-out
        faithfulness goes into ``fit_info``. Checkpoints and ``resume`` work as in
        :meth:`CircuitPruner.fit <transformer_lens_mgp.CircuitPruner.fit>`; if training stops
        early, the edges learned so far are left in ``self.circuit_``."""
        for label, data in (("train", train), ("validation", validation)):
            if data is not None and not isinstance(data, PairedDataset):
                raise UsageTypeError(f"{label} must be a PairedDataset, got {type(data).__name__}")
        dims = self.circuit.dims
        check_model_and_pairs(self.model, dims, dataset=train, validation_pairs=validation)
        if resume and checkpoint_dir is None:
            raise UsageError("resume=True needs the checkpoint_dir of the fit to continue")
        checkpoint = checkpoint_path(checkpoint_dir) if checkpoint_dir is not None else None
        identity = fit_identity(self.model, self.config, dims, train, None)
        identity["nodes"] = _circuit_digest(self.circuit)
        state = load_checkpoint(checkpoint, identity) if resume else None
        self.circuit_ = run = None
        start = time.perf_counter()
        try:
            with self.execution():
                run = EdgeRun(self.model, self.config, self.circuit, self.graph, train)
                run.prepare(progress)  # the full model's answers: no per-head inputs needed
                if state is not None:
                    run.load_state_dict(state)
                with per_head_inputs(self.model):
                    step_to_end(run, checkpoint, identity, progress, "edges")
        except BaseException:
            self.circuit_ = None if run is None else run.circuit()
            raise
        result = run.circuit(
            {
                "dataset": train.name,
                "n_pairs": len(train),
                "kl_empty": round(run.kl_empty, 6),
                "seconds": round(time.perf_counter() - start, 2),
            }
        )
        if validation is not None:
            held_out = evaluate_edges(self.model, [result], validation)[0]
            result.fit_info.update(
                validation_kl=held_out.kl, validation_recovered=held_out.recovered
            )
        self.circuit_ = result
        return result

    @contextmanager
    def execution(self) -> Iterator[None]:
        """How the model runs during an edge fit: weights frozen and laid out, gradients on,
        bf16 autocast if asked; all undone on exit. The steps also need
        :func:`~transformer_lens_mgp.per_head_inputs`."""
        with fitting(self.model, "an edge fit", self.config.bf16):
            yield


def _circuit_digest(circuit: Circuit) -> str:
    """Which nodes the circuit keeps, as a short digest (the identity of an edge fit)."""
    digest = hashlib.sha256()
    for g in circuit.dims.available():
        digest.update(g.encode() + circuit.kept(g).numpy().tobytes())
    return digest.hexdigest()[:16]
