import pytest
import torch
from conftest import LAMBDA, VARIANTS, assert_untouched, model_state

import transformer_lens_mgp.core.hooks as interventions
import transformer_lens_mgp.training.run as run_module
from transformer_lens_mgp import (
    Circuit,
    CircuitPruner,
    PairedDataset,
    Schedule,
    TrainingDivergedError,
    evaluate,
)
from transformer_lens_mgp.testing.tiny import build_dataset, build_model, count_hooks

LIVE_HEADS = {(0, 0), (1, 2)}
LIVE_NEURONS = {(0, 3), (0, 7), (1, 5)}


def known_answer_model():
    """Every head and MLP neuron outside LIVE_* writes nothing (zero output weights), so it
    cannot matter; the live ones are scaled up so that they carry the prediction."""
    model = build_model(d_mlp=32)
    with torch.no_grad():
        for layer in range(2):
            for head in range(4):
                model.blocks[layer].attn.W_O[head] *= 4 if (layer, head) in LIVE_HEADS else 0
            for neuron in range(32):
                model.blocks[layer].mlp.W_out[neuron] *= 6 if (layer, neuron) in LIVE_NEURONS else 0
    return model


def kept_set(circuit, granularity):
    return {tuple(i) for i in circuit.kept(granularity).nonzero().tolist()}


def test_known_answer_model_is_recovered_exactly():
    model = known_answer_model()
    data = build_dataset(model, n=64)
    circuit = CircuitPruner(model, LAMBDA, steps=150).fit(data, progress=False)
    assert kept_set(circuit, "head") == LIVE_HEADS, "dead heads kept or live heads pruned"
    assert kept_set(circuit, "mlp_neuron") == LIVE_NEURONS
    dead_head_neurons = circuit.kept("attn_neuron")[[0, 1], [1, 0]]
    assert not dead_head_neurons.any()
    assert circuit.history["kl"][-1] < 0.05


@pytest.mark.parametrize("variant", VARIANTS)
def test_fit_returns_a_smaller_circuit_on_every_architecture(variant):
    model = build_model(**VARIANTS[variant])
    before = model_state(model)
    circuit = CircuitPruner(model, steps=40, faithfulness=None).fit(
        build_dataset(model), progress=False
    )
    assert isinstance(circuit, Circuit)
    assert circuit.granularities == circuit.dims.available()
    for g in circuit.granularities:
        assert circuit.kept(g).dtype == torch.bool
        assert tuple(circuit.kept(g).shape) == circuit.dims.shape(g)
    assert circuit.n_kept("attn_neuron") < circuit.n_total("attn_neuron")
    assert len(circuit.history["kl"]) == 40
    assert_untouched(model, before)


def test_model_is_untouched_after_fit_even_with_mixed_requires_grad():
    model = build_model()
    next(model.blocks[0].attn.parameters()).requires_grad_(False)
    before = model_state(model)
    logits = model(build_dataset(model).clean_tokens)
    CircuitPruner(model, steps=5).fit(build_dataset(model), progress=False)
    assert_untouched(model, before)
    assert torch.equal(model(build_dataset(model).clean_tokens), logits)


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_model_is_untouched_after_fit_raises_mid_training(monkeypatch, error):
    model = build_model()
    before = model_state(model)
    calls = []
    real_kl = run_module.kl_divergence

    def failing_kl(*args):
        calls.append(torch.is_grad_enabled())  # training steps only, not the no-grad passes
        if sum(calls) == 3:
            raise error
        return real_kl(*args)

    monkeypatch.setattr(run_module, "kl_divergence", failing_kl)
    pruner = CircuitPruner(model, steps=10)
    with pytest.raises(type(error)):
        pruner.fit(build_dataset(model), progress=False)
    assert_untouched(model, before)
    assert len(pruner.circuit_.history["kl"]) == 2, "the steps done before the fault are kept"


def test_nan_loss_raises_a_clear_error_and_leaves_model_clean():
    model = build_model()
    before = model_state(model)

    def poison(activation, hook):
        return activation * float("nan")

    model.blocks[1].mlp.hook_post.add_hook(poison)
    try:
        with pytest.raises(TrainingDivergedError, match="non-finite|NaN"):
            CircuitPruner(model, steps=3).fit(build_dataset(model), progress=False)
        assert count_hooks(model) == 1, "user hook kept"
    finally:
        model.reset_hooks()
    assert_untouched(model, before)


def test_same_seed_same_circuit_other_seed_other_masks():
    model = build_model()
    ds = build_dataset(model)
    a = CircuitPruner(model, seed=1, steps=15).fit(ds, progress=False)
    b = CircuitPruner(model, seed=1, steps=15).fit(ds, progress=False)
    c = CircuitPruner(model, seed=2, steps=15).fit(ds, progress=False)
    for g in a.granularities:
        assert torch.equal(a.log_alpha[g], b.log_alpha[g])
    assert not torch.equal(a.log_alpha["mlp_neuron"], c.log_alpha["mlp_neuron"])


def test_fitting_twice_gives_independent_results():
    model = build_model()
    pruner = CircuitPruner(model, seed=3, steps=10)
    first = pruner.fit(build_dataset(model), progress=False)
    second = pruner.fit(build_dataset(model), progress=False)
    assert torch.equal(first.log_alpha["head"], second.log_alpha["head"])
    assert first is not second


@pytest.mark.parametrize("ablation", ["mean", "zero"])
def test_other_ablations_train(ablation):
    model = build_model()
    circuit = CircuitPruner(model, ablation=ablation, steps=10).fit(
        build_dataset(model), progress=False
    )
    assert circuit.config["ablation"] == ablation
    assert all(torch.isfinite(torch.tensor(circuit.history["loss"])))


