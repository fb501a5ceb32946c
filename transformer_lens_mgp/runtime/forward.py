"""Forward passes at the answer positions: plain, masked, and the masked KL over a dataset.

Only the answer position of each prompt is unembedded, and
``masked_answer_batches`` is the one loop that runs circuits over a dataset: the pruner's
empty-circuit KL, the KL budget's snapshots and ``evaluate`` all go through it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from ..core.data import PairedDataset
from ..core.hooks import AblationSource, mask_hooks
from ..core.metrics import kl_divergence
from ..core.model_api import attached, is_hooked_transformer, model_device, run_until
from ..core.nodes import ModelDims, SiteMasks


def answer_logits(
    model, tokens: Int[Tensor, "batch pos"], positions: Int[Tensor, " batch"]
) -> Float[Tensor, "batch d_vocab"]:
    """Logits at one position per sequence, unembedding only those positions (the
    unembedding of every position costs a SmolLM2 step a quarter of its time)."""
    if is_hooked_transformer(model):
        resid = model(tokens, stop_at_layer=model.cfg.n_layers)
    elif hasattr(model, "ln_final"):  # not hook_dict: a bridge rebuilds it on every access
        resid = _final_resid(model, tokens)
    else:
        logits = model(tokens)
        return logits[
            torch.arange(tokens.shape[0], device=logits.device), positions.to(logits.device)
        ]
    return _final_logits(model, resid, positions)


_FINAL_NORM_INPUT = "ln_final.hook_in"


def _final_resid(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
    """The residual stream after the last block, read from a TransformerBridge at the final
    norm's input."""
    return run_until(model, tokens, _FINAL_NORM_INPUT)


def can_resume(model) -> bool:
    """Whether a forward pass can start at a block from a given residual stream (a
    HookedTransformer's ``start_at_layer``)."""
    return is_hooked_transformer(model)


def answer_logits_from(
    model,
    resid: Float[Tensor, "batch pos d_model"],
    layer: int,
    positions: Int[Tensor, " batch"],
) -> Float[Tensor, "batch d_vocab"]:
    """:func:`answer_logits` of a forward pass resumed at block ``layer`` from ``resid``, the
    stream that block reads (``blocks.{layer}.hook_resid_pre``); see :func:`can_resume`."""
    out = model(resid, start_at_layer=layer, stop_at_layer=model.cfg.n_layers)
    return _final_logits(model, out, positions)


def _final_logits(
    model, resid: Float[Tensor, "batch pos d_model"], positions: Int[Tensor, " batch"]
) -> Float[Tensor, "batch d_vocab"]:
    picked = resid[torch.arange(resid.shape[0], device=resid.device), positions.to(resid.device)]
    picked = picked[:, None]
    if model.cfg.normalization_type is not None:
        picked = model.ln_final(picked)
    logits = _unembed(model.unembed, picked)[:, 0]
    cap = getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0
    if cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return logits


def _unembed(
    unembed, resid: Float[Tensor, "batch pos d_model"]
) -> Float[Tensor, "batch pos d_vocab"]:
    """The unembedding with its hook points, without the copy of ``W_U`` that the module makes
    on every call (as large as the weight: 150 MiB for GPT-2 small)."""
    return unembed.hook_out(unembed.hook_in(resid) @ unembed.W_U + unembed.b_U)


def masked_answer_logits(
    model,
    batch: PairedDataset,
    dims: ModelDims,
    masks: SiteMasks,
    ablated: dict[str, Tensor],
) -> Float[Tensor, "batch d_vocab"]:
    """Answer-position logits of the clean prompts with every site interpolated by its mask
    (each token by its role slot's, for masks per slot)."""
    slots = batch.role_slots() if masks.per_slot else None
    with attached(model, mask_hooks(dims, masks, ablated, slots)):
        return answer_logits(model, batch.clean_tokens, batch.answer_positions)


@torch.no_grad()
def reference_logits(
    model, dataset: PairedDataset, batch_size: int, progress: bool = False
) -> Float[Tensor, "n d_vocab"]:
    """The full model's answer logits for every pair (they never change during a fit)."""
    device = model_device(model)
    chunks = []
    batches = tqdm(
        dataset.batches(batch_size),
        total=math.ceil(len(dataset) / batch_size),
        desc="full model's answers",
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    )
    for batch in batches:
        batch = batch.to(device)
        chunks.append(answer_logits(model, batch.clean_tokens, batch.answer_positions))
    return torch.cat(chunks)


@torch.no_grad()
def masked_answer_batches(
    model,
    dataset: PairedDataset,
    circuits: Sequence[SiteMasks],
    ablation: AblationSource,
    batch_size: int,
) -> Iterator[tuple[PairedDataset, slice, list[Tensor]]]:
    """Per batch: the batch (on the model's device), its rows in ``dataset``, and the answer
    logits of the model run as each of ``circuits``."""
    device = model_device(model)
    circuits = [masks.to(device) for masks in circuits]
    for batch, rows in batches_with_rows(dataset, batch_size, device):
        ablated = ablation.values(model, batch)
        logits = [
            masked_answer_logits(model, batch, ablation.dims, masks, ablated) for masks in circuits
        ]
        yield batch, rows, logits


def batches_with_rows(
    dataset: PairedDataset, batch_size: int, device
) -> Iterator[tuple[PairedDataset, slice]]:
    """The dataset's batches in order, on ``device``, each with its rows in ``dataset``."""
    start = 0
    for batch in dataset.batches(batch_size):
        yield batch.to(device), slice(start, start + len(batch))
        start += len(batch)


def masked_kl(
    model,
    dataset: PairedDataset,
    reference: Float[Tensor, "n d_vocab"],
    masks: SiteMasks,
    ablation: AblationSource,
    batch_size: int,
) -> float:
    """Mean KL(full || model run with ``masks``) over ``dataset``, whose full-model answer
    logits are ``reference``."""
    total = 0.0
    for batch, rows, (logits,) in masked_answer_batches(
        model, dataset, [masks], ablation, batch_size
    ):
        total += kl_divergence(reference[rows].to(logits.device), logits).item() * len(batch)
    return total / len(dataset)
