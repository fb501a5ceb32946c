"""The five node granularities, their hook sites, mask shapes and parent links.

A node at every granularity is masked at one of two sites per layer: the attention
head outputs before ``W_O`` (``hook_z``) or the MLP hidden units before ``W_out``
(``hook_post``). Because both projections are linear, masking there with the product of
a node's own mask and its ancestors' masks is exactly masking the layer's output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from .errors import UsageError

GRANULARITIES: tuple[str, ...] = ("block", "head", "attn_neuron", "mlp", "mlp_neuron")
PARENT: dict[str, str | None] = {
    "block": None,
    "head": "block",
    "attn_neuron": "head",
    "mlp": "block",
    "mlp_neuron": "mlp",
}
NODE_NAMES: dict[str, str] = {
    "block": "L{0}",
    "head": "L{0}.H{1}",
    "attn_neuron": "L{0}.H{1}.d{2}",
    "mlp": "L{0}.mlp",
    "mlp_neuron": "L{0}.mlp.{1}",
}
"""Plain names of nodes, formatted with their index (layer first)."""
MLP_GRANULARITIES = ("mlp", "mlp_neuron")


def attn_hook_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def mlp_hook_name(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_post"


@dataclass(frozen=True)
class ModelDims:
    """The sizes that fix every mask shape.

    Args:
        n_layers: number of transformer blocks.
        n_heads: query heads per layer (grouped-query models have one ``hook_z`` per query head).
        d_head: dimension of one head's output.
        d_mlp: MLP hidden size, or None for attention-only models.
    """

    n_layers: int
    n_heads: int
    d_head: int
    d_mlp: int | None

    @classmethod
    def from_cfg(cls, cfg) -> ModelDims:
        attn_only = bool(getattr(cfg, "attn_only", False))
        return cls(
            n_layers=int(cfg.n_layers),
            n_heads=int(cfg.n_heads),
            d_head=int(cfg.d_head),
            d_mlp=None if attn_only or cfg.d_mlp is None else int(cfg.d_mlp),
        )

    @property
    def has_mlp(self) -> bool:
        return self.d_mlp is not None

    def shape(self, granularity: str, n_slots: int = 0) -> tuple[int, ...]:
        """Shape of the mask of ``granularity``; with ``n_slots``, one mask per token role
        slot, slot first."""
        check_granularity(granularity)
        if granularity in MLP_GRANULARITIES and not self.has_mlp:
            raise UsageError(
                f"granularity {granularity!r} needs MLP layers, but this model is attention-only; "
                f"choose from {self.available()}"
            )
        shape = {
            "block": (self.n_layers,),
            "head": (self.n_layers, self.n_heads),
            "attn_neuron": (self.n_layers, self.n_heads, self.d_head),
            "mlp": (self.n_layers,),
            "mlp_neuron": (self.n_layers, self.d_mlp),
        }[granularity]
        return (n_slots, *shape) if n_slots else shape

    def n_nodes(self, granularity: str) -> int:
        return int(torch.Size(self.shape(granularity)).numel())

    def available(self) -> tuple[str, ...]:
        """Granularities this model has."""
        return tuple(g for g in GRANULARITIES if self.has_mlp or g not in MLP_GRANULARITIES)

    def hook_names(self) -> list[str]:
        """Every HookPoint the masks act on."""
        names = [attn_hook_name(layer) for layer in range(self.n_layers)]
        if self.has_mlp:
            names += [mlp_hook_name(layer) for layer in range(self.n_layers)]
        return names

    def to_dict(self) -> dict:
        return asdict(self)


def check_granularity(name: str) -> None:
    if name not in GRANULARITIES:
        raise UsageError(f"unknown granularity {name!r}; choose from {GRANULARITIES}")


def resolve_granularities(names, dims: ModelDims) -> tuple[str, ...]:
    """Validate a user's choice and return it in canonical (parent-first) order."""
    if isinstance(names, str):
        names = (names,)
    names = tuple(names)
    if not names:
        raise UsageError(f"choose at least one granularity from {dims.available()}")
    for name in names:
        check_granularity(name)
        dims.shape(name)  # raises for MLP granularities on attention-only models
    return tuple(g for g in GRANULARITIES if g in names)


class SiteMasks(NamedTuple):
    """The product masks at the two hook sites: what a forward pass multiplies in; a
    per-role circuit's have a leading slot axis (see ``PairedDataset.role_slots``)."""

    attn: Float[Tensor, "*slot n_layers n_heads d_head"]
    mlp: Float[Tensor, "*slot n_layers d_mlp"] | None

    @property
    def per_slot(self) -> bool:
        """Whether every token takes the masks of its role's slot."""
        return self.attn.ndim == 4

    def to(self, device) -> SiteMasks:
        return SiteMasks(self.attn.to(device), None if self.mlp is None else self.mlp.to(device))

    def complement(self) -> SiteMasks:
        """1 - mask at every unit: the nodes ablated become the ones kept."""
        return SiteMasks(1 - self.attn, None if self.mlp is None else 1 - self.mlp)

    def zeros(self) -> SiteMasks:
        """Every unit ablated: the empty circuit."""
        return SiteMasks(
            torch.zeros_like(self.attn), None if self.mlp is None else torch.zeros_like(self.mlp)
        )


def site_masks(values: dict[str, Tensor], dims: ModelDims) -> SiteMasks:
    """Multiply each node's mask with its ancestors' masks, down to the two hook sites.

    Granularities missing from ``values`` count as all ones (not pruned). Values with a
    leading slot axis (one mask per role position) give site masks with one too.
    """
    ref = next(iter(values.values()))
    ones = dict(device=ref.device, dtype=ref.dtype)
    attn = torch.ones(dims.n_layers, dims.n_heads, dims.d_head, **ones)
    if "attn_neuron" in values:
        attn = attn * values["attn_neuron"]
    if "head" in values:
        attn = attn * values["head"][..., None]
    if "block" in values:
        attn = attn * values["block"][..., None, None]
    if not dims.has_mlp:
        return SiteMasks(attn, None)
    mlp = torch.ones(dims.n_layers, dims.d_mlp, **ones)
    if "mlp_neuron" in values:
        mlp = mlp * values["mlp_neuron"]
    if "mlp" in values:
        mlp = mlp * values["mlp"][..., None]
    if "block" in values:
        mlp = mlp * values["block"][..., None]
    slots = attn.shape[:-3] or mlp.shape[:-2]  # a branch left whole has no slot axis
    return SiteMasks(attn.expand(*slots, *attn.shape[-3:]), mlp.expand(*slots, *mlp.shape[-2:]))


def with_ancestors(values: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each granularity's values times those of its ancestors in ``values``, in its own
    shape: a node's share of the circuit once the rule "a node whose parent is dropped is
    dropped" is applied."""
    out: dict[str, Tensor] = {}
    for g in GRANULARITIES:  # parents first
        if g not in values:
            continue
        value, parent = values[g], PARENT[g]
        while parent is not None and parent not in out:
            parent = PARENT[parent]
        if parent is not None:
            above = out[parent]
            value = value * above.reshape(above.shape + (1,) * (value.ndim - above.ndim))
        out[g] = value
    return out


def finest(granularities) -> list[str]:
    """Per branch (attention, MLP) the finest of ``granularities``; the block if neither: the
    nodes whose count is the size of a circuit."""
    per_branch = [
        next((g for g in branch if g in granularities), None)
        for branch in (("attn_neuron", "head"), ("mlp_neuron", "mlp"))
    ]
    out = [g for g in per_branch if g is not None]
    return out or [g for g in ("block",) if g in granularities]
