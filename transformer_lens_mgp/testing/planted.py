"""Small models whose circuit is known by construction, to check that pruning finds it.

Each model starts from random weights; then every head, attention neuron and MLP neuron is
given a role by editing its output weights (``W_O`` rows, ``W_out`` rows):

- **live**: output scaled up, so the prediction depends on it;
- **dead**: output weights zero, so it provably cannot matter;
- **negligible**: output scaled down a thousandfold, live but redundant;
- **cancelling** (variant ``"cancelling"``): two MLP neurons with identical inputs and
  opposite outputs, so each matters alone but the pair cancels exactly: together they
  provably cannot matter, yet removing either one changes the output;
- **redundant** (variant ``"redundant"``): two identical MLP neurons of the first layer,
  ``a`` and ``b``, read by a saturating OR (one ReLU neuron of the middle layer computing
  ``relu(1 - g (a + b)) = 1 - clamp(g (a + b), 0, 1)``), so either one alone suffices:
  removing one costs (almost) nothing, removing both costs a lot. The signal is whether the
  corrupted positions hold a trigger token, which the clean prompts always do and the
  corrupted ones never; one first-layer head with uniform attention brings it to the answer
  position, and each step of this path has a residual direction of its own.

The dataset asks for the model's own top prediction on random prompts whose corruption
changes two tokens. The ground truth is the live nodes this dataset needs (removing one alone
costs at least 5 % of the empty circuit's KL) and their ancestors; dead nodes and parents
whose children are all dead provably cannot matter. A redundant pair is needed as a group
(removing both costs at least 5 %), so its members count neither as live nor as dead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..analysis.evaluation import evaluate_many
from ..core.circuit import Circuit
from ..core.data import PairedDataset
from ..core.errors import UsageError
from ..core.nodes import ModelDims
from .tiny import LLAMA_LIKE, build_cfg, model_from_cfg

if TYPE_CHECKING:  # TransformerLens 4.x has no HookedTransformer
    from transformer_lens import HookedTransformer

VARIANTS: dict[str, dict] = {
    "standard": {},
    "attn_only": dict(attn_only=True, d_mlp=None),
    "gqa": LLAMA_LIKE,
    "cancelling": {},
    "redundant": dict(act_fn="relu"),
}
"""Architectures of the planted models: a GPT-2-like one, attention-only, and a Llama-like
one with gated MLPs, RMS norm, rotary embeddings and grouped-query attention; ``cancelling``
and ``redundant`` are GPT-2-like with a planted pair of MLP neurons (``redundant`` uses ReLU,
so its OR saturates exactly)."""

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
        any_of: per granularity, groups of redundant nodes (one mask each) of which any one
            suffices: removing the whole group costs at least 5 % of the empty KL, removing
            any one member alone less. The group counts as one needed node, its members
            neither as live nor as dead.
    """

    model: HookedTransformer
    dataset: PairedDataset
    live: dict[str, Bool[Tensor, "*nodes"]]
    dead: dict[str, Bool[Tensor, "*nodes"]]
    negligible: dict[str, Bool[Tensor, "*nodes"]]
    weak: dict[str, Bool[Tensor, "*nodes"]]
    name: str
    any_of: dict[str, list[Bool[Tensor, "*nodes"]]] = field(default_factory=dict)


