"""Running a model with node masks: interpolation hooks, ablation sources, answer logits.

Everything here touches the model only through HookPoint names and TransformerLens'
temporary-hook machinery, so the model is unchanged once a call returns or raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import torch
from einops import reduce
from jaxtyping import Float, Int
from torch import Tensor

from .data import PairedDataset
from .granularity import ModelDims, attn_hook_name, mlp_hook_name

ABLATIONS = ("corrupted", "mean", "zero")


def is_hooked_transformer(model) -> bool:
    """True for a HookedTransformer (which can stop before the unembedding); False for a
    TransformerBridge, and always on TransformerLens 4.x, which has only the bridge."""
    try:
        from transformer_lens import HookedTransformer
    except ImportError:
        return False
    return isinstance(model, HookedTransformer)


FwdHooks = list[tuple[str, Callable]]


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def check_ablation(ablation: str) -> None:
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; choose from {ABLATIONS}")


def interpolate_hook(
    activation: Float[Tensor, "batch pos *node"],
    *,
    hook,
    mask: Float[Tensor, "*node"],
    ablated: Float[Tensor, "batch pos *node"] | Float[Tensor, "*node"],
) -> Float[Tensor, "batch pos *node"]:
    """Keep the clean activation where the mask is 1, the ablated one where it is 0."""
    return mask * activation + (1 - mask) * ablated.to(activation.dtype)


def mask_hooks(
    dims: ModelDims,
    attn_mask: Float[Tensor, "n_layers n_heads d_head"],
    mlp_mask: Float[Tensor, "n_layers d_mlp"] | None,
    ablated: dict[str, Tensor],
) -> FwdHooks:
    """TransformerLens ``fwd_hooks`` that apply site masks layer by layer."""
    sites = [(attn_hook_name, attn_mask)]
    if mlp_mask is not None:
        sites.append((mlp_hook_name, mlp_mask))
    hooks = []
    for hook_name, mask in sites:
        for layer in range(dims.n_layers):
            name = hook_name(layer)
            hooks.append((name, partial(interpolate_hook, mask=mask[layer], ablated=ablated[name])))
    return hooks


def check_hook_points(model, dims: ModelDims) -> None:
    """Fail early, with the missing names, for models without the sites we mask."""
    hook_dict = getattr(model, "hook_dict", None)
    if hook_dict is None or not hasattr(model, "hooks"):
        raise TypeError(
            f"expected a TransformerLens model (HookedTransformer or TransformerBridge), got "
            f"{type(model).__name__}; wrap your model with transformer_lens first"
        )
    missing = [name for name in dims.hook_names() if name not in hook_dict]
    if missing:
        raise ValueError(
            f"the model has no hook points {missing[:3]}{' ...' if len(missing) > 3 else ''}; "
            "masks need blocks.{l}.attn.hook_z and blocks.{l}.mlp.hook_post (for MLP "
            "granularities). For a TransformerBridge call model.enable_compatibility_mode() first"
        )


def answer_logits(
    model, tokens: Int[Tensor, "batch pos"], positions: Int[Tensor, " batch"]
) -> Float[Tensor, "batch d_vocab"]:
    """Logits at one position per sequence, unembedding only those positions (on a
    HookedTransformer; other models, e.g. a TransformerBridge, run their full forward)."""
    if not is_hooked_transformer(model):
        logits = model(tokens)
        return logits[
            torch.arange(tokens.shape[0], device=logits.device), positions.to(logits.device)
        ]
    resid = model(tokens, stop_at_layer=model.cfg.n_layers)
    picked = resid[torch.arange(tokens.shape[0], device=resid.device), positions.to(resid.device)]
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
    attn_mask: Float[Tensor, "n_layers n_heads d_head"],
    mlp_mask: Float[Tensor, "n_layers d_mlp"] | None,
    ablated: dict[str, Tensor],
) -> Float[Tensor, "batch d_vocab"]:
    """Answer-position logits of the clean prompts with every site interpolated by its mask."""
    with model.hooks(fwd_hooks=mask_hooks(dims, attn_mask, mlp_mask, ablated)):
        return answer_logits(model, batch.clean_tokens, batch.answer_positions)


@torch.no_grad()
def reference_pass(
    model, batch: PairedDataset, dims: ModelDims, cache_corrupted: bool
) -> tuple[Float[Tensor, "batch d_vocab"], dict[str, Tensor]]:
    """One no-grad forward of [clean; corrupted]: the full model's answer logits and the
    corrupted stream's site activations."""
    n = len(batch)
    device = model_device(model)
    tokens = torch.cat([batch.clean_tokens, batch.corrupted_tokens]).to(device)
    positions = torch.cat([batch.answer_positions, batch.answer_positions]).to(device)
    if not cache_corrupted:
        tokens, positions = tokens[:n], positions[:n]
    cache: dict[str, Tensor] = {}
    hooks = storing_hooks(dims.hook_names(), cache, slice(n, None)) if cache_corrupted else []
    with model.hooks(fwd_hooks=hooks):
        logits = answer_logits(model, tokens, positions)
    return logits[:n], cache


