"""PruningRun: one step at a time, with a state that saves and restores as one unit."""

from __future__ import annotations

import torch

from transformer_lens_mgp import PruningConfig
from transformer_lens_mgp.core.model_api import model_dims
from transformer_lens_mgp.testing.tiny import build_dataset, build_model
from transformer_lens_mgp.training.pruner import CircuitPruner
from transformer_lens_mgp.training.run import PruningRun, StepRecord


def new_run(model, data, **settings):
    pruner = CircuitPruner(model, PruningConfig(steps=8, **settings))
    dims = model_dims(model)
    return pruner, PruningRun(model, pruner.config.resolved(dims), dims, data)


def test_steps_record_what_they_measured():
    model = build_model()
    data = build_dataset(model)
    pruner, run = new_run(model, data, target={"head": 0.5})
    with pruner.execution():
        run.prepare()
        record = run.step()
    assert isinstance(record, StepRecord) and record.step == 0 and run.step_index == 1
    expected = {"loss", "kl", "lr", "l0/head", "kept/head", "target/head", "multiplier/head"}
    assert expected | {"size/head", "temperature"} <= set(record.values)
    assert run.history["kl"] == [record.kl]


def test_a_restored_run_continues_exactly_like_the_original():
    model = build_model()
    data = build_dataset(model)
    settings = dict(target={"mlp_neuron": 0.3}, lr_decay=0.5)
    pruner, straight = new_run(model, data, **settings)
    _, first = new_run(model, data, **settings)
    _, second = new_run(model, data, **settings)
    with pruner.execution():
        for run in (straight, first, second):
            run.prepare()
        for _ in range(8):
            straight.step()
        for _ in range(4):
            first.step()
        second.load_state_dict(first.state_dict())
        while not second.done:
            second.step()
    for g, p in straight.log_alpha.items():
        assert torch.equal(p, second.log_alpha[g]), g
    assert straight.history == second.history
    assert torch.equal(
        straight.sparsity.multipliers["mlp_neuron"], second.sparsity.multipliers["mlp_neuron"]
    )


def test_the_learning_rate_falls_to_zero_over_the_decay_share():
    model = build_model()
    _, run = new_run(model, build_dataset(model), lr=0.2, lr_decay=0.5)
    rates = [run.learning_rate(step) for step in range(8)]  # 8 steps, the last 4 decaying
    assert rates[:4] == [0.2] * 4
    assert all(a > b for a, b in zip(rates[3:-1], rates[4:], strict=True)) and rates[-1] == 0.0
    _, constant = new_run(model, build_dataset(model), lr=0.2)
    assert {constant.learning_rate(step) for step in range(8)} == {0.2}
