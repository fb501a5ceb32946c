import math

import torch
from conftest import build_dataset, build_model
from test_pruner import known_answer_model

from transformer_lens_mgp import Circuit, CircuitPruner, ModelDims
from transformer_lens_mgp.evaluation import evaluate, random_circuit


def full_circuit(model, value=5.0):
    dims = ModelDims.from_cfg(model.cfg)
    return Circuit(
        dims=dims, log_alpha={g: torch.full(dims.shape(g), value) for g in dims.available()}
    )


def test_full_circuit_is_perfectly_faithful():
    model = build_model()
    result = evaluate(model, full_circuit(model), build_dataset(model))
    assert abs(result.kl) < 1e-6
    assert math.isclose(result.recovered, 1.0, abs_tol=1e-5)
    assert result.accuracy_full == result.accuracy_circuit == 1.0


def test_empty_circuit_recovers_nothing():
    model = build_model()
    result = evaluate(model, full_circuit(model, -5.0), build_dataset(model))
    assert math.isclose(result.recovered, 0.0, abs_tol=1e-5)
    assert result.kl > 0.01
    assert result.kept["head"] == 0


def test_learned_circuit_beats_random_circuit_of_equal_size():
    model = known_answer_model()
    train, test = build_dataset(model, n=96).split(0.25)
    circuit = CircuitPruner(model).fit(train, steps=120, progress=False)
    baseline = random_circuit(circuit, seed=0)
    for g in ("head", "attn_neuron", "mlp_neuron"):
        assert baseline.n_kept(g) <= circuit.n_kept(g)
        assert baseline.n_kept(g) >= 0.5 * circuit.n_kept(g)
    ours, theirs = evaluate(model, circuit, test), evaluate(model, baseline, test)
    assert ours.kl < theirs.kl and ours.recovered > theirs.recovered


def test_random_circuit_respects_the_hierarchy_and_is_seeded():
    model = build_model()
    circuit = CircuitPruner(model).fit(build_dataset(model), steps=30, progress=False)
    a, b = random_circuit(circuit, 1), random_circuit(circuit, 1)
    for g in circuit.granularities:
        assert torch.equal(a.kept(g), b.kept(g))
    neurons_under_dropped_heads = a.kept("attn_neuron") & ~a.kept("head")[..., None]
    assert not neurons_under_dropped_heads.any()


def test_mean_and_zero_ablation_evaluate():
    model = build_model()
    ds = build_dataset(model)
    for ablation in ("mean", "zero"):
        result = evaluate(model, full_circuit(model, -5.0), ds, ablation=ablation)
        assert result.kl > 0 and math.isfinite(result.recovered)
