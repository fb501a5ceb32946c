import pytest
import torch

import transformer_lens_mgp.training.run as run_module
from transformer_lens_mgp import CircuitPruner, Faithfulness, UsageError
from transformer_lens_mgp.testing.tiny import build_dataset, build_model
from transformer_lens_mgp.training.sizing import MAX_RUNGS, RUNG_SHARE, Ladder, Rung

ANYTHING = Faithfulness(recovered=(-1e6, 1e6), kl=1.0)
NOTHING = Faithfulness(recovered=(0.999, 1.001), kl=1e-9)


def scales(circuit) -> list[float]:
    return [rung["scale"] for rung in circuit.fit_info["sizing"]]


def test_a_level_every_circuit_meets_halves_the_targets_and_keeps_the_smallest():
    model = build_model()
    pruner = CircuitPruner(model, steps=20, faithfulness=ANYTHING)
    circuit = pruner.fit(build_dataset(model, n=40), progress=False)
    assert scales(circuit) == [1.0, 0.5, 0.25]
    assert [c.size() for c in pruner.rungs_] == pytest.approx(
        [r["size"] for r in circuit.fit_info["sizing"]], abs=1e-6
    )
    sizing = circuit.fit_info["sizing"]
    assert all(rung["met"] for rung in sizing)
    smallest = min(sizing, key=lambda r: r["size"])
    assert circuit.fit_info["target_scale"] == smallest["scale"]
    assert circuit.size() == pytest.approx(smallest["size"], abs=1e-6)
    # the settings asked for, the chosen targets, the history up to the chosen rung's end
    assert circuit.config["target"]["head"] == 0.09
    assert circuit.fit_info["target"]["head"] == pytest.approx(0.09 * smallest["scale"])
    rung_steps = round(RUNG_SHARE * 20)
    assert [r["end"] for r in sizing] == [20 + i * rung_steps for i in range(MAX_RUNGS)]
    assert circuit.fit_info["steps_trained"] == sizing[-1]["end"]
    assert len(circuit.history["kl"]) == smallest["end"]


def test_a_level_no_circuit_meets_doubles_the_targets_and_says_so():
    model = build_model()
    with pytest.warns(UserWarning, match="no circuit met the faithfulness level"):
        circuit = CircuitPruner(model, steps=20, faithfulness=NOTHING).fit(
            build_dataset(model, n=40), progress=False
        )
    assert scales(circuit) == [1.0, 2.0, 4.0]
    sizing = circuit.fit_info["sizing"]
    assert not any(rung["met"] for rung in sizing)
    most_faithful = min(sizing, key=lambda r: r["kl_share"])
    assert circuit.fit_info["target_scale"] == most_faithful["scale"]


def test_down_the_search_tries_every_rung_and_keeps_the_smallest_that_met():
    model = build_model()
    data = build_dataset(model, n=40)
    circuit = CircuitPruner(model, steps=20, faithfulness=ANYTHING).fit(data, progress=False)
    shares = [r["kl_share"] for r in circuit.fit_info["sizing"]]
    # a level the first rung meets and at least one smaller rung misses
    level = Faithfulness(recovered=(-1e6, 1e6), kl=shares[0] * 1.0001)
    assert max(shares[1:]) > level.kl
    sized = CircuitPruner(model, steps=20, faithfulness=level).fit(data, progress=False)
    sizing = sized.fit_info["sizing"]
    assert [r["scale"] for r in sizing] == [1.0, 0.5, 0.25]  # the same rungs, judged anew
    assert [r["met"] for r in sizing] == [share <= level.kl for share in shares]
    smallest = min((r for r in sizing if r["met"]), key=lambda r: r["size"])
    assert sized.fit_info["target_scale"] == smallest["scale"]


def rung(scale: float, met: bool) -> Rung:
    return Rung(scale, kl_share=0.1, recovered=1.0, size=0.05 * scale, met=met, end=0, log_alpha={})


