"""Which kept nodes matter most: each one's effect on its circuit when it alone is removed.

Removing a node means giving it its ablated value (the corrupted prompt's, by default) while
the rest of the circuit runs as before. Every kept head and MLP is measured exactly, one
masked run each; MLP neurons are too many for that, so they are ranked first by a one-pass
gradient estimate and only the ``top_neurons`` best are measured exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ..core.checks import check_positive_int
from ..core.circuit import Circuit
from ..core.data import PairedDataset
from ..core.errors import UsageError
from ..core.hooks import AblationSource, mask_hooks
from ..core.metrics import kl_divergence, task_metric
from ..core.model_api import attached, check_model_and_pairs, model_device
from ..core.nodes import NODE_NAMES, SiteMasks
from ..runtime.forward import (
    answer_logits,
    answer_logits_from,
    batches_with_rows,
    can_resume,
    masked_answer_logits,
    reference_logits,
)
from ..runtime.guard import exclusive, frozen
from ..runtime.layout import forward_layout


@dataclass(frozen=True)
class NodeEffect:
    """What the circuit loses without one node.

    Args:
        node: the node's plain name (as :meth:`Circuit.nodes`): ``L5.H3``, ``L5.mlp``,
            ``L5.mlp.1234``.
        granularity: ``"head"``, ``"mlp"`` or ``"mlp_neuron"``.
        index: the node's index (layer first).
        delta_kl: KL(full || circuit without the node) minus KL(full || circuit); positive
            when the node helps the circuit imitate the model.
        delta_metric: the task metric without the node minus with it; negative when the node
            pushes towards the right answer.
    """

    node: str
    granularity: str
    index: tuple[int, ...]
    delta_kl: float
    delta_metric: float


@dataclass(frozen=True)
class NodeEffects:
    """The removal effects of a circuit's nodes on one dataset, largest ``delta_kl`` first.

    Args:
        effects: one entry per measured node.
        kl: the whole circuit's KL on the same pairs.
        metric: the whole circuit's task metric (NaN without wrong answers).
        n_pairs: pairs measured.
    """

    effects: tuple[NodeEffect, ...]
    kl: float
    metric: float
    n_pairs: int

    def top(self, n: int = 10, granularity: str | None = None) -> list[NodeEffect]:
        """The ``n`` largest effects, of one granularity if given."""
        chosen = [e for e in self.effects if granularity in (None, e.granularity)]
        return chosen[:n]

    def to_dict(self) -> dict:
        return {
            "kl": self.kl,
            "metric": self.metric,
            "n_pairs": self.n_pairs,
            "effects": [asdict(e) for e in self.effects],
        }

    @classmethod
    def from_dict(cls, data: dict) -> NodeEffects:
        effects = tuple(NodeEffect(**{**e, "index": tuple(e["index"])}) for e in data["effects"])
        return cls(effects, data["kl"], data["metric"], data["n_pairs"])


def node_effects(
    model,
    circuit: Circuit,
    dataset: PairedDataset,
    *,
    top_neurons: int = 20,
    batch_size: int = 32,
    progress: bool = False,
) -> NodeEffects:
    """Remove each kept head, each kept MLP and the ``top_neurons`` most promising kept MLP
    neurons one at a time, and measure the circuit without it on ``dataset`` (held-out pairs,
    ideally). Costs one masked forward over ``dataset`` per measured node."""
    check_positive_int("batch_size", batch_size)
    if isinstance(top_neurons, bool) or not isinstance(top_neurons, int) or top_neurons < 0:
        raise UsageError(f"top_neurons must be a whole number >= 0, got {top_neurons!r}")
    circuit.check_model(model)
    circuit.require_no_slots("node_effects")
    check_model_and_pairs(model, circuit.dims, dataset=dataset)
    masks = circuit.site_masks()
    candidates = _heads_and_mlps(circuit)
    with exclusive(model, "node effects"), forward_layout(model):
        full, source = _references(model, circuit, dataset, batch_size)
        if top_neurons and masks.mlp is not None and masks.mlp.any():
            estimate = _estimates(model, circuit, dataset, full, source, batch_size)
            candidates += _top_neurons(circuit, masks, estimate, top_neurons)
        totals = _removal_totals(
            model, circuit, dataset, full, source, masks, candidates, batch_size, progress
        )
    n = len(dataset)
    (own_kl, own_metric), *rest = ((kl / n, metric / n) for kl, metric in totals)
    effects = [
        NodeEffect(
            node=NODE_NAMES[g].format(*index),
            granularity=g,
            index=tuple(index),
            delta_kl=kl - own_kl,
            delta_metric=metric - own_metric,
        )
        for (g, index), (kl, metric) in zip(candidates, rest, strict=True)
    ]
    effects.sort(key=lambda e: -e.delta_kl)
    return NodeEffects(tuple(effects), own_kl, own_metric, n)


def _references(model, circuit: Circuit, dataset: PairedDataset, batch_size: int):
    """The full model's answer logits and the circuit's ablation values on ``dataset``."""
    full = reference_logits(model, dataset, batch_size)
    return full, AblationSource.for_dataset(model, circuit.ablation, dataset, circuit.dims)


@torch.no_grad()
def _removal_totals(model, circuit, dataset, full, source, masks, candidates, batch_size, progress):
    """Summed KL and task metric over ``dataset``, of the circuit and then of the circuit
    without each candidate. On a HookedTransformer a variant resumes from the circuit's own
    residual stream at its node's layer, since the blocks before it run the same."""
    dims = circuit.dims
    device = model_device(model)
    masks = masks.to(device)
    variants = [_without(masks, g, index) for g, index in candidates]
    layers = [index[0] for _, index in candidates]
    has_metric = dataset.wrong_answer_tokens is not None
    totals = [[0.0, 0.0 if has_metric else float("nan")] for _ in range(len(candidates) + 1)]
    bar = tqdm(total=len(dataset) * (len(candidates) + 1), desc="node effects",
               disable=not progress, leave=False)  # fmt: skip
    for batch, rows in batches_with_rows(dataset, batch_size, device):
        ablated = source.values(model, batch)
        streams: dict[int, Tensor] = {}
        keep = [(f"blocks.{layer}.hook_resid_pre", _saver(streams, layer))
                for layer in sorted(set(layers))] if can_resume(model) else []  # fmt: skip
        with attached(model, mask_hooks(dims, masks, ablated) + keep):
            runs = [answer_logits(model, batch.clean_tokens, batch.answer_positions)]
        bar.update(len(batch))
        positions = batch.answer_positions
        for variant, layer in zip(variants, layers, strict=True):
            with attached(model, mask_hooks(dims, variant, ablated)):
                if streams:
                    logits = answer_logits_from(model, streams[layer], layer, positions)
                else:
                    logits = answer_logits(model, batch.clean_tokens, positions)
            runs.append(logits)
            bar.update(len(batch))
        reference = full[rows].to(device)
        for logits, total in zip(runs, totals, strict=True):
            total[0] += kl_divergence(reference, logits).item() * len(batch)
            if has_metric:
                total[1] += task_metric(logits, batch).sum().item()
    bar.close()
    return totals