def test_subset_of_granularities_prunes_only_those():
    model = build_model()
    circuit = CircuitPruner(
        model, granularities=["mlp_neuron"], sparsity={"mlp_neuron": 2.0}, steps=30
    ).fit(build_dataset(model), progress=False)
    assert circuit.granularities == ("mlp_neuron",)
    assert circuit.kept("attn_neuron").all()
    assert circuit.n_kept("mlp_neuron") < circuit.n_total("mlp_neuron")


def test_higher_sparsity_gives_smaller_circuits():
    model = build_model()
    ds = build_dataset(model)
    small = CircuitPruner(model, sparsity={"mlp_neuron": 5.0}, steps=60).fit(ds, progress=False)
    large = CircuitPruner(model, sparsity={"mlp_neuron": 0.01}, steps=60).fit(ds, progress=False)
    assert small.n_kept("mlp_neuron") < large.n_kept("mlp_neuron")


def test_exception_inside_a_mask_hook_leaves_model_clean(monkeypatch):
    model = build_model()
    before = model_state(model)
    real_hook = interventions.interpolate_hook
    calls = []

    def failing_hook(*args, **kwargs):
        calls.append(torch.is_grad_enabled())  # training steps only
        if sum(calls) == 7:
            raise RuntimeError("hook failed")
        return real_hook(*args, **kwargs)

    monkeypatch.setattr(interventions, "interpolate_hook", failing_hook)
    pruner = CircuitPruner(model, steps=10)
    with pytest.raises(RuntimeError, match="hook failed"):
        pruner.fit(build_dataset(model), progress=False)
    assert_untouched(model, before)
    assert pruner.circuit_ is not None


def test_loss_turning_infinite_mid_fit_is_caught_with_its_step():
    model = build_model()
    before = model_state(model)
    calls = []

    def blow_up_later(activation, hook):
        calls.append(torch.is_grad_enabled())  # training steps only, not the no-grad passes
        return activation * float("inf") if sum(calls) > 3 else None

    model.blocks[0].attn.hook_z.add_hook(blow_up_later)
    pruner = CircuitPruner(model, steps=10)
    try:
        with pytest.raises(TrainingDivergedError, match=r"the loss became nan at step \d"):
            pruner.fit(build_dataset(model), progress=False)
    finally:
        model.reset_hooks()
    assert_untouched(model, before)
    assert 0 < len(pruner.circuit_.history["kl"]) < 10, "the finite steps are kept"


def test_lambda_is_priced_in_units_of_the_empty_circuit_kl():
    model = build_model()
    ds = build_dataset(model, n=40)
    circuit = CircuitPruner(model, steps=1, bf16=False, faithfulness=None).fit(
        ds, progress=False
    )  # float32, as evaluate; every pair (no validation split)
    empty = Circuit(
        dims=circuit.dims,
        log_alpha={g: torch.full_like(p, -10.0) for g, p in circuit.log_alpha.items()},
    )
    expected = evaluate(model, empty, ds).kl
    assert circuit.fit_info["kl_empty"] == pytest.approx(expected, rel=1e-4)
    assert 0 < circuit.fit_info["prepare_seconds"] <= circuit.fit_info["seconds"]


def test_a_corruption_that_changes_nothing_warns():
    model = build_model()
    ds = build_dataset(model)
    same = PairedDataset(ds.clean_tokens, ds.clean_tokens, ds.answer_tokens)
    with pytest.warns(UserWarning, match="hardly changes the behaviour"):
        circuit = CircuitPruner(model, steps=2).fit(same, progress=False)
    assert circuit.fit_info["kl_empty"] == run_module.MIN_KL_EMPTY


@pytest.mark.parametrize("target", [0.1, 0.3])
def test_target_kept_fraction_is_reached(target):
    """The extracted circuit lands on its target within 10 % (relative), give or take one node
    of this small model, and the kept share the controller measures is that circuit's size.
    The controller alone, at a constant learning rate in float32: the default's decay brings
    its price to rest earlier, and its final phase trades size for the logit difference."""
    model = build_model(d_mlp=128)
    alone = dict(schedule=Schedule(warmup=0.5, decay=0.0, finish=0.0), metric_weight=0.0)
    circuit = CircuitPruner(
        model, target={"mlp_neuron": target, "attn_neuron": target}, steps=200, bf16=False, **alone
    ).fit(build_dataset(model, n=64), progress=False)
    for g in ("mlp_neuron", "attn_neuron"):
        assert circuit.history[f"target/{g}"][-1] == pytest.approx(target)
        assert circuit.history[f"kept/{g}"][0] > 0.6  # started far above the target
        kept = circuit.fraction_kept(g)
        assert abs(kept - target) <= 0.1 * target + 1 / circuit.n_total(g), (g, kept)
        assert circuit.history[f"size/{g}"][-1] == kept
        assert circuit.history[f"kept/{g}"][-1] == pytest.approx(kept, abs=0.02)
    assert "target/head" not in circuit.history


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_fit_works_inside_a_no_grad_context(context):
    """Notebooks often wrap everything in no_grad or inference_mode; the fit turns on what
    it needs inside and finds the same circuit."""
    model = build_model()
    data = build_dataset(model)
    reference = CircuitPruner(model, steps=5).fit(data, progress=False)
    before = model_state(model)
    with context():
        circuit = CircuitPruner(model, steps=5).fit(data, progress=False)
    assert_untouched(model, before)
    for g in reference.granularities:
        assert torch.equal(circuit.log_alpha[g], reference.log_alpha[g]), g
