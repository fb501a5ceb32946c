import math

import pytest
import torch
from test_pruner import known_answer_model

from transformer_lens_mgp import Circuit, CircuitPruner, ModelDims, PairedDataset
from transformer_lens_mgp.analysis.curves import faithfulness_curve
from transformer_lens_mgp.analysis.evaluation import evaluate, evaluate_many
from transformer_lens_mgp.analysis.subcircuits import random_circuit, scored_circuit, top_fraction
from transformer_lens_mgp.testing.tiny import build_dataset, build_model


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
    circuit = CircuitPruner(model, steps=120).fit(train, progress=False)
    baseline = random_circuit(circuit, seed=0)
    for g in ("head", "attn_neuron", "mlp_neuron"):
        assert baseline.n_kept(g) <= circuit.n_kept(g)
        assert baseline.n_kept(g) >= 0.5 * circuit.n_kept(g)
    ours, theirs = evaluate(model, circuit, test), evaluate(model, baseline, test)
    assert ours.kl < theirs.kl and ours.recovered > theirs.recovered


def test_random_circuit_respects_the_hierarchy_and_is_seeded():
    model = build_model()
    circuit = CircuitPruner(model, steps=30).fit(build_dataset(model), progress=False)
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


def test_top_fraction_keeps_the_highest_log_alpha():
    dims = ModelDims(n_layers=2, n_heads=4, d_head=2, d_mlp=5)
    scores = torch.arange(8.0).view(2, 4) - 4
    circuit = Circuit(dims=dims, log_alpha={"head": scores})
    assert top_fraction(circuit, 0.25).kept("head").nonzero().tolist() == [[1, 2], [1, 3]]
    assert top_fraction(circuit, 0.01).n_kept("head") == 1  # at least one node
    assert top_fraction(circuit, 1.0).n_kept("head") == 8


def test_faithfulness_curve_of_a_learned_circuit_beats_a_shuffled_order():
    model = known_answer_model()
    train, test = build_dataset(model, n=96).split(0.25)
    circuit = CircuitPruner(model, steps=120).fit(train, progress=False)
    fractions = (0.05, 0.1, 0.2, 0.5, 1.0)
    curve = faithfulness_curve(model, circuit, test, fractions)
    assert curve.fractions == list(fractions) and len(curve.kept) == 5
    assert math.isclose(curve.faithfulness[-1], 1.0, abs_tol=1e-5)  # everything kept
    assert curve.kl[-1] < 1e-6
    g = torch.Generator().manual_seed(0)
    shuffled = Circuit(
        dims=circuit.dims,
        log_alpha={k: torch.randn(v.shape, generator=g) for k, v in circuit.log_alpha.items()},
    )
    other = faithfulness_curve(model, shuffled, test, fractions)
    assert curve.cpr > other.cpr and curve.cmd < other.cmd
    assert curve.cmd >= 0  # faithfulness may exceed 1, so CPR may too


def test_faithfulness_curve_needs_a_metric():
    model = build_model()
    ds = build_dataset(model)
    no_metric = PairedDataset(ds.clean_tokens, ds.corrupted_tokens, ds.answer_tokens)
    with pytest.raises(ValueError, match="wrong answers"):
        faithfulness_curve(model, full_circuit(model), no_metric)


def test_evaluate_many_matches_one_by_one():
    model = build_model()
    ds = build_dataset(model)
    circuits = [
        full_circuit(model),
        full_circuit(model, -5.0),
        random_circuit(full_circuit(model, 0.5)),
    ]
    together = evaluate_many(model, circuits, ds, batch_size=7)
    for circuit, result in zip(circuits, together, strict=True):
        alone = evaluate(model, circuit, ds)
        assert math.isclose(result.kl, alone.kl, rel_tol=1e-5, abs_tol=1e-7)
        assert math.isclose(result.recovered, alone.recovered, rel_tol=1e-5, abs_tol=1e-6)


def test_top_fraction_ranks_leaves_under_their_ancestors():
    dims = ModelDims(n_layers=1, n_heads=2, d_head=2, d_mlp=2)
    circuit = Circuit(
        dims=dims,
        log_alpha={
            "head": torch.tensor([[5.0, -5.0]]),
            "attn_neuron": torch.tensor([[[1.0, 2.0], [9.0, 8.0]]]),
        },
    )
    top = top_fraction(circuit, 0.5)  # two of four attention neurons
    assert top.kept("attn_neuron").nonzero().tolist() == [[0, 0, 0], [0, 0, 1]]
    assert top.kept("head").tolist() == [[True, False]]


@pytest.mark.parametrize("seed", range(6))
def test_random_circuit_has_the_same_size_at_every_granularity(seed):
    """Random log_alpha circuits of every shape of hierarchy: the baseline keeps exactly as
    many nodes per granularity, none of them dropped afterwards for want of a child."""
    g = torch.Generator().manual_seed(seed)
    dims = ModelDims(n_layers=3, n_heads=4, d_head=5, d_mlp=6)
    choices = [dims.available(), ("block", "head", "mlp_neuron"), ("attn_neuron", "mlp")]
    trained = choices[seed % len(choices)]
    log_alpha = {k: 4 * torch.randn(dims.shape(k), generator=g) + 1 for k in trained}
    circuit = Circuit(dims=dims, log_alpha=log_alpha)
    baseline = random_circuit(circuit, seed=seed)
    for k in dims.available():
        assert baseline.n_kept(k) == circuit.n_kept(k), k
    assert baseline.fit_info["random_baseline_seed"] == seed


def test_evaluate_refuses_tokens_outside_the_vocabulary():
    model = build_model()
    ds = build_dataset(model)
    bad = PairedDataset(ds.clean_tokens + model.cfg.d_vocab, ds.corrupted_tokens, ds.answer_tokens)
    circuit = Circuit(dims=ModelDims.from_cfg(model.cfg), log_alpha={})
    with pytest.raises(ValueError, match="vocabulary"):
        evaluate(model, circuit, bad)


def test_scored_circuit_matches_the_size_and_takes_the_best_nodes_under_chosen_parents():
    model = build_model()
    circuit = CircuitPruner(model, steps=30).fit(build_dataset(model), progress=False)
    dims = circuit.dims
    scores = {
        g: torch.rand(dims.shape(g), generator=torch.Generator().manual_seed(1))
        for g in circuit.granularities
    }
    chosen = scored_circuit(circuit, scores, "test")
    for g in circuit.granularities:
        assert chosen.n_kept(g) == circuit.n_kept(g), g
    assert chosen.fit_info["chosen_by"] == "test"
    heads = chosen.kept("head")
    k = circuit.n_kept("head")
    # the heads are the top-k by score (their blocks were kept)
    allowed = chosen.kept("block")[:, None].expand_as(heads)
    top = scores["head"].masked_fill(~allowed, -1).flatten().topk(k).indices
    assert set(heads.flatten().nonzero()[:, 0].tolist()) == set(top.tolist())
    # no neuron outside a kept head, and every kept head keeps one
    assert not (chosen.kept("attn_neuron") & ~heads[..., None]).any()
    assert (chosen.kept("attn_neuron").any(-1) == heads).all()


def test_scored_circuit_rejects_missing_or_misshapen_scores():
    model = build_model()
    circuit = CircuitPruner(model, steps=2).fit(build_dataset(model), progress=False)
    with pytest.raises(ValueError, match="missing"):
        scored_circuit(circuit, {"head": torch.rand(circuit.dims.shape("head"))})
    bad = {g: torch.rand(3) for g in circuit.granularities}
    with pytest.raises(ValueError, match="shape"):
        scored_circuit(circuit, bad)
