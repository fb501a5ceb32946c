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
    assert {"loss", "kl", "l0/head", "kept/head", "target/head", "multiplier/head"} <= set(
        record.values
    )
    assert run.history["kl"] == [record.kl]


def test_a_restored_run_continues_exactly_like_the_original():
    model = build_model()
    data = build_dataset(model)
    pruner, straight = new_run(model, data, target={"mlp_neuron": 0.3})
    _, first = new_run(model, data, target={"mlp_neuron": 0.3})
    _, second = new_run(model, data, target={"mlp_neuron": 0.3})
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
