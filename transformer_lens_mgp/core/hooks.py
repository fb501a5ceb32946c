"""TransformerLens hooks that run a model as a circuit, and what pruned nodes output.

A masked site keeps the clean activation where the mask is 1 and the ablated one where it
is 0. The ablated values come from an :class:`AblationSource`: the corrupted prompts' own
activations (``"corrupted"``), their mean (``"mean"``) or zero (``"zero"``). Hooks are
returned as ``fwd_hooks`` lists and attached only inside ``model_api.attached(...)``, so the model
is unchanged once a call returns or raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from einops import reduce
from jaxtyping import Float, Int
from torch import Tensor

from .errors import UsageError
from .model_api import (
    FwdHooks,
    attached,
    check_hook_points,
    is_hooked_transformer,
    model_device,
    run_until,
)
from .nodes import ModelDims, SiteMasks, attn_hook_name, mlp_hook_name
from .placement import Placement

ABLATIONS = ("corrupted", "mean", "zero")


def is_activation_cache(source) -> bool:
    """Whether ``source`` is a ``run_with_cache`` cache (or its dict) rather than tokens."""
    return isinstance(source, dict) or hasattr(source, "cache_dict")


def check_ablation(ablation: str) -> None:
    if ablation not in ABLATIONS:
        raise UsageError(f"unknown ablation {ablation!r}; choose from {ABLATIONS}")


def interpolate_hook(
    activation: Float[Tensor, "batch pos *node"],
    *,
    hook,
    mask: Float[Tensor, "*node"] | Float[Tensor, "batch pos *node"],
    ablated: Float[Tensor, "batch pos *node"] | Float[Tensor, "*node"],
) -> Float[Tensor, "batch pos *node"]:
    """Keep the clean activation where the mask is 1, the ablated one where it is 0, in the
    activation's own dtype and device; the mask is one per unit, or one per unit and token."""
    if mask.shape not in (activation.shape[2:], activation.shape) or (
        ablated.ndim == activation.ndim and ablated.shape != activation.shape
    ):
        raise UsageError(
            f"hook {hook.name} got an activation of shape {tuple(activation.shape)}, but these "
            f"hooks were built for units of shape {tuple(mask.shape)} and ablated values of "
            f"shape {tuple(ablated.shape)}: build the hooks for this model and these prompts "
            "(the same batch of corrupted prompts), or use ablation='mean' for other batches"
        )
    mask = mask.to(activation)
    return mask * activation + (1 - mask) * ablated.to(activation)


def mask_hooks(
    dims: ModelDims,
    masks: SiteMasks,
    ablated: dict[str, Tensor],
    slots: Int[Tensor, "batch pos"] | None = None,
) -> FwdHooks:
    """TransformerLens ``fwd_hooks`` that apply site masks layer by layer. Each layer's mask
    goes where that site's ablated values are, which is the site's own device (see
    :class:`~.placement.Placement`), once per set of hooks rather than on every call.
    Masks per role slot need the prompts' ``slots`` (``PairedDataset.role_slots()``): each
    token takes its slot's mask."""
    if masks.per_slot and slots is None:
        raise UsageError(
            "this circuit has one mask per token role: run it on pairs that record the roles "
            "it was fitted with (pass the PairedDataset)"
        )
    sites = [(attn_hook_name, masks.attn)]
    if masks.mlp is not None:
        sites.append((mlp_hook_name, masks.mlp))
    hooks = []
    for hook_name, mask in sites:
        for layer in range(dims.n_layers):
            name = hook_name(layer)
            values = ablated[name]
            if masks.per_slot:
                site_mask = mask[:, layer].to(values.device)[slots.to(values.device)]
            else:
                site_mask = mask[layer].to(values.device)
            hooks.append((name, partial(interpolate_hook, mask=site_mask, ablated=values)))
    return hooks


def storing_hooks(names: list[str], cache: dict) -> FwdHooks:
    """Hooks that put each named site's activation (detached) into ``cache`` under the name
    asked for: a TransformerBridge may report an aliased name."""

    def store_as(key: str):
        def store(activation, *, hook):
            cache[key] = activation.detach()

        return store

    return [(name, store_as(name)) for name in names]


@torch.no_grad()
def site_activations(model, tokens: Int[Tensor, "batch pos"], dims: ModelDims) -> dict[str, Tensor]:
    """Every masked site's activation on ``tokens`` (no gradient)."""
    cache: dict[str, Tensor] = {}
    tokens = tokens.to(model_device(model))
    store = storing_hooks(dims.hook_names(), cache)
    if is_hooked_transformer(model):
        with attached(model, store):
            model(tokens, stop_at_layer=dims.n_layers)
    else:  # a bridge: stop at the last site, before the final norm and the unembedding
        site = mlp_hook_name if dims.has_mlp else attn_hook_name
        run_until(model, tokens, site(dims.n_layers - 1), store)
    return cache


def answer_prefix_weights(
    last_positions: Int[Tensor, " batch"], seq_len: int
) -> Float[Tensor, "batch pos"]:
    """1 at every position up to each sequence's answer position, 0 after (padding)."""
    positions = torch.arange(seq_len, device=last_positions.device)
    return (positions[None] <= last_positions[:, None]).float()


