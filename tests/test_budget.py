"""``max_kl``: the smallest circuit whose held-out KL stays within a budget."""

from __future__ import annotations

import pytest
from conftest import assert_untouched, model_state

from transformer_lens_mgp import CircuitPruner, evaluate
from transformer_lens_mgp.testing.planted import planted_circuit
from transformer_lens_mgp.testing.tiny import build_dataset, build_model
from transformer_lens_mgp.training.budget import KLBudget, Snapshot, split_validation


@pytest.fixture(scope="module")
def planted():
    return planted_circuit("standard", seed=0, n=128)


@pytest.fixture(scope="module")
def kl_empty(planted):
    return (
        CircuitPruner(planted.model, steps=1, bf16=False)
        .fit(planted.dataset, progress=False)
        .fit_info["kl_empty"]
    )


def test_the_returned_circuit_is_the_smallest_measured_within_budget(planted, kl_empty):
    max_kl = 0.25 * kl_empty
    # float32, as evaluate computes, so that the two measurements agree
    circuit = CircuitPruner(planted.model, max_kl=max_kl, bf16=False).fit(
        planted.dataset, progress=False
    )
    history, info = circuit.history, circuit.fit_info
    assert len(history["val_kl"]) == 10 and info["n_validation"] == round(0.2 * 128)
    within = [s for k, s in zip(history["val_kl"], history["val_size"], strict=True) if k <= max_kl]
    assert within and circuit.size() == pytest.approx(min(within))
    assert info["validation_kl"] <= max_kl
    _, held_out = split_validation(len(planted.dataset), seed=0)
    again = evaluate(planted.model, circuit, planted.dataset[held_out])
    assert again.kl == pytest.approx(info["validation_kl"], abs=1e-5)


def test_a_looser_budget_gives_a_smaller_circuit_that_keeps_what_matters(planted, kl_empty):
    tight, loose = (
        CircuitPruner(planted.model, max_kl=share * kl_empty).fit(planted.dataset, progress=False)
        for share in (0.01, 0.5)
    )
    assert loose.size() < tight.size()
    assert loose.fit_info["validation_kl"] > tight.fit_info["validation_kl"]
    live = planted.live["attn_neuron"]
    assert (tight.kept("attn_neuron") & live).sum() >= 0.9 * live.sum()


def test_the_scale_holds_then_rises_under_budget_and_falls_over_it():
    budget = KLBudget(max_kl=1.0, hold_steps=5)
    for step in range(5):
        budget.update(0.0, step)
    assert budget.scale == 1.0
    budget.update(0.0, 5)
    assert budget.scale > 1
    for step in range(6, 16):
        budget.update(5.0, step)
    assert budget.scale < 1
    for step in range(16, 10_000):
        budget.update(0.0, step)
    assert budget.log_scale == 8.0


def test_the_scale_aims_under_the_budget_by_the_measured_generalisation_gap():
    budget = KLBudget(max_kl=0.4)
    for step in range(4):
        budget.update(0.2, step)
    budget.record(Snapshot(4, 0.3, 0.5, {}))  # held out 0.1 above training
    assert budget.aim == pytest.approx(0.3)
    before = budget.scale
    budget.update(0.35, 4)  # under the budget but over the aim: the price falls
    assert budget.scale < before
    budget.record(Snapshot(8, 1.0, 0.5, {}))
    assert budget.aim == pytest.approx(0.1)  # never under a quarter of the budget


def test_best_snapshot_is_the_smallest_within_budget_else_none():
    budget = KLBudget(max_kl=0.3)
    for step, kl, size in [(10, 0.1, 0.5), (20, 0.2, 0.2), (30, 0.4, 0.1), (40, 0.3, 0.2)]:
        budget.record(Snapshot(step, kl, size, {}))
    assert budget.best().step == 40  # ties go to the later one
    assert KLBudget(max_kl=0.05).best() is None


def test_no_circuit_within_budget_warns_and_returns_the_most_faithful():
    model = build_model()
    data = build_dataset(model, n=20)
    sparsity = {g: 1000.0 for g in ("block", "head", "attn_neuron", "mlp", "mlp_neuron")}
    pruner = CircuitPruner(model, max_kl=1e-6, sparsity=sparsity, steps=40, eval_every=20)
    with pytest.warns(UserWarning, match="no circuit met max_kl"):
        circuit = pruner.fit(data, progress=False)
    assert circuit.fit_info["validation_kl"] == pytest.approx(
        min(circuit.history["val_kl"]), abs=1e-5
    )


def test_given_validation_pairs_are_used_and_the_model_is_untouched():
    model = build_model()
    train, validation = build_dataset(model, n=20), build_dataset(model, n=7, seed=1)
    before = model_state(model)
    circuit = CircuitPruner(model, max_kl=0.1, steps=12, eval_every=4).fit(
        train, validation=validation, progress=False
    )
    assert circuit.fit_info["n_validation"] == 7 and circuit.fit_info["n_pairs"] == 20
    assert circuit.history["val_step"] == [4, 8, 12]
    assert_untouched(model, before)


@pytest.mark.parametrize(
    "kwargs, fit_kwargs, message",
    [
        (dict(max_kl=0.0), {}, "max_kl must be a finite number > 0"),
        (dict(max_kl=float("nan")), {}, "max_kl must be a finite number > 0"),
        (dict(max_kl="0.3"), {}, "max_kl must be a finite number"),
        (dict(max_kl=0.3, target={"head": 0.1}), {}, "give one of them"),
        (dict(eval_every=5), {}, "set max_kl"),
        (dict(max_kl=0.3, eval_every=0), {}, "eval_every must be a positive integer"),
        (dict(max_kl=0.3), dict(validation="pairs"), "validation must be a PairedDataset"),
    ],
)
def test_bad_budget_arguments_are_explained(kwargs, fit_kwargs, message):
    model = build_model()
    data = build_dataset(model, n=8)
    with pytest.raises((ValueError, TypeError), match=message):
        CircuitPruner(model, **kwargs, steps=2).fit(data, progress=False, **fit_kwargs)


def test_one_pair_cannot_be_split_for_validation():
    model = build_model()
    with pytest.raises(ValueError, match="give more pairs, a validation dataset"):
        CircuitPruner(model, max_kl=0.3, steps=2).fit(build_dataset(model, n=1), progress=False)
