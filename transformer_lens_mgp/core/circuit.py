"""The result of a fit: which nodes the behaviour needs, at every granularity.

A Circuit holds the learned ``log_alpha`` of each trained granularity and derives the rest:
binary keep decisions, counts, summaries and TransformerLens hooks that run a model as the
circuit. It is data plus save/load: it knows nothing of the optimiser that produced it, and
figures and reports (``transformer_lens_mgp.analysis``) take a Circuit rather than being
drawn by it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from . import mib
from .data import PairedDataset
from .errors import UsageError
from .files import read_safetensors, write_safetensors
from .gates import HardConcrete
from .hooks import AblationSource, check_ablation, is_activation_cache, mask_hooks
from .model_api import FwdHooks, attached, model_dims, model_fingerprint
from .nodes import (
    GRANULARITIES,
    NODE_NAMES,
    PARENT,
    ModelDims,
    SiteMasks,
    check_granularity,
    finest,
    site_masks,
)

SCHEMA_VERSION = 2
_METADATA_KEY = "transformer_lens_mgp"
SURELY_KEPT, SURELY_DROPPED = 10.0, -10.0
"""``log_alpha`` of a node chosen rather than trained (deterministic mask 1 or 0)."""


@dataclass
class Circuit:
    """Nodes kept by multi-granular pruning.

    Args:
        dims: sizes of the model the circuit belongs to.
        log_alpha: learned Hard Concrete location per trained granularity (CPU tensors).
        hard_concrete: the gate constants used in training.
        config: the fit's settings (``PruningConfig.to_dict()``), for the record.
        fit_info: what the fit measured and saw: dataset name and size, ``kl_empty``,
            ``seconds``, and with a KL budget the chosen step and its validation KL.
        history: per-step training curves: ``loss``, ``kl`` and ``l0/<granularity>``
            (expected fraction of nodes kept).
        slots: for a circuit with one mask per token role (``PruningConfig(per_role=True)``),
            the roles and ``"other"``, in the order of the masks' leading axis; a node then
            counts once per slot it is kept in. Empty: every node holds at every position.
    """

    dims: ModelDims
    log_alpha: dict[str, Tensor]
    hard_concrete: HardConcrete = field(default_factory=HardConcrete)
    config: dict = field(default_factory=dict)
    fit_info: dict = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)
    slots: tuple[str, ...] = ()

    def __post_init__(self):
        self.slots = tuple(self.slots)
        for g, t in self.log_alpha.items():
            check_granularity(g)
            if tuple(t.shape) != self.shape(g):
                raise UsageError(
                    f"log_alpha[{g!r}] has shape {tuple(t.shape)} but a model of {self.dims} "
                    f"needs {self.shape(g)}" + (f" ({len(self.slots)} slots)" if self.slots else "")
                )
            if not torch.isfinite(t).all():
                raise UsageError(
                    f"log_alpha[{g!r}] holds NaN or infinite values, so it keeps no definite "
                    "set of nodes; fit the circuit again"
                )

    @classmethod
    def from_kept(cls, dims: ModelDims, kept: Mapping[str, Tensor], **fields) -> Circuit:
        """A circuit chosen rather than trained: ``kept[g]`` is a boolean mask per node of
        granularity ``g`` (granularities left out are not pruned)."""
        log_alpha = {
            g: torch.where(torch.as_tensor(k, dtype=torch.bool), SURELY_KEPT, SURELY_DROPPED)
            for g, k in kept.items()
        }
        return cls(dims=dims, log_alpha=log_alpha, **fields)

    @property
    def granularities(self) -> tuple[str, ...]:
        """The granularities that were trained (the others are kept whole)."""
        return tuple(g for g in GRANULARITIES if g in self.log_alpha)

    def shape(self, granularity: str) -> tuple[int, ...]:
        """Shape of the masks of ``granularity``: the model's, after the slot axis if any."""
        return self.dims.shape(granularity, len(self.slots))

    def any_position(self) -> Circuit:
        """The nodes kept in at least one slot, as a circuit without positions (itself when
        it has none): what analyses of nodes alone (edges, head roles, MIB files) read."""
        if not self.slots:
            return self
        return Circuit.from_kept(
            self.dims,
            {g: self.kept(g).any(0) for g in self.granularities},
            hard_concrete=self.hard_concrete,
            config=self.config,
            fit_info={**self.fit_info, "any_position_of": list(self.slots)},
        )

    def require_no_slots(self, what: str) -> None:
        """Raise for a per-role circuit where ``what`` reads nodes without positions."""
        if self.slots:
            raise UsageError(
                f"{what} reads nodes without token positions, and this circuit has one mask "
                f"per role {self.slots}; pass circuit.any_position() (the nodes kept in at "
                "least one slot)"
            )

    def require_slots(self, what: str) -> None:
        """Raise for a circuit without slots where ``what`` reads one mask per token role."""
        if not self.slots:
            raise UsageError(
                f"{what} shows a circuit with one mask per token role; this one has none "
                "(fit with PruningConfig(per_role=True))"
            )

    def check_roles(self, dataset: PairedDataset) -> None:
        """Raise unless ``dataset`` records the roles this per-role circuit was fitted with."""
        if self.slots and (*dataset.roles, "other") != self.slots:
            raise UsageError(
                f"this circuit has one mask per token role {self.slots[:-1]}, but these pairs "
                f"record roles {dataset.roles}; build them with the task builder it was fitted "
                "on (or give the same roles with with_roles)"
            )

    @property
    def ablation(self) -> str:
        """What the nodes outside the circuit output, as trained (``"corrupted"`` by default)."""
        return self.config.get("ablation", "corrupted")

    def mask(self, granularity: str) -> Float[Tensor, "*nodes"]:
        """Deterministic mask values in [0, 1] of one granularity, before hierarchy."""
        shape = self.shape(granularity)
        if granularity not in self.log_alpha:
            return torch.ones(shape)
        return self.hard_concrete.deterministic(self.log_alpha[granularity])

    def site_masks(self) -> SiteMasks:
        """The circuit's binary masks at the two hook sites (a unit is 1 when it and every
        ancestor are kept)."""
        own = {g: (self.mask(g) > 0.5).float() for g in self.granularities}
        return site_masks(own, self.dims)

    def kept(self, granularity: str) -> Bool[Tensor, "*nodes"]:
        """Which nodes survive: their own mask exceeds 0.5, every ancestor survives and, for a
        parent, at least one of its descendants does."""
        check_granularity(granularity)
        self.dims.shape(granularity)
        attn, mlp = self.site_masks()
        attn = attn.bool()
        if granularity == "attn_neuron":
            return attn
        if granularity == "head":
            return attn.any(-1)
        if granularity == "mlp_neuron":
            return mlp.bool()
        if granularity == "mlp":
            return mlp.bool().any(-1)
        layer_alive = attn.flatten(-2).any(-1)
        return layer_alive | mlp.bool().any(-1) if mlp is not None else layer_alive

    def n_kept(self, granularity: str) -> int:
        return int(self.kept(granularity).sum())

    def n_total(self, granularity: str) -> int:
        return self.dims.n_nodes(granularity) * max(1, len(self.slots))

    def fraction_kept(self, granularity: str) -> float:
        return self.n_kept(granularity) / self.n_total(granularity)

    def size(self) -> float:
        """Kept fraction of the finest trained nodes (attention and MLP neurons when both are
        trained), the size axis of sweeps and budgets."""
        leaves = finest(self.granularities)
        return sum(self.n_kept(g) for g in leaves) / sum(self.n_total(g) for g in leaves)

    def nodes(self, granularity: str) -> list[str]:
        """Kept nodes by plain name: ``L5`` (block), ``L5.H3``, ``L5.H3.d12`` (attention
        neuron), ``L5.mlp``, ``L5.mlp.1234`` (MLP neuron); in a per-role circuit with the
        slot after an ``@``: ``L5.H3@END``."""
        return [self._name(granularity, i) for i in self.kept(granularity).nonzero().tolist()]

    def _name(self, granularity: str, index: list[int]) -> str:
        if not self.slots:
            return NODE_NAMES[granularity].format(*index)
        return f"{NODE_NAMES[granularity].format(*index[1:])}@{self.slots[index[0]]}"

    def to_networkx(self):
        """The kept nodes as a ``networkx.DiGraph`` whose edges link each node to its kept
        children (block -> head -> attention neuron, block -> MLP -> MLP neuron). Node
        attributes: ``granularity``, ``index``, ``log_alpha`` (absent when not trained)."""
        import networkx as nx

        graph = nx.DiGraph(dims=self.dims.to_dict())
        for g in self.dims.available():
            for index in self.kept(g).nonzero().tolist():
                name = self._name(g, index)
                attrs = {"granularity": g, "index": tuple(index)}
                if g in self.log_alpha:
                    attrs["log_alpha"] = float(self.log_alpha[g][tuple(index)])
                graph.add_node(name, **attrs)
                parent = PARENT[g]
                if parent is not None:
                    above = index[: len(self.shape(parent))]
                    graph.add_edge(self._name(parent, above), name)
        return graph

    def summary(self) -> str:
        """A plain-text table of kept nodes per granularity and the measured numbers."""
        lines = [f"{'granularity':<12} {'kept':>8} {'total':>8} {'kept %':>8}"]
        for g in self.dims.available():
            mark = "" if g in self.granularities else "  (not pruned)"
            lines.append(
                f"{g:<12} {self.n_kept(g):>8} {self.n_total(g):>8} "
                f"{100 * self.fraction_kept(g):>7.2f}%{mark}"
            )
        if self.slots:
            lines.append(f"(node, position) pairs, one mask per slot of {', '.join(self.slots)}")
        if self.history.get("kl"):
            lines.append(f"final training KL: {self.history['kl'][-1]:.4f}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        kept = ", ".join(f"{g}={self.n_kept(g)}/{self.n_total(g)}" for g in self.granularities)
        return f"Circuit({kept})"

    # --- running a model as the circuit -------------------------------------------------

    def check_model(self, model) -> None:
        """Raise if ``model`` is not the size of the model this circuit was found on."""
        dims = ModelDims.from_cfg(model.cfg)
        if dims != self.dims:
            raise UsageError(
                f"this circuit was found on a model with {self.dims}, but the given model has "
                f"{dims}; use the model the circuit was discovered on"
            )

    def fwd_hooks(
        self,
        source: PairedDataset | Tensor | dict[str, Tensor] | None = None,
        *,
        model=None,
        ablation: str | None = None,
        knockout: bool = False,
        answer_positions: Tensor | None = None,
    ) -> FwdHooks:
        """TransformerLens ``fwd_hooks`` that run a model as this circuit.

        Nodes outside the circuit get their ablated value, by default the circuit's own
        ablation (as in :func:`~transformer_lens_mgp.evaluate`): for ``"corrupted"`` the
        activation on the corrupted prompts (pass a :class:`PairedDataset`, a tensor of
        corrupted tokens with ``model=``, or a ``run_with_cache`` cache of the corrupted run);
        for ``"mean"`` the mean over the corrupted prompts' positions up to each answer (a
        dataset knows them; with tokens or a cache give ``answer_positions=``, else every
        position counts); for ``"zero"`` nothing is needed.
        With ``knockout=True`` it is the other way round: exactly the circuit's units
        (attention dimensions, MLP neurons) get the ablated value, i.e. activation patching
        restricted to the circuit, and everything else runs clean. A per-role circuit needs
        the pairs (a :class:`PairedDataset` recording its roles) and runs on their clean
        prompts.
        """
        ablation = ablation or self.ablation
        check_ablation(ablation)
        slots = None
        if self.slots:
            if not isinstance(source, PairedDataset):
                raise UsageError(
                    f"this circuit has one mask per token role {self.slots[:-1]}: pass the "
                    "PairedDataset whose clean prompts the model will run (it knows each "
                    "token's role)"
                )
            self.check_roles(source)
            slots = source.role_slots()
        masks = self.site_masks()
        if knockout:
            masks = masks.complement()
        if model is not None and ablation != "zero" and not is_activation_cache(source):
            self.check_model(model)
        ablated = AblationSource.activations(
            ablation, self.dims, source, model=model, answer_positions=answer_positions
        )
        return mask_hooks(self.dims, masks, ablated, slots)

    @contextmanager
    def applied(
        self, model, source=None, *, ablation: str | None = None, knockout: bool = False
    ) -> Iterator:
        """Inside the block, ``model`` runs as the circuit (or, with ``knockout=True``, with
        the circuit ablated); on exit its hooks are gone."""
        self.check_model(model)
        hooks = self.fwd_hooks(source, model=model, ablation=ablation, knockout=knockout)
        with attached(model, hooks):
            yield model

    # --- files --------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """One safetensors file: the ``log_alpha`` tensors plus JSON metadata."""
        tensors, meta = self.file_parts()
        return write_safetensors(path, tensors, {_METADATA_KEY: meta}, "circuit.safetensors")

    def file_parts(self) -> tuple[dict[str, Tensor], dict]:
        """The tensors and the JSON metadata of the circuit's file."""
        meta = {
            "schema_version": SCHEMA_VERSION,
            "dims": self.dims.to_dict(),
            "hard_concrete": self.hard_concrete.to_dict(),
            "config": self.config,
            "fit_info": self.fit_info,
            "history": self.history,
            "slots": list(self.slots),
        }
        tensors = {g: t.detach().cpu().float().contiguous() for g, t in self.log_alpha.items()}
        return tensors, meta

    def to_mib(self, path: str | Path, model=None, *, edges=None) -> Path:
        """Write the circuit as MIB circuit-track JSON (heads and MLPs, scored by their
        learned gates; with ``edges``, an :class:`EdgeCircuit`, its learned edges). MIB's files
        record ``d_model``: taken from ``model``, else from the fit. See :mod:`.mib` for what
        cannot map (our neurons)."""
        self.require_no_slots("a MIB circuit file")
        d_model = model.cfg.d_model if model is not None else self.fit_info.get("d_model")
        if d_model is None:
            raise UsageError(
                "MIB's files record d_model; pass the model: circuit.to_mib(path, model)"
            )
        block = self.mask("block")
        has_mlp = self.dims.d_mlp is not None
        scores, in_graph = mib.node_table(
            self.dims,
            head_score=block[:, None] * self.mask("head"),
            heads=self.kept("head"),
            mlp_score=block * self.mask("mlp") if has_mlp else block,
            mlps=self.kept("mlp") if has_mlp else None,
        )
        learned = None if edges is None else mib.learned_edges(edges.kept_rows())
        return mib.write_mib(path, mib.mib_document(self.dims, scores, in_graph, d_model, learned))

    @classmethod
    def from_mib(cls, path: str | Path, model) -> Circuit:
        """The heads and MLPs of a MIB circuit-track JSON file (written by MIB, EAP-IG or
        :meth:`to_mib`) as a circuit of ``model``, their neurons kept whole, so that
        ``evaluate`` and ``compare`` work on circuits other tools found."""
        kept = mib.read_mib(path, model_dims(model))
        return cls.from_kept(
            model_dims(model), kept, fit_info={"source": f"MIB file {Path(path).name}"}
        )

    @classmethod
    def load(cls, path: str | Path, model=None) -> Circuit:
        """Read a file written by :meth:`save`; with ``model``, check it fits that model."""
        tensors, meta = read_safetensors(path, "circuit")
        meta = meta.get(_METADATA_KEY)
        if not isinstance(meta, dict) or "dims" not in meta:
            raise UsageError(f"{path} is a safetensors file but not a circuit (no metadata)")
        circuit = cls.from_file_parts(tensors, meta, path)
        if model is not None:
            circuit.check_model(model)
            warn_if_other_weights(model, [circuit])
        return circuit

    @classmethod
    def from_file_parts(cls, tensors: dict[str, Tensor], meta: dict, path) -> Circuit:
        """The circuit whose :meth:`file_parts` are these, with clear errors for a file
        that was changed or written by another tool."""
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise UsageError(
                f"{path} has circuit schema {meta.get('schema_version')}, this version reads "
                f"{SCHEMA_VERSION}; upgrade transformer-lens-mgp"
            )
        if not tensors:
            raise UsageError(
                f"{path} holds no masks, only metadata; it was changed or written by another "
                "tool: save the circuit again with Circuit.save"
            )
        unknown = set(tensors) - set(GRANULARITIES)
        if unknown:
            raise UsageError(
                f"{path} holds unknown granularities {sorted(unknown)}; it was changed or "
                "written by another tool: save the circuit again with Circuit.save"
            )
        try:
            return cls(
                dims=ModelDims(**meta["dims"]),
                log_alpha={g: tensors[g] for g in GRANULARITIES if g in tensors},
                hard_concrete=HardConcrete(**meta["hard_concrete"]),
                config=dict(meta.get("config", {})),
                fit_info=dict(meta.get("fit_info", {})),
                history=dict(meta.get("history", {})),
                slots=tuple(meta.get("slots", ())),
            )
        except UsageError as err:
            raise UsageError(f"{path} is not a valid circuit file: {err}") from None
        except (KeyError, TypeError, ValueError, StopIteration) as err:
            raise UsageError(
                f"{path} has damaged circuit metadata ({type(err).__name__}: {err}); it was "
                "changed or written by another tool: save the circuit again with Circuit.save"
            ) from None


def warn_if_other_weights(model, circuits) -> None:
    """Warn if ``model``'s weights differ from those of the model a circuit was fitted on
    (its ``fit_info["model_fingerprint"]``; one content hash of the weights per call): the
    circuit still runs, but its nodes were chosen for the other weights (a fine-tuned model,
    say)."""
    recorded = {c.fit_info.get("model_fingerprint") for c in circuits} - {None}
    if recorded and recorded != {model_fingerprint(model)}:
        warnings.warn(
            "this model has other weights than the model the circuit was fitted on (same "
            "sizes); the circuit runs, but its nodes were chosen for the other weights",
            stacklevel=3,
        )