def mean_activations(
    model,
    tokens: Int[Tensor, "n pos"],
    dims: ModelDims,
    last_positions: Int[Tensor, " n"],
    batch_size: int = 32,
) -> dict[str, Tensor]:
    """Per-site mean activation over the prompts' positions up to their answer position (the
    one definition of mean ablation: padding after the answer never counts, nor is it run,
    so right padding past the model's context is no error here either)."""
    sums: dict[str, Tensor] = {}
    count = 0.0
    for start in range(0, tokens.shape[0], batch_size):
        last = last_positions[start : start + batch_size]
        chunk = tokens[start : start + batch_size, : int(last.max()) + 1]
        acts = site_activations(model, chunk, dims)
        part, n = summed_over_prompts(acts, last)
        count += n
        for name, total in part.items():
            sums[name] = sums.get(name, 0) + total
    return {name: (total / count).float() for name, total in sums.items()}


def summed_over_prompts(
    acts: dict[str, Tensor], last_positions: Int[Tensor, " batch"]
) -> tuple[dict[str, Tensor], float]:
    """Sums of ``acts`` over sequences and their positions up to the answer, and the count."""
    sums, count = {}, 0.0
    for name, act in acts.items():
        valid = answer_prefix_weights(last_positions.to(act.device), act.shape[1])
        count = float(valid.sum())
        weights = valid.view(*valid.shape, *[1] * (act.ndim - 2))
        sums[name] = reduce(act.double() * weights, "batch pos ... -> ...", "sum")
    return sums, count


def zero_activations(dims: ModelDims, placement: Placement) -> dict[str, Tensor]:
    """A zero per site, on the site's device."""
    return {name: torch.zeros((), device=placement.sites[name]) for name in dims.hook_names()}


@dataclass(frozen=True)
class AblationSource:
    """What the pruned nodes of one dataset's pairs output.

    Args:
        kind: ``"corrupted"``, ``"mean"`` or ``"zero"``.
        dims: sizes of the model.
        fixed: the values shared by every batch (mean or zero); None for ``"corrupted"``,
            where each batch brings its own corrupted prompts.
    """

    kind: str
    dims: ModelDims
    fixed: dict[str, Tensor] | None = None

    @classmethod
    def for_dataset(cls, model, kind: str, dataset, dims: ModelDims) -> AblationSource:
        check_ablation(kind)
        fixed = None
        if kind == "mean":
            fixed = mean_activations(
                model, dataset.corrupted_tokens, dims, dataset.answer_positions
            )
        elif kind == "zero":
            fixed = zero_activations(dims, Placement.of(model, dims))
        return cls(kind, dims, fixed)

    def values(self, model, batch) -> dict[str, Tensor]:
        """The ablated activation of every site for ``batch``."""
        if self.fixed is not None:
            return self.fixed
        return site_activations(model, batch.corrupted_tokens, self.dims)

    @staticmethod
    def activations(
        kind: str,
        dims: ModelDims,
        source=None,
        *,
        model=None,
        answer_positions: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The ablated activation of every site, from whatever a user has at hand: a
        :class:`~.data.PairedDataset`, a tensor of corrupted tokens (with ``model``) or a
        ``run_with_cache`` cache of the corrupted run; nothing for ``"zero"``. ``"mean"``
        averages over positions up to each answer (every position when none are known)."""
        check_ablation(kind)
        names = dims.hook_names()
        if kind == "zero":
            cpu = torch.device("cpu")
            placement = (
                Placement.of(model, dims)
                if model is not None
                else Placement(cpu, cpu, dict.fromkeys(names, cpu))
            )
            return zero_activations(dims, placement)
        if is_activation_cache(source):
            cache = getattr(source, "cache_dict", source)
            missing = [n for n in names if n not in cache]
            if missing:
                raise UsageError(
                    f"the activation cache lacks {missing[:3]}; cache every hook_z "
                    "and mlp.hook_post of the corrupted run"
                )
            acts = {n: cache[n] for n in names}
            if kind != "mean":
                return acts
            first = acts[names[0]]
            sums, count = summed_over_prompts(acts, _positions(answer_positions, first))
            return {n: (total / count).to(acts[n].dtype) for n, total in sums.items()}
        if model is None:
            raise UsageError(
                "pass model= to compute the ablated activations from corrupted tokens "
                "(or pass an activation cache of the corrupted run)"
            )
        if source is None:
            raise UsageError(
                f"ablation={kind!r} needs the corrupted prompts: pass a "
                "PairedDataset or a tensor of corrupted tokens"
            )
        check_hook_points(model, dims)
        if isinstance(source, Tensor):
            tokens = source
        else:  # a PairedDataset
            tokens, answer_positions = source.corrupted_tokens, source.answer_positions
        if kind == "corrupted":
            return site_activations(model, tokens, dims)
        return mean_activations(model, tokens, dims, _positions(answer_positions, tokens))


def _positions(answer_positions: Tensor | None, acts: Tensor) -> Tensor:
    """Each sequence's answer position; without them, every position counts."""
    if answer_positions is not None:
        return answer_positions
    return torch.full((acts.shape[0],), acts.shape[1] - 1)