def planted_circuit(variant: str = "standard", seed: int = 0, n: int = 64) -> PlantedCircuit:
    """A three-layer planted model of ``variant`` (see :data:`VARIANTS`), deterministic in
    ``seed``, with ``n`` pairs."""
    if variant not in VARIANTS:
        raise UsageError(f"unknown variant {variant!r}; choose from {sorted(VARIANTS)}")
    shape = dict(n_layers=3, d_model=48, d_mlp=32, d_vocab=50, seed=seed)
    cfg = build_cfg(**{**shape, **VARIANTS[variant]})
    model = model_from_cfg(cfg)
    dims = ModelDims.from_cfg(cfg)
    g = torch.Generator().manual_seed(seed)
    role_head = _roles((dims.n_layers, dims.n_heads), n_live=4, n_negligible=2, generator=g)
    role_dim = torch.full((dims.n_layers, dims.n_heads, dims.d_head), DEAD)
    for layer, head in (role_head == LIVE).nonzero().tolist():
        # half the dimensions of a live head carry its output, the other half are dead
        dims_live = torch.randperm(dims.d_head, generator=g)[: dims.d_head // 2]
        role_dim[layer, head, dims_live] = LIVE
    role_dim[role_head == NEGLIGIBLE] = NEGLIGIBLE
    role_neuron, triggers = None, None
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
            if variant == "redundant":
                triggers = _plant_redundant_pair(model, role_dim, role_neuron, g)

    def nodes(*roles: int, parent_if_every_child: bool = False) -> dict[str, Tensor]:
        neurons = None if role_neuron is None else _isin(role_neuron, roles)
        return _tree(dims, _isin(role_dim, roles), neurons, parent_if_every_child)

    dataset = _dataset(model, n, g, triggers)
    built = nodes(LIVE)
    groups = [] if triggers is None else [_isin(role_neuron, (REDUNDANT,))]
    matters, any_of = _matters(model, dataset, dims, built, groups)
    live = _live(dims, matters, any_of)
    weak = {k: v & ~live[k] for k, v in built.items()}
    dead = nodes(DEAD, CANCELLING, parent_if_every_child=True)
    negligible = nodes(NEGLIGIBLE)
    return PlantedCircuit(model, dataset, live, dead, negligible, weak, variant, any_of)


DEAD, LIVE, NEGLIGIBLE, CANCELLING, REDUNDANT = 0, 1, 2, 3, 4


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


TRIGGER, CARRIER, PAIR_GAIN, PAIR_WRITE, OR_GAIN, OR_WRITE = 1.0, 1.0, 10.0, 0.005, 20.0, 2.0
"""Sizes in the redundant pair's path: the trigger tokens' embedding component, the carrier
head's write, the pair neurons' input gain and (small, so that losing one member hardly moves
the layer norms) output, the OR neuron's input gain ``g`` (one member alone saturates it; far
steeper, the masks' gradient vanishes and pruning loses the pair) and output."""


def _plant_redundant_pair(
    model, role_dim: Tensor, role_neuron: Tensor, generator
) -> Int[Tensor, " triggers"]:
    """Plant trigger tokens -> carrier head -> two identical first-layer neurons -> a
    saturating OR in the middle layer -> the output, each step on its own residual direction
    that nothing else writes or reads; return the trigger tokens."""
    trigger, carried, pair, output = _reserved_directions(model, 4, generator)
    triggers = torch.randperm(model.cfg.d_vocab, generator=generator)[: model.cfg.d_vocab // 5]
    model.W_E[triggers] += TRIGGER * trigger
    head = _carrier_head(model, role_dim[0], trigger, carried)
    role_dim[0, head] = DEAD
    role_dim[0, head, 0] = LIVE
    first = model.blocks[0].mlp
    a, b = (role_neuron[0] == DEAD).nonzero()[:2, 0].tolist()
    first.W_in[:, [a, b]] = PAIR_GAIN * carried[:, None]
    first.b_in[[a, b]] = 0.0
    first.W_out[[a, b]] = PAIR_WRITE * pair
    role_neuron[0, [a, b]] = REDUNDANT
    _plant_or(model, role_neuron, pair, output)
    return triggers


def _plant_or(model, role_neuron: Tensor, pair: Tensor, output: Tensor) -> None:
    """A dead middle-layer neuron becomes relu(1 - x), x the ``pair`` component times
    ``OR_GAIN``: 1 - clamp(x, 0, 1), a saturating NOR that one pair member alone already
    turns off, bounded so that a partly masked neuron moves the output no more than a
    removed one."""
    layer = model.cfg.n_layers // 2
    mlp = model.blocks[layer].mlp
    neuron = int((role_neuron[layer] == DEAD).nonzero()[0, 0])
    mlp.W_in[:, neuron] = -OR_GAIN * pair
    mlp.b_in[neuron] = 1.0
    mlp.W_out[neuron] = OR_WRITE * output
    role_neuron[layer, neuron] = LIVE


def _reserved_directions(model, k: int, generator) -> list[Float[Tensor, " d_model"]]:
    """``k`` orthonormal residual directions, orthogonal to the all-ones direction (so layer
    norm's centring keeps them), projected out of every existing write to the residual and
    every read from it, except the unembedding's read of the last one (the output)."""
    basis = torch.randn(model.cfg.d_model, k, generator=generator)
    basis = torch.linalg.qr(basis - basis.mean(0)).Q
    writes = [model.W_E, model.W_pos]
    reads = [(model.W_U, basis[:, :-1])]
    for block in model.blocks:
        writes += [block.attn.W_O, block.attn.b_O, block.mlp.W_out, block.mlp.b_out]
        reads += [(w, basis) for w in (block.attn.W_Q, block.attn.W_K, block.attn.W_V)]
        reads.append((block.mlp.W_in, basis))
    for w in writes:
        w -= (w @ basis) @ basis.T
    for w, directions in reads:
        w -= directions @ (directions.T @ w)
    return list(basis.T)


def _carrier_head(model, roles: Tensor, trigger: Tensor, carried: Tensor) -> int:
    """A first-layer head (a dead one where there is one) made to attend uniformly and copy
    the trigger component, in its first dimension only, onto the ``carried`` direction."""
    dead = (roles == DEAD).all(-1).nonzero()[:, 0].tolist()
    head = dead[0] if dead else 0
    attn = model.blocks[0].attn
    for w in (attn.W_Q, attn.b_Q, attn.W_V, attn.b_V, attn.W_O):
        w[head] = 0.0
    attn.W_V[head, :, 0] = trigger
    attn.W_O[head, 0] = CARRIER * carried
    return head


MATTERS = 0.05
"""A built-live node matters when removing it alone costs this share of the empty KL."""


def _matters(
    model, dataset: PairedDataset, dims: ModelDims, built: dict, groups: list[Tensor]
) -> tuple[dict[str, Tensor], dict[str, list[Tensor]]]:
    """Which built-live leaf nodes the dataset needs, by removing each one alone, and which
    groups of MLP neurons it needs only as a whole (removing every member matters, removing
    any one alone does not)."""
    leaves = [g for g in ("attn_neuron", "mlp_neuron") if g in built]
    singles = [(g, tuple(i)) for g in leaves for i in built[g].nonzero().tolist()]
    removals = [{g: _only(dims, g, index)} for g, index in singles]
    for group in groups:
        removals += [
            {"mlp_neuron": _only(dims, "mlp_neuron", tuple(i))} for i in group.nonzero().tolist()
        ]
        removals.append({"mlp_neuron": group})
    costs = _removal_costs(model, dataset, dims, removals)
    out = {g: torch.zeros(dims.shape(g), dtype=torch.bool) for g in leaves}
    for (g, index), cost in zip(singles, costs[: len(singles)], strict=True):
        out[g][index] = cost > MATTERS
    rest, needed = costs[len(singles) :], []
    for group in groups:
        k = int(group.sum())
        alone, whole, rest = rest[:k], rest[k], rest[k + 1 :]
        if whole > MATTERS and max(alone) <= MATTERS:
            needed.append(group)
    return out, ({"mlp_neuron": needed} if needed else {})


def _only(dims: ModelDims, granularity: str, index: tuple[int, ...]) -> Tensor:
    mask = torch.zeros(dims.shape(granularity), dtype=torch.bool)
    mask[index] = True
    return mask


def _removal_costs(
    model, dataset: PairedDataset, dims: ModelDims, removals: list[dict[str, Tensor]]
) -> list[float]:
    """The KL of the full circuit less each removal's nodes, as a share of the empty
    circuit's."""

    def without(off: dict[str, Tensor]) -> Circuit:
        kept = {
            g: ~off[g] if g in off else torch.ones(dims.shape(g), dtype=torch.bool)
            for g in dims.available()
        }
        return Circuit.from_kept(dims, kept)

    everything = {g: torch.ones(dims.shape(g), dtype=torch.bool) for g in dims.available()}
    circuits = [without(everything)] + [without(off) for off in removals]
    kl_empty, *kls = (r.kl for r in evaluate_many(model, circuits, dataset))
    return [kl / kl_empty for kl in kls]


def _live(
    dims: ModelDims, matters: dict[str, Tensor], any_of: dict[str, list[Tensor]]
) -> dict[str, Tensor]:
    """Leaves that matter alone, and every parent of one of them or of a needed group."""
    neurons = matters.get("mlp_neuron")
    groups = any_of.get("mlp_neuron", [])
    parents_of = neurons | torch.stack(groups).any(0) if groups else neurons
    live = _tree(dims, matters["attn_neuron"], parents_of, every=False)
    if neurons is not None:
        live["mlp_neuron"] = neurons
    return live


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
def _dataset(model, n: int, generator, triggers: Tensor | None = None) -> PairedDataset:
    """Random prompts with two corrupted positions. With ``triggers``, the clean prompts hold
    a trigger token at both corrupted positions and no trigger elsewhere, the corrupted
    prompts none at all."""
    vocab, seq_len = model.cfg.d_vocab, 8
    others = torch.arange(vocab)
    if triggers is not None:
        others = others[~torch.isin(others, triggers)]
    clean = _draw(others, (n, seq_len), generator)
    corrupted = clean.clone()
    for position in (1, seq_len - 2):
        if triggers is not None:
            clean[:, position] = _draw(triggers, (n,), generator)
        corrupted[:, position] = _draw(others, (n,), generator)
    top2 = model(clean)[:, -1].topk(2, dim=-1).indices
    return PairedDataset(
        clean_tokens=clean,
        corrupted_tokens=corrupted,
        answer_tokens=top2[:, 0],
        wrong_answer_tokens=top2[:, 1],
        name="planted",
    )


def _draw(tokens: Int[Tensor, " k"], shape: tuple[int, ...], generator) -> Tensor:
    return tokens[torch.randint(0, len(tokens), shape, generator=generator)]
