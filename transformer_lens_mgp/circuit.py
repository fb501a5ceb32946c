"""The result of a fit: which nodes the behaviour needs, at every granularity.

A Circuit holds the learned ``log_alpha`` of each trained granularity and derives the rest:
binary keep decisions, counts, summaries and TransformerLens hooks that run a model as
the circuit. It knows nothing of the optimiser that produced it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Bool, Float
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from .data import PairedDataset
from .granularity import (
    GRANULARITIES,
    NODE_NAMES,
    PARENT,
    ModelDims,
    check_granularity,
    finest,
    site_masks,
)
from .interventions import (
    FwdHooks,
    check_ablation,
    check_hook_points,
    mask_hooks,
    mean_activations,
    model_device,
    site_activations,
    zero_activations,
)
from .masks import HardConcrete

SCHEMA_VERSION = 1
_METADATA_KEY = "transformer_lens_mgp"


@dataclass
class Circuit:
    """Nodes kept by multi-granular pruning.

    Args:
        dims: sizes of the model the circuit belongs to.
        log_alpha: learned Hard Concrete location per trained granularity (CPU tensors).
        hard_concrete: the gate constants used in training.
        config: the hyperparameters of the fit, for the record.
        history: per-step training curves: ``loss``, ``kl`` and ``l0/<granularity>``
            (expected fraction of nodes kept).
        metrics: evaluation results, filled by :func:`transformer_lens_mgp.evaluate`.
    """

    dims: ModelDims
    log_alpha: dict[str, Tensor]
    hard_concrete: HardConcrete = field(default_factory=HardConcrete)
    config: dict = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    def __post_init__(self):
        for g, t in self.log_alpha.items():
            if tuple(t.shape) != self.dims.shape(g):
                raise ValueError(
                    f"log_alpha[{g!r}] has shape {tuple(t.shape)} but a model of {self.dims} "
                    f"needs {self.dims.shape(g)}"
                )

    @property
    def granularities(self) -> tuple[str, ...]:
        """The granularities that were trained (the others are kept whole)."""
        return tuple(g for g in GRANULARITIES if g in self.log_alpha)

    def mask(self, granularity: str) -> Float[Tensor, "*nodes"]:
        """Deterministic mask values in [0, 1] of one granularity, before hierarchy."""
        shape = self.dims.shape(granularity)
        if granularity not in self.log_alpha:
            return torch.ones(shape)
        return self.hard_concrete.deterministic(self.log_alpha[granularity])

    def _site_masks(self) -> tuple[Tensor, Tensor | None]:
        own = {g: (self.mask(g) > 0.5).float() for g in self.granularities}
        return site_masks(own, self.dims)

    def kept(self, granularity: str) -> Bool[Tensor, "*nodes"]:
        """Which nodes survive: their own mask exceeds 0.5, every ancestor survives and, for a
        parent, at least one of its descendants does."""
        check_granularity(granularity)
        self.dims.shape(granularity)
        attn, mlp = self._site_masks()
        attn = attn.bool()
        if granularity == "attn_neuron":
            return attn
        if granularity == "head":
            return attn.any(-1)
        if granularity == "mlp_neuron":
            return mlp.bool()
        if granularity == "mlp":
            return mlp.bool().any(-1)
        layer_alive = attn.flatten(1).any(-1)
        return layer_alive | mlp.bool().any(-1) if mlp is not None else layer_alive

    def n_kept(self, granularity: str) -> int:
        return int(self.kept(granularity).sum())

    def n_total(self, granularity: str) -> int:
        return self.dims.n_nodes(granularity)

    def fraction_kept(self, granularity: str) -> float:
        return self.n_kept(granularity) / self.n_total(granularity)

    def size(self) -> float:
        """Kept fraction of the finest trained nodes (attention and MLP neurons when both are
        trained), the size axis of sweeps and budgets."""
        leaves = finest(self.granularities)
        return sum(self.n_kept(g) for g in leaves) / sum(self.n_total(g) for g in leaves)

    def nodes(self, granularity: str) -> list[str]:
        """Kept nodes by plain name: ``L5`` (block), ``L5.H3``, ``L5.H3.d12`` (attention
        neuron), ``L5.mlp``, ``L5.mlp.1234`` (MLP neuron)."""
        return [
            NODE_NAMES[granularity].format(*i) for i in self.kept(granularity).nonzero().tolist()
        ]

    def to_networkx(self):
        """The kept nodes as a ``networkx.DiGraph`` whose edges link each node to its kept
        children (block -> head -> attention neuron, block -> MLP -> MLP neuron). Node
        attributes: ``granularity``, ``index``, ``log_alpha`` (absent when not trained)."""
        import networkx as nx

        graph = nx.DiGraph(dims=self.dims.to_dict())
        for g in self.dims.available():
            for index in self.kept(g).nonzero().tolist():
                name = NODE_NAMES[g].format(*index)
                attrs = {"granularity": g, "index": tuple(index)}
                if g in self.log_alpha:
                    attrs["log_alpha"] = float(self.log_alpha[g][tuple(index)])
                graph.add_node(name, **attrs)
                parent = PARENT[g]
                if parent is not None:
                    above = index[: len(self.dims.shape(parent))]
                    graph.add_edge(NODE_NAMES[parent].format(*above), name)
        return graph

    def summary(self) -> str:
        """A plain-text table of kept nodes per granularity and the key metrics."""
        lines = [f"{'granularity':<12} {'kept':>8} {'total':>8} {'kept %':>8}"]
        for g in self.dims.available():
            mark = "" if g in self.granularities else "  (not pruned)"
            lines.append(
                f"{g:<12} {self.n_kept(g):>8} {self.n_total(g):>8} "
                f"{100 * self.fraction_kept(g):>7.2f}%{mark}"
            )
        if self.history.get("kl"):
            lines.append(f"final training KL: {self.history['kl'][-1]:.4f}")
        for key, value in self.metrics.items():
            if isinstance(value, float) and not math.isnan(value):
                lines.append(f"{key}: {value:.4f}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        kept = ", ".join(f"{g}={self.n_kept(g)}/{self.n_total(g)}" for g in self.granularities)
        return f"Circuit({kept})"

    # --- figures (plotly is imported only when asked for) --------------------------------

    def plot_neuron_map(self, granularity: str = "mlp_neuron"):
        """Layers x neurons figure of kept nodes; see :mod:`transformer_lens_mgp.plotting`."""
        from .plotting import plot_neuron_map

        return plot_neuron_map(self, granularity)

    def plot_head_map(self):
        from .plotting import plot_head_map

        return plot_head_map(self)

    def report(self, path: str | Path, title: str = "Circuit") -> Path:
        """Write a self-contained HTML report with the summary, metrics and every figure."""
        from .plotting import write_report

        return write_report(self, path, self.metrics or None, title)

    # --- running a model as the circuit -------------------------------------------------

    def check_model(self, model) -> None:
        """Raise if ``model`` is not the size of the model this circuit was found on."""
        dims = ModelDims.from_cfg(model.cfg)
        if dims != self.dims:
            raise ValueError(
                f"this circuit was found on a model with {self.dims}, but the given model has "
                f"{dims}; use the model the circuit was discovered on"
            )

    def fwd_hooks(
        self,
        source: PairedDataset | Tensor | dict[str, Tensor] | None = None,
        *,
        model=None,
        ablation: str = "corrupted",
        knockout: bool = False,
    ) -> FwdHooks:
        """TransformerLens ``fwd_hooks`` that run a model as this circuit.

        Nodes outside the circuit get their ablated value: for ``"corrupted"`` the activation
        on the corrupted prompts (pass a :class:`PairedDataset`, a tensor of corrupted tokens
        with ``model=``, or a ``run_with_cache`` cache of the corrupted run); for ``"mean"``
        the mean over the corrupted prompts; for ``"zero"`` nothing is needed.
        With ``knockout=True`` it is the other way round: exactly the circuit's units
        (attention dimensions, MLP neurons) get the ablated value, i.e. activation patching
        restricted to the circuit, and everything else runs clean.
        """
        check_ablation(ablation)
        attn, mlp = self._site_masks()
        if knockout:
            attn, mlp = 1 - attn, None if mlp is None else 1 - mlp
        ablated = self._ablated_activations(source, model, ablation)
        device = next(iter(ablated.values())).device
        return mask_hooks(
            self.dims, attn.to(device), None if mlp is None else mlp.to(device), ablated
        )

    @contextmanager
    def applied(
        self, model, source=None, *, ablation: str = "corrupted", knockout: bool = False
    ) -> Iterator:
        """Inside the block, ``model`` runs as the circuit (or, with ``knockout=True``, with
        the circuit ablated); on exit its hooks are gone."""
        self.check_model(model)
        hooks = self.fwd_hooks(source, model=model, ablation=ablation, knockout=knockout)
        with model.hooks(fwd_hooks=hooks):
            yield model

    def _ablated_activations(self, source, model, ablation: str) -> dict[str, Tensor]:
        names = self.dims.hook_names()
        if ablation == "zero":
            return zero_activations(self.dims, model_device(model) if model is not None else "cpu")
        if isinstance(source, dict) or hasattr(source, "cache_dict"):
            cache = getattr(source, "cache_dict", source)
            missing = [n for n in names if n not in cache]
            if missing:
                raise ValueError(
                    f"the activation cache lacks {missing[:3]}; cache every hook_z "
                    "and mlp.hook_post of the corrupted run"
                )
            acts = {n: cache[n] for n in names}
            if ablation == "mean":
                acts = {n: a.flatten(0, 1).mean(0) for n, a in acts.items()}
            return acts
        if model is None:
            raise ValueError(
                "pass model= to compute the ablated activations from corrupted tokens "
                "(or pass an activation cache of the corrupted run)"
            )
        if source is None:
            raise ValueError(
                f"ablation={ablation!r} needs the corrupted prompts: pass a "
                "PairedDataset or a tensor of corrupted tokens"
            )
        self.check_model(model)
        check_hook_points(model, self.dims)
        tokens = source.corrupted_tokens if isinstance(source, PairedDataset) else source
        if ablation == "mean":
            return mean_activations(model, tokens, self.dims)
        return site_activations(model, tokens, self.dims)

    # --- files --------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """One safetensors file: the ``log_alpha`` tensors plus JSON metadata."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "schema_version": SCHEMA_VERSION,
            "dims": self.dims.to_dict(),
            "hard_concrete": self.hard_concrete.to_dict(),
            "config": self.config,
            "history": self.history,
            "metrics": self.metrics,
        }
        tensors = {g: t.detach().cpu().float().contiguous() for g, t in self.log_alpha.items()}
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={_METADATA_KEY: json.dumps(meta)})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, model=None) -> Circuit:
        """Read a file written by :meth:`save`; with ``model``, check it fits that model."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no circuit file at {path}")
        try:
            tensors = load_file(str(path))

            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get(_METADATA_KEY)
            meta = json.loads(raw) if raw is not None else None
        except (SafetensorError, json.JSONDecodeError, OSError, ValueError) as err:
            raise ValueError(f"{path} is not a readable circuit file ({err})") from None
        if not isinstance(meta, dict) or "dims" not in meta:
            raise ValueError(f"{path} is a safetensors file but not a circuit (no metadata)")
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"{path} has circuit schema {meta.get('schema_version')}, this version reads "
                f"{SCHEMA_VERSION}; upgrade transformer-lens-mgp"
            )
        unknown = set(tensors) - set(GRANULARITIES)
        if unknown:
            raise ValueError(
                f"{path} holds unknown granularities {sorted(unknown)}; it was changed or "
                "written by another tool: save the circuit again with Circuit.save"
            )
        circuit = cls(
            dims=ModelDims(**meta["dims"]),
            log_alpha={g: tensors[g] for g in GRANULARITIES if g in tensors},
            hard_concrete=HardConcrete(**meta["hard_concrete"]),
            config=meta.get("config", {}),
            history=meta.get("history", {}),
            metrics=meta.get("metrics", {}),
        )
        if model is not None:
            circuit.check_model(model)
        return circuit