def storing_hooks(names: list[str], cache: dict, rows: slice = slice(None)) -> FwdHooks:
    """Hooks that put each named site's activation (the given batch rows, detached) into
    ``cache`` under the name asked for: a TransformerBridge may report an aliased name."""

    def store_as(key: str):
        def store(activation, *, hook):
            cache[key] = activation[rows].detach()

        return store

    return [(name, store_as(name)) for name in names]


@torch.no_grad()
def site_activations(model, tokens: Int[Tensor, "batch pos"], dims: ModelDims) -> dict[str, Tensor]:
    """Every masked site's activation on ``tokens`` (no gradient)."""
    cache: dict[str, Tensor] = {}
    stop = {"stop_at_layer": dims.n_layers} if is_hooked_transformer(model) else {}
    with model.hooks(fwd_hooks=storing_hooks(dims.hook_names(), cache)):
        model(tokens.to(model_device(model)), **stop)
    return cache


@torch.no_grad()
def mean_activations(
    model,
    tokens: Int[Tensor, "n pos"],
    dims: ModelDims,
    last_positions: Int[Tensor, " n"] | None = None,
    batch_size: int = 32,
) -> dict[str, Tensor]:
    """Per-site mean activation over sequences and positions (up to ``last_positions``)."""
    if last_positions is None:
        last_positions = torch.full((tokens.shape[0],), tokens.shape[1] - 1)
    sums: dict[str, Tensor] = {}
    count = 0
    for start in range(0, tokens.shape[0], batch_size):
        chunk = tokens[start : start + batch_size]
        acts = site_activations(model, chunk, dims)
        last = last_positions[start : start + batch_size].to(chunk.device)
        valid = (torch.arange(chunk.shape[1], device=chunk.device)[None] <= last[:, None]).float()
        count += int(valid.sum())
        for name, act in acts.items():
            weights = valid.to(act.device).view(*valid.shape, *[1] * (act.ndim - 2))
            total = reduce(act.double() * weights, "batch pos ... -> ...", "sum")
            sums[name] = sums.get(name, 0) + total
    return {name: (total / count).float() for name, total in sums.items()}


def fixed_ablation(model, ablation: str, dataset, dims: ModelDims) -> dict[str, Tensor] | None:
    """The ablated values that are the same for every batch of ``dataset`` (the mean over its
    corrupted prompts, or zero); None for ``"corrupted"``, which each batch brings itself."""
    if ablation == "mean":
        return mean_activations(model, dataset.corrupted_tokens, dims, dataset.answer_positions)
    if ablation == "zero":
        return zero_activations(dims, model_device(model))
    return None


def zero_activations(dims: ModelDims, device) -> dict[str, Tensor]:
    zero = torch.zeros((), device=device)
    return {name: zero for name in dims.hook_names()}


@contextmanager
def frozen(model) -> Iterator[None]:
    """Turn off gradients of the model's weights; put back each flag on exit, whatever happens."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
