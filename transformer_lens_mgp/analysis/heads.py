"""What an attention head does on a task: where it looks from each token role (the answer
position first), grouped by token role, and what its output writes directly onto the answer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..core.checks import check_positive_int
from ..core.circuit import Circuit
from ..core.data import PairedDataset
from ..core.model_api import check_model_and_pairs
from ..core.nodes import NODE_NAMES, ModelDims
from .direct import (
    FINAL_SCALE,
    answer_direction,
    at_answer,
    capture_clean_runs,
    check_node_list,
    through_final_norm,
    token_strings,
)

FIRST, OTHER = "first", "other"
"""Groups besides the dataset's roles: the first token (where heads park attention) and the
rest of the prompt."""


@dataclass(frozen=True)
class HeadProfile:
    """One head on one dataset, full model, clean prompts.

    Args:
        head: plain name, ``L5.H3``.
        layer: its layer.
        index: its index within the layer.
        attention: mean attention from the answer position to each token group (the
            dataset's roles, ``first`` and ``other``; the groups sum to 1).
        direct_effect: mean direct effect of the head's output on the answer's logit
            difference through ``W_O`` and ``W_U`` (NaN without wrong answers).
        attention_by_query: per token role as the query (``IO``, ``S2``, ``END``...), mean
            attention to each token group, as ``attention`` is from the answer position;
            empty when the dataset records no roles.
    """

    head: str
    layer: int
    index: int
    attention: dict[str, float]
    direct_effect: float
    attention_by_query: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class HeadProfiles:
    """Profiles of several heads, and their patterns on one example prompt.

    Args:
        heads: one profile per head, in the order asked for.
        groups: the attention groups, in order.
        example_tokens: the first pair's clean prompt, as token strings, up to its answer
            position.
        example_patterns: per head, its attention from the answer position over
            ``example_tokens``.
        n_pairs: pairs averaged over.
    """

    heads: tuple[HeadProfile, ...]
    groups: tuple[str, ...]
    example_tokens: tuple[str, ...] = ()
    example_patterns: dict[str, list[float]] = field(default_factory=dict)
    n_pairs: int = 0

    def to_dict(self) -> dict:
        return {**asdict(self), "heads": [asdict(h) for h in self.heads]}

    @classmethod
    def from_dict(cls, data: dict) -> HeadProfiles:
        return cls(
            heads=tuple(HeadProfile(**h) for h in data["heads"]),
            groups=tuple(data["groups"]),
            example_tokens=tuple(data["example_tokens"]),
            example_patterns=dict(data["example_patterns"]),
            n_pairs=data["n_pairs"],
        )


@torch.no_grad()
def head_profiles(
    model,
    dataset: PairedDataset,
    heads: Circuit | Sequence[tuple[int, int]],
    *,
    batch_size: int = 32,
) -> HeadProfiles:
    """Profile ``heads`` (a circuit's kept heads, or ``(layer, head)`` pairs) on ``dataset``'s
    clean prompts, with the full model: attention from the answer position and from every
    token role, grouped by token role (the roles the task builders record, e.g. IOI's IO, S1,
    S1+1, S2, END), and direct effect on the logit difference."""
    check_positive_int("batch_size", batch_size)
    dims = ModelDims.from_cfg(model.cfg)
    if isinstance(heads, Circuit):
        heads.check_model(model)
        heads.require_no_slots("head_profiles")
    chosen = _head_list(heads, dims)
    check_model_and_pairs(model, dims, dataset=dataset)
    groups = (FIRST, *dataset.roles, OTHER)
    layers = sorted({layer for layer, _ in chosen})
    by_layer = {layer: [h for at, h in chosen if at == layer] for layer in layers}
    readers = {}
    for layer in layers:
        picked = by_layer[layer]
        readers[f"blocks.{layer}.attn.hook_pattern"] = lambda act, batch, picked=picked: act[
            :, picked
        ]
        readers[f"blocks.{layer}.attn.hook_z"] = lambda act, batch, picked=picked: at_answer(
            act, batch
        )[:, picked]
    has_metric = dataset.wrong_answer_tokens is not None
    roles = dataset.roles if dataset.role_positions is not None else ()
    attention = torch.zeros(len(chosen), len(groups))
    by_query = torch.zeros(len(chosen), len(roles), len(groups))
    direct = torch.zeros(len(chosen))
    example: dict[str, list[float]] = {}
    w_o = model.W_O
    for step, (batch, kept) in enumerate(capture_clean_runs(model, dataset, readers, batch_size)):
        group = _token_groups(batch, len(groups))
        direction = answer_direction(model, batch) if has_metric else None
        row = 0
        for layer in layers:
            full = kept[f"blocks.{layer}.attn.hook_pattern"].float().cpu()  # [b, k, q, key]
            pattern = at_answer(full.transpose(1, 2), batch)  # [b, k, key]
            k = pattern.shape[1]
            attention[row : row + k] += _grouped(pattern, group, len(groups)).sum(0)
            rows = torch.arange(len(batch))
            for j in range(len(roles)):
                query = batch.role_positions[:, j].cpu()
                picked = _grouped(full[rows, :, query], group, len(groups))
                by_query[row : row + k, j] += picked.sum(0)
            if step == 0:
                end = int(batch.answer_positions[0]) + 1
                for j, h in enumerate(by_layer[layer]):
                    example[NODE_NAMES["head"].format(layer, h)] = pattern[0, j, :end].tolist()
            if direction is not None:
                z = kept[f"blocks.{layer}.attn.hook_z"]
                writes = einops.einsum(
                    z, w_o[layer, by_layer[layer]].to(z), "b k d, k d m -> b k m"
                )
                normed = through_final_norm(model, writes, kept.get(FINAL_SCALE))
                effect = einops.einsum(normed, direction.to(normed), "b k m, b m -> b k")
                direct[row : row + k] += effect.float().sum(0).cpu()
            row += k
    n = len(dataset)
    order = [(layer, h) for layer in layers for h in by_layer[layer]]
    profiles = {
        (layer, h): HeadProfile(
            head=NODE_NAMES["head"].format(layer, h),
            layer=layer,
            index=h,
            attention={g: float(v) / n for g, v in zip(groups, attention[i], strict=True)},
            direct_effect=float(direct[i]) / n if has_metric else float("nan"),
            attention_by_query={
                role: {g: float(v) / n for g, v in zip(groups, by_query[i, j], strict=True)}
                for j, role in enumerate(roles)
            },
        )
        for i, (layer, h) in enumerate(order)
    }
    end = int(dataset.answer_positions[0]) + 1
    return HeadProfiles(
        heads=tuple(profiles[key] for key in chosen),
        groups=groups,
        example_tokens=tuple(token_strings(model, dataset.clean_tokens[0, :end])),
        example_patterns={profiles[key].head: example[profiles[key].head] for key in chosen},
        n_pairs=n,
    )


def _head_list(heads, dims: ModelDims) -> list[tuple[int, int]]:
    if isinstance(heads, Circuit):
        return [tuple(i) for i in heads.kept("head").nonzero().tolist()]
    return check_node_list(heads, dims.n_layers, dims.n_heads, "head")


def _grouped(
    pattern: Float[Tensor, "batch head key"], group: Int[Tensor, "batch pos"], n_groups: int
) -> Float[Tensor, "batch head n_groups"]:
    """Attention summed over the keys of each token group."""
    index = group[:, None, : pattern.shape[2]].expand(-1, pattern.shape[1], -1)
    return torch.zeros(*pattern.shape[:2], n_groups).scatter_add_(2, index, pattern)


def _token_groups(batch: PairedDataset, n_groups: int) -> Int[Tensor, "batch pos"]:
    """Per pair and position, its group: 0 for the first token, 1 + j for role j, the last for
    every other position. A position with several roles belongs to the first of them."""
    group = torch.full(tuple(batch.clean_tokens.shape), n_groups - 1, dtype=torch.long)
    group[:, 0] = 0
    if batch.role_positions is not None:
        positions = batch.role_positions.cpu()
        rows = torch.arange(len(batch))
        for j in reversed(range(positions.shape[1])):
            group[rows, positions[:, j]] = 1 + j
    return group