def _saver(streams: dict, layer: int):
    def hook(act, hook):
        streams[layer] = act.detach()

    return hook


def neuron_removal_estimates(
    model, circuit: Circuit, dataset: PairedDataset, *, batch_size: int = 32
) -> Float[Tensor, "n_layers d_mlp"]:
    """First-order estimate, per MLP neuron, of how much removing it alone changes the
    circuit's task metric (its KL without wrong answers): minus the gradient with respect to
    the neuron's mask, at the circuit's masks. One forward and backward pass over ``dataset``."""
    with exclusive(model, "node effects"), forward_layout(model):
        full, source = _references(model, circuit, dataset, batch_size)
        return _estimates(model, circuit, dataset, full, source, batch_size)


def _estimates(model, circuit, dataset, full, source, batch_size) -> Tensor:
    dims = circuit.dims
    device = model_device(model)
    masks = circuit.site_masks().to(device)
    mlp = masks.mlp.clone().requires_grad_(True)
    with torch.inference_mode(False), torch.enable_grad(), frozen(model):
        for batch, rows in batches_with_rows(dataset, batch_size, device):
            logits = masked_answer_logits(
                model, batch, dims, SiteMasks(masks.attn, mlp), source.values(model, batch)
            )
            if batch.wrong_answer_tokens is not None:
                value = task_metric(logits, batch).sum()
            else:
                value = kl_divergence(full[rows].to(logits.device), logits) * len(batch)
            value.backward()
    return -mlp.grad.detach().cpu() / len(dataset)


def _heads_and_mlps(circuit: Circuit) -> list[tuple[str, list[int]]]:
    found = [("head", i) for i in circuit.kept("head").nonzero().tolist()]
    if circuit.dims.has_mlp:
        found += [("mlp", i) for i in circuit.kept("mlp").nonzero().tolist()]
    return found


def _top_neurons(
    circuit: Circuit, masks: SiteMasks, estimate: Tensor, n: int
) -> list[tuple[str, list[int]]]:
    score = torch.where(masks.mlp.bool(), estimate.abs(), torch.tensor(-1.0))
    n = min(n, int(masks.mlp.sum()))
    flat = score.flatten().topk(n).indices
    d_mlp = circuit.dims.d_mlp
    return [("mlp_neuron", [int(i) // d_mlp, int(i) % d_mlp]) for i in flat]


def _without(masks: SiteMasks, granularity: str, index) -> SiteMasks:
    """The circuit's masks with one node given its ablated value."""
    attn = masks.attn.clone()
    mlp = None if masks.mlp is None else masks.mlp.clone()
    if granularity == "head":
        attn[tuple(index)] = 0
    elif granularity == "mlp":
        mlp[index[0]] = 0
    else:
        mlp[tuple(index)] = 0
    return SiteMasks(attn, mlp)
