"""Planted circuits are recovered at the default settings: recall >= 0.9 of the nodes that
matter and <= 5 % of the provably dead nodes kept, at every granularity."""

from __future__ import annotations

import pytest
import torch
from conftest import LAMBDA

from transformer_lens_mgp import Circuit, CircuitPruner, ModelDims
from transformer_lens_mgp.analysis.evaluation import evaluate_many
from transformer_lens_mgp.core.nodes import NODE_NAMES
from transformer_lens_mgp.testing.planted import MATTERS, VARIANTS, planted_circuit


def names(granularity: str, mask: torch.Tensor) -> list[str]:
    return [NODE_NAMES[granularity].format(*i) for i in mask.nonzero().tolist()]


def check_recovery(planted, circuit) -> list[str]:
    problems = []
    for g in circuit.granularities:
        kept, live, dead = circuit.kept(g), planted.live[g], planted.dead[g]
        if live.any() and (kept & live).sum() < 0.9 * live.sum():
            problems.append(f"{g}: missed {names(g, live & ~kept)}")
        if dead.any() and (kept & dead).sum() > 0.05 * dead.sum():
            problems.append(f"{g}: kept dead {names(g, dead & kept)}")
    return problems


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("variant", ["standard", "attn_only", "gqa"])
def test_planted_circuit_is_recovered(variant, seed):
    planted = planted_circuit(variant, seed=seed)
    circuit = CircuitPruner(planted.model, LAMBDA, seed=seed).fit(planted.dataset, progress=False)
    assert not check_recovery(planted, circuit)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cancelling_twins_are_never_split(seed):
    """Each twin alone moves the output, the pair together cannot: keeping exactly one of
    them would be wrong."""
    planted = planted_circuit("cancelling", seed=seed)
    circuit = CircuitPruner(planted.model, LAMBDA, seed=seed).fit(planted.dataset, progress=False)
    twins = planted.dead["mlp_neuron"] & _twin_mask(planted)
    assert twins.sum() == 2
    assert circuit.kept("mlp_neuron")[twins].sum() != 1
    dead = planted.dead["mlp_neuron"]
    assert (circuit.kept("mlp_neuron") & dead).sum() <= 0.05 * dead.sum()


def _twin_mask(planted) -> torch.Tensor:
    """The cancelling twins: the only dead neurons with non-zero output weights."""
    w_out = torch.stack([b.mlp.W_out.detach() for b in planted.model.blocks])
    return w_out.abs().sum(-1) > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_redundant_pair_is_recovered_as_a_group(seed):
    """Either member of the OR pair suffices, so pruning must keep at least one of them (one
    is the minimal circuit), and still recover the other nodes."""
    planted = planted_circuit("redundant", seed=seed)
    circuit = CircuitPruner(planted.model, LAMBDA, seed=seed).fit(planted.dataset, progress=False)
    groups = planted.any_of.get("mlp_neuron", [])
    assert len(groups) == 1, "the ground truth holds no redundant pair"
    (pair,) = groups
    kept = circuit.kept("mlp_neuron")
    assert kept[pair].any(), f"dropped both members of {names('mlp_neuron', pair)}"
    problems = check_recovery(planted, circuit)
    assert not problems, problems


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_redundant_pair_matters_only_together(seed):
    """The pair read off the weights: removing one member alone costs under 5 % of the empty
    circuit's KL, removing both costs more, and the ground truth holds it as one group."""
    planted = planted_circuit("redundant", seed=seed)
    dims = ModelDims.from_cfg(planted.model.cfg)
    pair = _identical_neurons(planted, dims)
    members = [_only(pair, i) for i in pair.nonzero().tolist()]
    assert len(members) == 2, names("mlp_neuron", pair)
    empty = {g: torch.full(dims.shape(g), -10.0) for g in dims.available()}
    circuits = [Circuit(dims=dims, log_alpha=empty)]
    circuits += [_without(dims, off) for off in [*members, pair]]
    results = evaluate_many(planted.model, circuits, planted.dataset)
    kl_empty, *kl_alone, kl_both = (r.kl for r in results)
    pair_names = names("mlp_neuron", pair)
    assert max(kl_alone) < MATTERS * kl_empty, (pair_names, kl_alone, kl_empty)
    assert kl_both > MATTERS * kl_empty, (pair_names, kl_both, kl_empty)
    groups = planted.any_of.get("mlp_neuron", [])
    assert len(groups) == 1 and torch.equal(groups[0], pair), pair_names


def _identical_neurons(planted, dims: ModelDims) -> torch.Tensor:
    """First-layer MLP neurons that write something and share their input and output
    weights with another neuron."""
    mlp = planted.model.blocks[0].mlp
    weights = torch.cat([mlp.W_in.detach().T, mlp.W_out.detach()], -1)
    same = (weights[:, None] == weights[None]).all(-1)
    same.fill_diagonal_(False)
    mask = torch.zeros(dims.shape("mlp_neuron"), dtype=torch.bool)
    mask[0] = same.any(-1) & (mlp.W_out.detach().abs().sum(-1) > 0)
    return mask


def _only(like: torch.Tensor, index: list[int]) -> torch.Tensor:
    mask = torch.zeros_like(like)
    mask[tuple(index)] = True
    return mask


def _without(dims: ModelDims, off: torch.Tensor) -> Circuit:
    """Every node kept but the MLP neurons in ``off``."""
    log_alpha = {g: torch.full(dims.shape(g), 10.0) for g in dims.available()}
    log_alpha["mlp_neuron"] = log_alpha["mlp_neuron"].masked_fill(off, -10.0)
    return Circuit(dims=dims, log_alpha=log_alpha)


def test_ground_truth_is_consistent():
    for variant in VARIANTS:
        planted = planted_circuit(variant, seed=0)
        for g, live in planted.live.items():
            assert not (live & planted.dead[g]).any(), g
            assert live.any(), g
        for g, groups in planted.any_of.items():
            for group in groups:
                assert group.sum() >= 2, g
                assert not (group & (planted.live[g] | planted.dead[g])).any(), g
        heads = planted.model.blocks[0].attn.W_O.detach().abs().sum((-1, -2))
        dead_heads = planted.dead["head"][0]
        assert torch.all(heads[dead_heads] == 0)


def test_planted_models_are_deterministic_and_checked():
    a, b = planted_circuit("gqa", seed=3), planted_circuit("gqa", seed=3)
    assert torch.equal(a.dataset.clean_tokens, b.dataset.clean_tokens)
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    with pytest.raises(ValueError, match="unknown variant"):
        planted_circuit("moe")


def test_targets_on_a_planted_circuit_keep_the_live_nodes():
    """Asking for as many MLP neurons as are live (plus slack) keeps the live ones."""
    planted = planted_circuit("standard", seed=0)
    live = planted.live["mlp_neuron"]
    target = 2 * float(live.float().mean())
    circuit = CircuitPruner(planted.model, target={"mlp_neuron": target}).fit(
        planted.dataset, progress=False
    )
    kept = circuit.kept("mlp_neuron")
    assert (kept & live).sum() >= 0.9 * live.sum(), names("mlp_neuron", live & ~kept)
    assert circuit.fraction_kept("mlp_neuron") <= target + 0.02
    assert not (kept & planted.dead["mlp_neuron"]).any()
