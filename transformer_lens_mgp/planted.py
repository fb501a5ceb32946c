"""Small models whose circuit is known by construction, to check that pruning finds it.

Each model starts from random weights; then every head, attention neuron and MLP neuron is
given a role by editing its output weights (``W_O`` rows, ``W_out`` rows):

- **live**: output scaled up, so the prediction depends on it;
- **dead**: output weights zero, so it provably cannot matter;
- **negligible**: output scaled down a thousandfold, live but redundant;
- **cancelling** (variant ``"cancelling"``): two MLP neurons with identical inputs and
  opposite outputs, so each matters alone but the pair cancels exactly: together they
  provably cannot matter, yet removing either one changes the output.

The dataset asks for the model's own top prediction on random prompts whose corruption
changes two tokens. The ground truth is the live nodes this dataset needs (removing one alone
costs at least 5 % of the empty circuit's KL) and their ancestors; dead nodes and parents
whose children are all dead provably cannot matter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool
from torch import Tensor
from transformer_lens import HookedTransformer, HookedTransformerConfig

from .data import PairedDataset
from .granularity import ModelDims

VARIANTS: dict[str, dict] = {
    "standard": {},
    "attn_only": dict(attn_only=True, d_mlp=None),
    "gqa": dict(
        gated_mlp=True,
        act_fn="silu",
        normalization_type="RMS",
        n_key_value_heads=2,
        positional_embedding_type="rotary",
        rotary_dim=8,
    ),
    "cancelling": {},
}
"""Architectures of the planted models: a GPT-2-like one, attention-only, and a Llama-like
one with gated MLPs, RMS norm, rotary embeddings and grouped-query attention."""

LIVE_SCALE, NEGLIGIBLE_SCALE = 4.0, 1e-3
NEURON_SCALE = 8.0
"""Live MLP neurons write more than live heads: each is one of many small writers."""


@dataclass
class PlantedCircuit:
    """A model with a known circuit.

    Args:
        model: the planted HookedTransformer.
        dataset: clean/corrupted pairs whose answer is the model's own top prediction.
        live: per granularity, the nodes the behaviour needs.
        dead: per granularity, the nodes that provably cannot matter.
        negligible: per granularity, live nodes whose output is a thousandfold smaller.
        weak: per granularity, nodes built live that this dataset hardly needs: removing one
            alone moves the KL by less than 5 % of the empty circuit's (e.g. a neuron that
            sees no corrupted token). They count neither as live nor as dead.
        name: the variant.
    """

    model: HookedTransformer
    dataset: PairedDataset
    live: dict[str, Bool[Tensor, "*nodes"]]
    dead: dict[str, Bool[Tensor, "*nodes"]]
    negligible: dict[str, Bool[Tensor, "*nodes"]]
    weak: dict[str, Bool[Tensor, "*nodes"]]
    name: str


def planted_circuit(variant: str = "standard", seed: int = 0, n: int = 64) -> PlantedCircuit:
    """A three-layer planted model of ``variant`` (see :data:`VARIANTS`), deterministic in
    ``seed``, with ``n`` pairs."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {sorted(VARIANTS)}")
    cfg = HookedTransformerConfig(
        **{
            **dict(
                n_layers=3,
                d_model=48,
                n_ctx=16,
                d_head=8,
                n_heads=4,
                d_mlp=32,
                d_vocab=50,
                act_fn="gelu",
                normalization_type="LN",
                seed=seed,
            ),
            **VARIANTS[variant],
        }
    )
    model = HookedTransformer(cfg).eval()
    dims = ModelDims.from_cfg(cfg)
    g = torch.Generator().manual_seed(seed)
    role_head = _roles((dims.n_layers, dims.n_heads), n_live=4, n_negligible=2, generator=g)
    role_dim = torch.full((dims.n_layers, dims.n_heads, dims.d_head), DEAD)
    for layer, head in (role_head == LIVE).nonzero().tolist():
        # half the dimensions of a live head carry its output, the other half are dead
        dims_live = torch.randperm(dims.d_head, generator=g)[: dims.d_head // 2]
        role_dim[layer, head, dims_live] = LIVE
    role_dim[role_head == NEGLIGIBLE] = NEGLIGIBLE
    role_neuron = None
    with torch.no_grad():
        for layer, block in enumerate(model.blocks):
            block.attn.W_O.mul_(_scale(role_dim[layer])[..., None])
        if dims.has_mlp:
            role_neuron = _roles((dims.n_layers, dims.d_mlp), n_live=6, n_negligible=6, generator=g)
            middle = model.blocks[dims.n_layers // 2].mlp.W_out.clone()
            for layer, block in enumerate(model.blocks):
                block.mlp.W_out.mul_(_scale(role_neuron[layer], NEURON_SCALE)[:, None])
            if variant == "cancelling":
                _plant_cancelling_pair(model, role_neuron, middle)

    def nodes(*roles: int, parent_if_every_child: bool = False) -> dict[str, Tensor]:
        neurons = None if role_neuron is None else _isin(role_neuron, roles)
        return _tree(dims, _isin(role_dim, roles), neurons, parent_if_every_child)

    dataset = _dataset(model, n, g)
    built = nodes(LIVE)
    matters = _matters(model, dataset, dims, built)
    live = _tree(dims, matters["attn_neuron"], matters.get("mlp_neuron"), every=False)
    weak = {k: v & ~live[k] for k, v in built.items()}
    dead = nodes(DEAD, CANCELLING, parent_if_every_child=True)
    negligible = nodes(NEGLIGIBLE)
    return PlantedCircuit(model, dataset, live, dead, negligible, weak, variant)


DEAD, LIVE, NEGLIGIBLE, CANCELLING = 0, 1, 2, 3


def _roles(shape, n_live: int, n_negligible: int, generator) -> Tensor:
    """Random roles per node: ``n_live`` live and ``n_negligible`` negligible nodes spread
    over the layers, the rest dead."""
    roles = torch.full(shape, DEAD)
    order = torch.randperm(roles.numel(), generator=generator)
    roles.view(-1)[order[:n_live]] = LIVE
    roles.view(-1)[order[n_live : n_live + n_negligible]] = NEGLIGIBLE
    return roles


def _scale(roles: Tensor, live: float = LIVE_SCALE) -> Tensor:
    return torch.where(
        roles == LIVE,
        live,
        torch.where(roles == NEGLIGIBLE, NEGLIGIBLE_SCALE, 0.0),
    )


def _plant_cancelling_pair(model, role_neuron: Tensor, original_w_out: Tensor) -> None:
    """Two dead neurons of the middle layer become twins with opposite outputs, each as
    strong as a live neuron."""
    layer = model.cfg.n_layers // 2
    a, b = (role_neuron[layer] == DEAD).nonzero()[:2, 0].tolist()
    mlp = model.blocks[layer].mlp
    mlp.W_in[:, b] = mlp.W_in[:, a]
    mlp.b_in[b] = mlp.b_in[a]
    mlp.W_out[a] = NEURON_SCALE * original_w_out[a]
    mlp.W_out[b] = -NEURON_SCALE * original_w_out[a]
    role_neuron[layer, [a, b]] = CANCELLING


MATTERS = 0.05
"""A built-live node matters when removing it alone costs this share of the empty KL."""


def _matters(model, dataset: PairedDataset, dims: ModelDims, built: dict) -> dict[str, Tensor]:
    """Which built-live leaf nodes the dataset needs, by removing each one alone."""
    from .circuit import Circuit
    from .evaluation import evaluate_many

    on = {g: torch.full(dims.shape(g), 10.0) for g in dims.available()}
    empty = Circuit(dims=dims, log_alpha={g: -v for g, v in on.items()})
    leaves = [g for g in ("attn_neuron", "mlp_neuron") if g in built]
    candidates = [(g, tuple(i)) for g in leaves for i in built[g].nonzero().tolist()]
    circuits = [empty]
    for g, index in candidates:
        log_alpha = {k: v.clone() for k, v in on.items()}
        log_alpha[g][index] = -10.0
        circuits.append(Circuit(dims=dims, log_alpha=log_alpha))
    kl_empty, *kls = (r.kl for r in evaluate_many(model, circuits, dataset))
    out = {g: torch.zeros(dims.shape(g), dtype=torch.bool) for g in leaves}
    for (g, index), kl in zip(candidates, kls, strict=True):
        out[g][index] = kl > MATTERS * kl_empty
    return out


def _isin(roles: Tensor, wanted: tuple[int, ...]) -> Tensor:
    return torch.isin(roles, torch.tensor(wanted))


def _tree(
    dims: ModelDims, attn_neurons: Tensor, mlp_neurons: Tensor | None, every: bool
) -> dict[str, Tensor]:
    """Per granularity, from neuron-level sets: a parent is in the set when any child is
    (or, with ``every``, when every child is)."""

    def up(t: Tensor) -> Tensor:
        return t.all(-1) if every else t.any(-1)

    out = {"attn_neuron": attn_neurons, "head": up(attn_neurons)}
    children = [up(out["head"])]
    if mlp_neurons is not None:
        out["mlp_neuron"] = mlp_neurons
        out["mlp"] = up(mlp_neurons)
        children.append(out["mlp"])
    stacked = torch.stack(children, -1)
    out["block"] = stacked.all(-1) if every else stacked.any(-1)
    return out


@torch.no_grad()
def _dataset(model, n: int, generator) -> PairedDataset:
    vocab, seq_len = model.cfg.d_vocab, 8
    clean = torch.randint(0, vocab, (n, seq_len), generator=generator)
    corrupted = clean.clone()
    for position in (1, seq_len - 2):
        corrupted[:, position] = torch.randint(0, vocab, (n,), generator=generator)
    top2 = model(clean)[:, -1].topk(2, dim=-1).indices
    return PairedDataset(
        clean_tokens=clean,
        corrupted_tokens=corrupted,
        answer_tokens=top2[:, 0],
        wrong_answer_tokens=top2[:, 1],
        name="planted",
    )
