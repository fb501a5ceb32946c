"""What an MLP neuron does on a task: what it writes directly onto the answer, and the tokens
of the dataset's prompts on which it fires hardest."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ..core.checks import check_positive_int
from ..core.data import PairedDataset
from ..core.errors import UsageError
from ..core.model_api import check_model_and_pairs
from ..core.nodes import NODE_NAMES, ModelDims, mlp_hook_name
from .direct import (
    FINAL_SCALE,
    answer_direction,
    at_answer,
    capture_clean_runs,
    check_node_list,
    through_final_norm,
    token_strings,
)

CONTEXT_TOKENS = 6
"""Tokens shown before an activating token."""


@dataclass(frozen=True)
class TokenActivation:
    """One place where a neuron fired: pair, position, the token there, its activation, and
    the prompt up to it with the token in brackets."""

    pair: int
    position: int
    token: str
    activation: float
    context: str


@dataclass(frozen=True)
class NeuronProfile:
    """One MLP neuron on one dataset, full model, clean prompts.

    Args:
        neuron: plain name, ``L5.mlp.1234``.
        layer: its layer.
        index: its index in the layer's MLP.
        direct_effect: mean direct effect of its output at the answer position on the logit
            difference, through ``W_out`` and ``W_U`` (NaN without wrong answers).
        mean_activation: its mean activation at the answer position.
        top_activations: the ``top_k`` largest activations over every prompt position up to
            the answer, largest first, one per distinct context.
    """

    neuron: str
    layer: int
    index: int
    direct_effect: float
    mean_activation: float
    top_activations: tuple[TokenActivation, ...]


@dataclass(frozen=True)
class NeuronProfiles:
    neurons: tuple[NeuronProfile, ...]
    n_pairs: int

    def to_dict(self) -> dict:
        return {"neurons": [asdict(p) for p in self.neurons], "n_pairs": self.n_pairs}

    @classmethod
    def from_dict(cls, data: dict) -> NeuronProfiles:
        neurons = tuple(
            NeuronProfile(
                **{
                    **p,
                    "top_activations": tuple(TokenActivation(**t) for t in p["top_activations"]),
                }
            )
            for p in data["neurons"]
        )
        return cls(neurons, data["n_pairs"])


@torch.no_grad()
def neuron_profiles(
    model,
    dataset: PairedDataset,
    neurons: Sequence[tuple[int, int]],
    *,
    top_k: int = 5,
    batch_size: int = 32,
) -> NeuronProfiles:
    """Profile MLP ``neurons`` (``(layer, index)`` pairs) on ``dataset``'s clean prompts."""
    check_positive_int("batch_size", batch_size)
    check_positive_int("top_k", top_k)
    dims = ModelDims.from_cfg(model.cfg)
    chosen = _neuron_list(neurons, dims)
    check_model_and_pairs(model, dims, dataset=dataset)
    layers = sorted({layer for layer, _ in chosen})
    by_layer = {layer: [i for at, i in chosen if at == layer] for layer in layers}
    readers = {
        mlp_hook_name(layer): (lambda act, batch, picked=by_layer[layer]: act[..., picked])
        for layer in layers
    }
    has_metric = dataset.wrong_answer_tokens is not None
    order = [(layer, i) for layer in layers for i in by_layer[layer]]
    direct = torch.zeros(len(order))
    at_end = torch.zeros(len(order))
    everywhere = []  # per batch: [b, pos, k] activations, -inf after the answer position
    w_out = model.W_out
    for batch, kept in capture_clean_runs(model, dataset, readers, batch_size):
        direction = answer_direction(model, batch) if has_metric else None
        acts = torch.cat([kept[mlp_hook_name(layer)] for layer in layers], dim=-1)
        end = at_answer(acts, batch)  # [b, k]
        at_end += end.float().sum(0).cpu()
        if direction is not None:
            rows = torch.stack([w_out[layer, i] for layer, i in order])  # [k, d_model]
            writes = end[..., None] * rows.to(end)
            normed = through_final_norm(model, writes, kept.get(FINAL_SCALE))
            direct += torch.einsum("bkm,bm->bk", normed, direction.to(normed)).float().sum(0).cpu()
        positions = torch.arange(acts.shape[1], device=acts.device)
        late = positions[None, :] > batch.answer_positions.to(acts.device)[:, None]
        everywhere.append(acts.float().masked_fill(late[..., None], float("-inf")).cpu())
    n = len(dataset)
    profiles = {}
    for j, (layer, i) in enumerate(order):
        profiles[(layer, i)] = NeuronProfile(
            neuron=NODE_NAMES["mlp_neuron"].format(layer, i),
            layer=layer,
            index=i,
            direct_effect=float(direct[j]) / n if has_metric else float("nan"),
            mean_activation=float(at_end[j]) / n,
            top_activations=_top_tokens(model, dataset, [a[..., j] for a in everywhere], top_k),
        )
    return NeuronProfiles(tuple(profiles[key] for key in chosen), n)


def _top_tokens(model, dataset: PairedDataset, batches, top_k: int) -> tuple:
    width = max(a.shape[1] for a in batches)
    padded = torch.cat(
        [torch.nn.functional.pad(a, (0, width - a.shape[1]), value=float("-inf")) for a in batches]
    )  # [n, width]
    # a few times more candidates than needed: prompts from one template repeat contexts
    values, flat = padded.flatten().topk(min(8 * top_k, padded.numel()))
    found, seen = [], set()
    for value, index in zip(values.tolist(), flat.tolist(), strict=True):
        if value == float("-inf") or len(found) == top_k:
            break
        pair, position = divmod(index, width)
        tokens = token_strings(model, dataset.clean_tokens[pair, : position + 1])
        before = "".join(tokens[max(0, position - CONTEXT_TOKENS) : position])
        context = f"{before}[{tokens[position]}]"
        if context in seen:
            continue
        seen.add(context)
        found.append(TokenActivation(pair, position, tokens[position], value, context))
    return tuple(found)


def _neuron_list(neurons, dims: ModelDims) -> list[tuple[int, int]]:
    if not dims.has_mlp:
        raise UsageError("this model has no MLPs, so it has no MLP neurons to profile")
    return check_node_list(neurons, dims.n_layers, dims.d_mlp, "MLP neuron")
