"""PruningRun: one step at a time, with a state that saves and restores as one unit."""

from __future__ import annotations

import pytest
import torch

from transformer_lens_mgp import PairedDataset, PruningConfig, Schedule
from transformer_lens_mgp.core.errors import UsageError
from transformer_lens_mgp.core.metrics import kl_divergence
from transformer_lens_mgp.core.model_api import model_dims
from transformer_lens_mgp.testing.tiny import build_dataset, build_model
from transformer_lens_mgp.training.pruner import CircuitPruner
from transformer_lens_mgp.training.run import PruningRun, StepRecord, metric_gap
from transformer_lens_mgp.training.sparsity import MULTIPLIER_LR, SparsityControl


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
    settings = dict(target={"mlp_neuron": 0.3}, schedule=Schedule(decay=0.5))
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
    _, run = new_run(model, build_dataset(model), lr=0.2, schedule=Schedule(decay=0.5))
    rates = [run.learning_rate(step) for step in range(8)]  # 8 steps, the last 4 decaying
    assert rates[:4] == [0.2] * 4
    assert all(a > b for a, b in zip(rates[3:-1], rates[4:], strict=True)) and rates[-1] == 0.0
    _, constant = new_run(model, build_dataset(model), lr=0.2, schedule=Schedule(decay=0.0))
    assert {constant.learning_rate(step) for step in range(8)} == {0.2}


def test_the_size_price_comes_to_rest_with_the_learning_rate():
    """Each rise of the multiplier is the gap times the ascent's gain times the learning
    rate's share of its peak: the last step, at learning rate 0, leaves the price as it was."""
    model = build_model()
    schedule = Schedule(decay=0.5)
    pruner, run = new_run(model, build_dataset(model), target={"head": 0.05}, schedule=schedule)
    with pruner.execution():
        run.prepare()
        while not run.done:
            run.step()
    history = run.history
    before = [0.0, *history["multiplier/head"][:-1]]
    for step in range(8):
        gap = history["kept/head"][step] - history["target/head"][step]
        assert gap > 0, "the tiny circuit stays above its target throughout"
        rise = history["multiplier/head"][step] - before[step]
        share = history["lr"][step] / run.config.lr
        assert rise == pytest.approx(MULTIPLIER_LR * share * gap, rel=1e-4, abs=1e-6), step
    assert history["lr"][-1] == 0.0
    assert history["multiplier/head"][-1] == history["multiplier/head"][-2] > 0


@pytest.mark.parametrize(("start", "rise"), [(None, 0.01), ({"head": 0.1}, 0.01 / 0.05)])
def test_a_continued_fits_price_rises_with_the_gap_relative_to_its_target(start, rise):
    """A fresh fit's multiplier rises with the gap, a continued one's (a rung of the size
    search, which starts near its target) with the gap as a share of the target."""
    control = SparsityControl({}, {"head": 0.05}, warmup_steps=1, start=start)
    kept = torch.tensor(0.06)
    control.penalty({"head": kept}, {"head": kept}, step=5)
    control.ascend(rate=1.0)
    linear, quadratic = control.multipliers["head"].tolist()
    assert linear == pytest.approx(MULTIPLIER_LR * rise)
    assert quadratic == pytest.approx(MULTIPLIER_LR * rise**2)


def test_the_metric_gap_is_in_units_of_the_behaviour():
    """0 where the circuit's logit difference is the full model's, 1 where it is off by the
    whole gap between the full model and the empty circuit."""
    model = build_model()
    batch = build_dataset(model, n=4)
    reference = torch.randn(4, model.cfg.d_vocab)
    assert metric_gap(reference, reference, batch, scale=2.0) == 0
    shifted = reference.clone()
    shifted[torch.arange(4), batch.answer_tokens] += 2.0  # the logit difference grows by 2
    assert metric_gap(shifted, reference, batch, scale=2.0) == pytest.approx(1.0)


def test_a_metric_weight_pulls_the_logit_difference_to_the_full_models():
    """The same fit with the metric term (over every step, at a constant learning rate) ends
    with logit differences closer to the full model's, pair by pair, on its pairs."""
    model = build_model()
    data = build_dataset(model, n=64)
    with torch.no_grad():
        full = model(data.clean_tokens)[:, -1]
    gaps = {}
    for weight in (0.0, 20.0):
        circuit = CircuitPruner(
            model,
            sparsity={"head": 1.0, "mlp_neuron": 2.0},
            steps=100,
            metric_weight=weight,
            schedule=Schedule(decay=0.0, finish=0.0),
        ).fit(data, progress=False)
        with torch.no_grad(), circuit.applied(model, data):
            logits = model(data.clean_tokens)[:, -1]
        gaps[weight] = metric_gap(logits, full, data, scale=1.0).item()
    assert gaps[20.0] < 0.5 * gaps[0.0], gaps


def test_a_metric_weight_needs_wrong_answers():
    model = build_model()
    data = build_dataset(model)
    no_wrong = PairedDataset(data.clean_tokens, data.corrupted_tokens, data.answer_tokens)
    with pytest.raises(UsageError, match="no wrong_answer_tokens"):
        CircuitPruner(model, metric_weight=1.0, steps=2).fit(no_wrong, progress=False)
    # the default weighs the metric only where the pairs have wrong answers
    assert CircuitPruner(model, steps=2).fit(no_wrong, progress=False).config["metric_weight"] == 0
    assert CircuitPruner(model, steps=2).fit(data, progress=False).config["metric_weight"] == 2


def test_the_hard_finish_trains_the_circuit_extraction_returns():
    """In the final phase a step's KL is the KL of the circuit extracted before it, on the
    step's pairs; before that phase the masks are random samples, and it is not."""
    model = build_model()
    data = build_dataset(model)
    pruner, run = new_run(model, data, target={"head": 0.5}, schedule=Schedule(finish=0.25))
    assert [run.config.in_finish(step) for step in range(8)] == [False] * 6 + [True] * 2
    with pruner.execution():
        run.prepare()
        gaps = []
        for step in range(8):
            circuit = run.circuit()
            batch = data[run.batch_indices(step)]
            with torch.no_grad(), circuit.applied(model, batch):
                logits = model(batch.clean_tokens)[:, -1]
            expected = kl_divergence(run.reference[run.batch_indices(step)], logits).item()
            gaps.append(abs(run.step().kl - expected))
    assert max(gaps[6:]) < 1e-4 < min(gaps[:6]), gaps


def test_the_metric_term_joins_only_in_the_final_phase():
    """With a final phase of 0.25 of 8 steps, the fit follows the KL alone for 6 steps (the
    same losses as a fit without the term), then adds the term for the last 2. The masks
    start near the threshold, so the circuit of the final phase is not the full model."""
    model = build_model()
    data = build_dataset(model)
    losses = {}
    for weight in (0.0, 5.0):
        pruner, run = new_run(
            model,
            data,
            target={"head": 0.5},
            metric_weight=weight,
            schedule=Schedule(finish=0.25),
            init_log_alpha=0.0,
        )
        with pruner.execution():
            run.prepare()
            losses[weight] = [run.step().loss for _ in range(8)]
    assert losses[5.0][:6] == losses[0.0][:6]
    late = zip(losses[5.0][6:], losses[0.0][6:], strict=True)
    assert all(priced > alone for priced, alone in late), losses
