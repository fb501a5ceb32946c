"""Direct effects on the answer: what a write to the residual stream does to the answer's
logit difference through the final norm and the unembedding alone.

The final norm's scale is frozen at its value on the clean prompt, which makes the path
linear: the direct effects of all writes (embeddings, heads, MLPs, biases) add up to the
logit difference. Later layers reading the write are ignored; that is what "direct" means.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..core.data import PAD_ANSWER, PairedDataset
from ..core.errors import UsageError
from ..core.model_api import attached, model_device
from ..runtime.forward import answer_logits
from ..runtime.guard import exclusive
from ..runtime.layout import forward_layout

FINAL_SCALE = "ln_final.hook_scale"


def answer_direction(model, batch: PairedDataset) -> Float[Tensor, "batch d_model"]:
    """Per pair, the unembedding direction of the task's logit difference: the right answer's
    column of ``W_U`` (the mean over the set for ``prob_diff`` tasks) minus the mean wrong
    answer's."""
    if batch.wrong_answer_tokens is None:
        raise UsageError(
            "direct effects read the logit difference between right and wrong answers; this "
            "dataset has no wrong_answer_tokens"
        )
    w_u = model.W_U
    answers = batch.answer_tokens.to(w_u.device)
    if batch.metric == "logit_diff" and answers.ndim == 2:
        answers = answers[:, :1]
    wrong = batch.wrong_answer_tokens.to(w_u.device)
    return _mean_columns(w_u, answers) - _mean_columns(w_u, wrong)


def _mean_columns(
    w_u: Float[Tensor, "d_model d_vocab"], ids: Int[Tensor, "batch ..."]
) -> Float[Tensor, "batch d_model"]:
    ids = ids[:, None] if ids.ndim == 1 else ids
    valid = (ids != PAD_ANSWER).to(w_u.dtype)
    columns = w_u.T[ids.clamp(min=0)]  # [batch, k, d_model]
    return (columns * valid[..., None]).sum(1) / valid.sum(1, keepdim=True).clamp(min=1)


def through_final_norm(
    model,
    writes: Float[Tensor, "batch k d_model"],
    scale: Float[Tensor, "batch 1"] | None,
) -> Float[Tensor, "batch k d_model"]:
    """The final norm applied to ``writes`` as a linear map: its scale frozen at ``scale`` (one
    per pair, from the clean run) and its bias left out. Models without a final norm (or
    without its ``ln_final.hook_scale``) pass the writes through."""
    if scale is None:
        return writes
    frozen = scale[:, None, :].to(writes)

    def fix(value, hook):
        return frozen.expand_as(value)

    with attached(model, [(FINAL_SCALE, fix)]), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a bridge warns that the edit changes its numerics
        return model.ln_final(writes) - model.ln_final(torch.zeros_like(writes))


def has_final_scale(model) -> bool:
    return FINAL_SCALE in model.hook_dict


@torch.no_grad()
def capture_clean_runs(
    model,
    dataset: PairedDataset,
    readers: dict[str, Callable[[Tensor, PairedDataset], Tensor]],
    batch_size: int,
) -> Iterable[tuple[PairedDataset, dict[str, Tensor]]]:
    """Per batch of clean prompts (full model, no masks): the batch and, per hook name in
    ``readers``, what its reader kept of the activation (the final norm's scale at the answer
    position is read too, under ``ln_final.hook_scale``, when the model has it)."""
    readers = dict(readers)
    if has_final_scale(model):
        readers[FINAL_SCALE] = _final_scale
    device = model_device(model)
    with exclusive(model, "reading activations"), forward_layout(model):
        for batch in dataset.batches(batch_size):
            batch = batch.to(device)
            kept: dict[str, Tensor] = {}

            def reader(name: str, batch=batch, kept=kept):
                def hook(act, hook):
                    kept[name] = readers[name](act.detach(), batch)

                return hook

            with attached(model, [(name, reader(name)) for name in readers]):
                answer_logits(model, batch.clean_tokens, batch.answer_positions)
            yield batch, kept


def _final_scale(act: Float[Tensor, "batch pos 1"], batch: PairedDataset) -> Tensor:
    # answer_logits normalizes only the answer positions where it can: then pos is 1
    return act[:, 0] if act.shape[1] == 1 else at_answer(act, batch)


def at_answer(act: Tensor, batch: PairedDataset) -> Tensor:
    """``act[i, answer_position[i]]``: the activation at each pair's answer position."""
    rows = torch.arange(act.shape[0], device=act.device)
    return act[rows, batch.answer_positions.to(act.device)]


def token_strings(model, tokens: Int[Tensor, " pos"]) -> list[str]:
    """The tokens as text (``<id>`` for a model without a tokenizer)."""
    if getattr(model, "tokenizer", None) is None:
        return [f"<{int(t)}>" for t in tokens]
    return list(model.to_str_tokens(tokens))


NAME_PATTERNS = {
    "head": re.compile(r"L(\d+)\.H(\d+)"),
    "MLP neuron": re.compile(r"L(\d+)\.mlp\.(\d+)"),
}
"""The plain names ``Circuit.nodes`` gives heads (``L5.H3``) and MLP neurons (``L5.mlp.12``)."""


def check_node_list(items, n_layers: int, n_per_layer: int, kind: str) -> list[tuple[int, int]]:
    """``(layer, index)`` pairs as ints, from pairs or from the plain names ``Circuit.nodes``
    gives (``"L5.H3"``, ``"L5.mlp.12"``), each checked against the model's sizes."""
    chosen = []
    for item in items:
        if isinstance(item, str):
            found = NAME_PATTERNS[kind].fullmatch(item)
            if found is None:
                example = "L5.H3" if kind == "head" else "L5.mlp.12"
                raise UsageError(f"{item!r} is not a {kind} name like {example!r}")
            item = found.groups()
        try:
            layer, index = (int(x) for x in item)
        except (TypeError, ValueError):
            raise UsageError(
                f"{kind} {item!r} is neither a (layer, index) pair nor a name"
            ) from None
        if not (0 <= layer < n_layers and 0 <= index < n_per_layer):
            raise UsageError(
                f"{kind} {item!r} is not in a model of {n_layers} layers x {n_per_layer} "
                f"{kind}s; give (layer, index) pairs counted from 0"
            )
        chosen.append((layer, index))
    if not chosen:
        raise UsageError(f"no {kind}s to profile; give at least one (layer, index) pair")
    return chosen
