"""Circuits with one mask per token role (``PruningConfig(per_role=True)``)."""

import pytest
import torch
from conftest import assert_untouched, model_state

from transformer_lens_mgp import (
    Circuit,
    CircuitPruner,
    ModelDims,
    PruningConfig,
    UsageError,
    evaluate,
    evaluate_many,
    random_circuit,
)
from transformer_lens_mgp.analysis.plotting import plot_role_positions
from transformer_lens_mgp.analysis.subcircuits import scored_circuit
from transformer_lens_mgp.testing.tiny import build_dataset, build_model

SLOTS = ("first", "last", "other")


def with_roles(data):
    """The tiny pairs with a role on the first token (which the corruption never changes)
    and one on the answer position."""
    n, seq = data.clean_tokens.shape
    positions = torch.tensor([[0, seq - 1]] * n)
    return data.with_roles(SLOTS[:-1], positions)


def per_slot(dims: ModelDims, kept_slots: dict[str, bool]) -> Circuit:
    """Every node kept in the slots marked True, dropped in the others."""
    keep = torch.tensor([kept_slots[s] for s in SLOTS])
    shape = (len(SLOTS), *dims.shape("block"))
    return Circuit.from_kept(dims, {"block": keep[:, None].expand(shape)}, slots=SLOTS)


def test_each_token_takes_its_roles_masks():
    """Activations at the first token are the same in both prompts (causal model, same first
    token), so ablating every node there alone changes nothing; ablating at every other
    position changes the answer, and keeping every slot is the whole model."""
    model = build_model()
    data = with_roles(build_dataset(model, n=16))
    dims = ModelDims.from_cfg(model.cfg)
    first_off = per_slot(dims, {"first": False, "last": True, "other": True})
    other_off = per_slot(dims, {"first": True, "last": True, "other": False})
    every = per_slot(dims, {"first": True, "last": True, "other": True})
    results = evaluate_many(model, [first_off, other_off, every], data)
    assert results[0].kl == pytest.approx(0.0, abs=1e-6)
    assert results[1].kl > 1e-3
    assert results[2].kl == pytest.approx(0.0, abs=1e-6)
    assert results[0].kept["block"] == 2 * dims.n_layers and results[0].total["block"] == 6


def test_the_same_masks_in_every_slot_run_like_the_circuit_without_slots():
    model = build_model()
    data = with_roles(build_dataset(model, n=16))
    dims = ModelDims.from_cfg(model.cfg)
    plain = random_circuit(
        Circuit.from_kept(dims, {"head": torch.rand(dims.shape("head")) > 0.5}), seed=1
    )
    spread = Circuit(
        dims,
        {g: t.expand(len(SLOTS), *t.shape).clone() for g, t in plain.log_alpha.items()},
        slots=SLOTS,
    )
    a, b = evaluate_many(model, [plain, spread], data)
    assert b.kl == pytest.approx(a.kl, rel=1e-5) and b.recovered == pytest.approx(a.recovered)
    assert spread.n_kept("head") == len(SLOTS) * plain.n_kept("head")
    assert torch.equal(spread.any_position().kept("head"), plain.kept("head"))


def test_a_per_role_fit_trains_masks_per_slot_and_leaves_the_model_alone():
    model = build_model()
    data = with_roles(build_dataset(model, n=32))
    before = model_state(model)
    config = PruningConfig(per_role=True, steps=6, target={"head": 0.3, "mlp_neuron": 0.3})
    circuit = CircuitPruner(model, config).fit(data, progress=False)
    assert_untouched(model, before)
    dims = ModelDims.from_cfg(model.cfg)
    assert circuit.slots == SLOTS
    assert circuit.log_alpha["head"].shape == (3, *dims.shape("head"))
    assert circuit.n_total("mlp_neuron") == 3 * dims.n_nodes("mlp_neuron")
    assert all("@" in name for name in circuit.nodes("head"))
    assert "one mask per slot of first, last, other" in circuit.summary()
    (result,) = evaluate_many(model, [circuit], data)
    assert result.kl >= 0
    # chosen circuits of equal size keep the slots
    scores = {g: torch.rand(circuit.shape(g)) for g in circuit.granularities}
    for chosen in (random_circuit(circuit), scored_circuit(circuit, scores)):
        assert chosen.slots == SLOTS
        assert {g: chosen.n_kept(g) for g in chosen.granularities} == {
            g: circuit.n_kept(g) for g in circuit.granularities
        }
    assert plot_role_positions(circuit).data[0].z.shape == (3, dims.n_layers)


def test_the_default_size_search_runs_per_role():
    model = build_model()
    data = with_roles(build_dataset(model, n=40))
    pruner = CircuitPruner(model, PruningConfig(per_role=True, steps=5))
    circuit = pruner.fit(data, progress=False)
    assert circuit.fit_info["sizing"] and all(c.slots == SLOTS for c in pruner.rungs_)


def test_a_per_role_circuit_survives_a_file_and_explains_what_it_needs(tmp_path):
    model = build_model()
    data = with_roles(build_dataset(model, n=8))
    dims = ModelDims.from_cfg(model.cfg)
    circuit = per_slot(dims, {"first": False, "last": True, "other": True})
    loaded = Circuit.load(circuit.save(tmp_path / "c.safetensors"), model)
    assert loaded.slots == SLOTS and torch.equal(loaded.kept("block"), circuit.kept("block"))
    hooks = loaded.fwd_hooks(data, model=model)
    with torch.no_grad():
        patched = model.run_with_hooks(data.clean_tokens, fwd_hooks=hooks)[:, -1]
        full = model(data.clean_tokens)[:, -1]
    assert torch.allclose(patched, full, atol=1e-5)  # only the unchanged first token ablated
    with pytest.raises(UsageError, match="pass the PairedDataset"):
        loaded.fwd_hooks(data.corrupted_tokens, model=model)
    with pytest.raises(UsageError, match="record roles"):
        evaluate(model, loaded, data.with_roles(["a", "b"], data.role_positions))
    with pytest.raises(UsageError, match="any_position"):
        loaded.to_mib(tmp_path / "c.json", model)
    with pytest.raises(UsageError, match="record none"):
        bare = build_dataset(model, n=8)
        CircuitPruner(model, per_role=True, steps=2).fit(bare, progress=False)
    with pytest.raises(UsageError, match="per_role=True"):
        plot_role_positions(loaded.any_position())
