"""What an MLP neuron does on a task: what it writes directly onto the answer, which tokens its
write direction promotes and suppresses through the unembedding, and the tokens of the
dataset's prompts on which it fires hardest (with context on both sides)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ..core.checks import check_positive_int
from ..core.data import PairedDataset
from ..core.errors import UsageError
from ..core.model_api import attached, check_model_and_pairs, model_device
from ..core.nodes import NODE_NAMES, ModelDims, mlp_hook_name
from ..runtime.guard import exclusive
from .corpus import CORPUS
from .direct import (
    FINAL_SCALE,
    answer_direction,
    at_answer,
    capture_clean_runs,
    check_node_list,
    has_final_scale,
    through_final_norm,
    token_strings,
)

CONTEXT_TOKENS = 6
"""Tokens shown before an activating token."""

AFTER_TOKENS = 3
"""Tokens shown after it."""

OUTPUT_TOKENS = 5
"""Tokens listed as a neuron's most promoted and most suppressed."""


@dataclass(frozen=True)
class TokenActivation:
    """One place where a neuron fired: pair, position, the token there, its activation, and
    the prompt around it with the token in brackets."""

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
        promotes: the tokens its write direction (``W_out`` row through ``W_U``) raises most.
        suppresses: the tokens it lowers most.
        on_text: its largest activations on text beyond the task (:data:`.corpus.CORPUS`),
            one per line, with context on both sides (empty for a model without a
            tokenizer).
        first_token: its largest activation is on the prompt's first token, where models
            park attention and write large constant vectors: an artefact more often than a
            feature.
    """

    neuron: str
    layer: int
    index: int
    direct_effect: float
    mean_activation: float
    top_activations: tuple[TokenActivation, ...]
    promotes: tuple[str, ...] = ()
    suppresses: tuple[str, ...] = ()
    on_text: tuple[TokenActivation, ...] = ()
    first_token: bool = False


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
                    "promotes": tuple(p.get("promotes", ())),
                    "suppresses": tuple(p.get("suppresses", ())),
                    "on_text": tuple(TokenActivation(**t) for t in p.get("on_text", ())),
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
    on_text = text_activations(model, order, top_k)
    profiles = {}
    for j, (layer, i) in enumerate(order):
        top = _top_tokens(model, dataset, [a[..., j] for a in everywhere], top_k)
        promotes, suppresses = output_tokens(model, layer, i)
        profiles[(layer, i)] = NeuronProfile(
            neuron=NODE_NAMES["mlp_neuron"].format(layer, i),
            layer=layer,
            index=i,
            direct_effect=float(direct[j]) / n if has_metric else float("nan"),
            mean_activation=float(at_end[j]) / n,
            top_activations=top,
            promotes=promotes,
            suppresses=suppresses,
            on_text=on_text.get((layer, i), ()),
            first_token=bool(top) and top[0].position == 0,
        )
    return NeuronProfiles(tuple(profiles[key] for key in chosen), n)


@torch.no_grad()
def text_activations(
    model, neurons: Sequence[tuple[int, int]], top_k: int, lines: Sequence[str] = CORPUS
) -> dict[tuple[int, int], tuple[TokenActivation, ...]]:
    """Per neuron, its ``top_k`` largest activations on ``lines`` (each line's largest only,
    ``pair`` its line number), with context on both sides; empty without a tokenizer."""
    if getattr(model, "tokenizer", None) is None:
        return {}
    layers = sorted({layer for layer, _ in neurons})
    peaks: dict[tuple[int, int], list[tuple[float, int, int]]] = {key: [] for key in neurons}
    kept: dict[int, Tensor] = {}

    def keep(layer):
        def hook(post, hook):
            kept[layer] = post[0].float().cpu()

        return hook

    hooks = [(mlp_hook_name(layer), keep(layer)) for layer in layers]
    strings = []
    with exclusive(model, "reading activations"), attached(model, hooks):
        for number, line in enumerate(lines):
            tokens = model.to_tokens(line).to(model_device(model))
            model(tokens)
            strings.append(token_strings(model, tokens[0]))
            for layer, index in neurons:
                acts = kept[layer][:, index]
                position = int(acts.argmax())
                peaks[(layer, index)].append((float(acts[position]), number, position))
    out = {}
    for key, found in peaks.items():
        top = sorted(found, reverse=True)[:top_k]
        out[key] = tuple(
            TokenActivation(number, position, strings[number][position], value,
                            _context(strings[number], position))
            for value, number, position in top
        )  # fmt: skip
    return out


def _context(tokens: Sequence[str], position: int) -> str:
    """The tokens around ``position``, that one in brackets."""
    before = "".join(tokens[max(0, position - CONTEXT_TOKENS) : position])
    after = "".join(tokens[position + 1 : position + 1 + AFTER_TOKENS])
    return f"{before}[{tokens[position]}]{after}"


def output_tokens(
    model, layer: int, index: int, k: int = OUTPUT_TOKENS
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The ``k`` tokens whose logits the neuron's write direction raises most, and the ``k`` it
    lowers most, through the final norm's weights (its scale frozen at 1: it rescales every
    logit alike) and the unembedding."""
    row = model.W_out[layer, index][None, None]
    scale = torch.ones(1, 1) if has_final_scale(model) else None
    logits = through_final_norm(model, row, scale)[0, 0].float() @ model.W_U.float()
    up = logits.topk(k).indices.cpu()
    down = (-logits).topk(k).indices.cpu()
    return tuple(token_strings(model, up)), tuple(token_strings(model, down))


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
        tokens = token_strings(model, dataset.clean_tokens[pair, : position + 1 + AFTER_TOKENS])
        context = _context(tokens, position)
        if context in seen:
            continue
        seen.add(context)
        found.append(TokenActivation(pair, position, tokens[position], value, context))
    return tuple(found)


def _neuron_list(neurons, dims: ModelDims) -> list[tuple[int, int]]:
    if not dims.has_mlp:
        raise UsageError("this model has no MLPs, so it has no MLP neurons to profile")
    return check_node_list(neurons, dims.n_layers, dims.d_mlp, "MLP neuron")