@pytest.mark.parametrize(
    ("path", "next_scale"),
    [
        ([(1, True)], 0.5),
        ([(1, True), (0.5, False)], 0.25),  # down: past a miss
        ([(1, False)], 2),
        ([(1, False), (2, False)], 4),
        ([(1, False), (2, True)], None),  # up: the first that meets it
        ([(1, True), (0.5, True), (0.25, True)], None),  # at most MAX_RUNGS
    ],
)
def test_the_next_rung(path, next_scale):
    ladder = Ladder.__new__(Ladder)  # the rule alone, without a run
    ladder.rungs = [rung(scale, met) for scale, met in path]
    assert MAX_RUNGS == 3 and ladder._next_scale() == next_scale


@pytest.mark.parametrize(
    "settings", [{"faithfulness": None}, {"target": {"head": 0.5}}, {"sparsity": {"head": 0.5}}]
)
def test_a_given_size_is_one_fit_on_every_pair(settings):
    model = build_model()
    pruner = CircuitPruner(model, steps=10, **settings)
    circuit = pruner.fit(build_dataset(model), progress=False)
    assert "sizing" not in circuit.fit_info and pruner.rungs_ == ()
    assert len(circuit.history["kl"]) == 10
    assert circuit.fit_info["n_validation"] is None
    with pytest.raises(UsageError, match="size is given"):
        data = build_dataset(model)
        CircuitPruner(model, steps=10, **settings).fit(data, validation=data, progress=False)


def test_the_default_holds_out_validation_pairs_and_takes_given_ones():
    model = build_model()
    data = build_dataset(model, n=40)
    circuit = CircuitPruner(model, steps=10).fit(data, progress=False)
    assert circuit.fit_info["n_validation"] == 8 and circuit.fit_info["n_pairs"] == 32
    given = build_dataset(model, n=12, seed=5)
    circuit = CircuitPruner(model, steps=10).fit(data, validation=given, progress=False)
    assert circuit.fit_info["n_validation"] == 12 and circuit.fit_info["n_pairs"] == 40


def test_resume_in_a_later_rung_matches_the_uninterrupted_fit(tmp_path, monkeypatch):
    model = build_model()
    data = build_dataset(model, n=40)
    settings = dict(seed=3, steps=20, faithfulness=ANYTHING)
    reference = CircuitPruner(model, **settings).fit(data, progress=False)

    calls = []
    real_kl = run_module.kl_divergence

    def interrupt_in_the_second_rung(*args):
        calls.append(torch.is_grad_enabled())  # training steps only
        if sum(calls) == 20 + 6:
            raise KeyboardInterrupt
        return real_kl(*args)

    monkeypatch.setattr(run_module, "kl_divergence", interrupt_in_the_second_rung)
    with pytest.raises(KeyboardInterrupt):
        CircuitPruner(model, **settings, checkpoint_every=5).fit(
            data, progress=False, checkpoint_dir=tmp_path
        )
    monkeypatch.setattr(run_module, "kl_divergence", real_kl)
    resumed = CircuitPruner(model, **settings).fit(
        data, progress=False, checkpoint_dir=tmp_path, resume=True
    )
    for g in reference.granularities:
        assert torch.equal(resumed.log_alpha[g], reference.log_alpha[g]), g
    assert resumed.history == reference.history
    assert resumed.fit_info["sizing"] == reference.fit_info["sizing"]


@pytest.mark.parametrize(
    "bad",
    [{"kl": 0}, {"kl": 1.5}, {"recovered": (1.1, 0.9)}, {"recovered": (0.9,)}, {"kl": "x"}],
)
def test_a_bad_level_is_refused_with_its_fix(bad):
    with pytest.raises(UsageError, match="faithfulness"):
        Faithfulness(**bad)


def test_a_level_checks_recovered_only_where_there_is_one():
    level = Faithfulness()
    assert level.met(0.05, 1.0) and level.met(0.05, None)
    assert not level.met(0.3, 1.0) and not level.met(0.05, 1.2) and not level.met(0.05, 0.8)
