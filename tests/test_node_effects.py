"""Node effects: each measured node's numbers are exactly the circuit evaluated without it;
dead nodes cost nothing, live ones cost; neurons are shortlisted by a correct gradient."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_untouched, model_state

from transformer_lens_mgp import Circuit, ModelDims, UsageError, evaluate
from transformer_lens_mgp.analysis.node_effects import (
    NodeEffects,
    neuron_removal_estimates,
    node_effects,
)
from transformer_lens_mgp.core.hooks import AblationSource, mask_hooks
from transformer_lens_mgp.core.metrics import task_metric
from transformer_lens_mgp.runtime.forward import answer_logits
from transformer_lens_mgp.testing.planted import planted_circuit
from transformer_lens_mgp.testing.tiny import build_dataset, build_model


@pytest.fixture(scope="module")
def planted():
    return planted_circuit("standard", seed=0, n=48)


def live_plus_dead(planted) -> Circuit:
    """The planted live circuit with every dead head and MLP neuron added back."""
    kept = {g: planted.live[g] | planted.dead[g] for g in ("attn_neuron", "mlp_neuron")}
    return Circuit.from_kept(ModelDims.from_cfg(planted.model.cfg), kept)


def test_live_nodes_cost_and_dead_ones_do_not(planted):
    circuit = live_plus_dead(planted)
    before = model_state(planted.model)
    effects = node_effects(planted.model, circuit, planted.dataset, top_neurons=4)
    assert_untouched(planted.model, before)
    heads = {e.index: e for e in effects.effects if e.granularity == "head"}
    assert set(heads) == {tuple(i) for i in circuit.kept("head").nonzero().tolist()}
    live = planted.live["head"]
    for index, effect in heads.items():
        if live[index]:
            assert effect.delta_kl > 0.01, effect
        elif planted.dead["head"][index]:
            assert abs(effect.delta_kl) < 1e-5 and abs(effect.delta_metric) < 1e-4, effect
    # sorted, the most important first: a live node leads
    assert [e.delta_kl for e in effects.effects] == sorted(
        (e.delta_kl for e in effects.effects), reverse=True
    )
    neurons = effects.top(10, "mlp_neuron")
    assert len(neurons) == 4
    assert not any(planted.dead["mlp_neuron"][e.index] for e in neurons)


def test_each_effect_is_the_circuit_evaluated_without_that_node(planted):
    circuit = live_plus_dead(planted)
    effects = node_effects(planted.model, circuit, planted.dataset, top_neurons=2)
    own = evaluate(planted.model, circuit, planted.dataset)
    assert effects.kl == pytest.approx(own.kl)
    for effect in [*effects.effects[:3], *effects.top(2, "mlp_neuron")]:
        kept = {g: circuit.kept(g).clone() for g in ("head", "attn_neuron", "mlp_neuron")}
        if effect.granularity == "head":
            kept["head"][effect.index] = False
        elif effect.granularity == "mlp":
            kept["mlp_neuron"][effect.index[0]] = False
        else:
            kept["mlp_neuron"][effect.index] = False
        without = evaluate(planted.model, Circuit.from_kept(circuit.dims, kept), planted.dataset)
        assert effect.delta_kl == pytest.approx(without.kl - own.kl, abs=1e-6)
        assert effect.delta_metric == pytest.approx(
            without.metric_circuit - own.metric_circuit, abs=1e-5
        )
    again = NodeEffects.from_dict(effects.to_dict())
    assert again == effects


def test_the_neuron_estimate_is_the_metric_gradient():
    """A finite difference of the circuit's metric in one neuron's mask matches the estimate
    (in float64: a float32 difference over eps = 1e-3 is only good to about 1e-4)."""
    model = build_model(n_layers=1, d_mlp=16).to(torch.float64)
    data = build_dataset(model, n=8)
    dims = ModelDims.from_cfg(model.cfg)
    circuit = Circuit.from_kept(dims, {"mlp_neuron": torch.ones(1, 16, dtype=torch.bool)})
    estimate = neuron_removal_estimates(model, circuit, data)
    source = AblationSource.for_dataset(model, "corrupted", data, dims)
    ablated = source.values(model, data)

    def metric(mlp_mask):
        masks = circuit.site_masks()._replace(mlp=mlp_mask)
        with torch.no_grad(), model.hooks(fwd_hooks=mask_hooks(dims, masks, ablated)):
            return task_metric(answer_logits(model, data.clean_tokens, data.answer_positions), data)

    eps = 1e-3
    for n in (0, 5, 11):
        mask = torch.ones(1, 16, dtype=torch.float64)
        mask[0, n] -= eps
        finite = (metric(mask) - metric(torch.ones_like(mask))).mean() / eps
        assert float(estimate[0, n]) == pytest.approx(float(finite), rel=1e-2, abs=1e-4)


def test_bad_top_neurons_is_refused(planted):
    circuit = live_plus_dead(planted)
    with pytest.raises(UsageError, match="top_neurons"):
        node_effects(planted.model, circuit, planted.dataset, top_neurons=-1)


def test_without_wrong_answers_only_kl_is_measured():
    import math
    from dataclasses import replace

    model = build_model()
    data = replace(build_dataset(model, n=8), wrong_answer_tokens=None)
    dims = ModelDims.from_cfg(model.cfg)
    circuit = Circuit.from_kept(dims, {"head": torch.ones(2, 4, dtype=torch.bool)})
    effects = node_effects(model, circuit, data, top_neurons=3)
    assert len(effects.top(99, "mlp_neuron")) == 3
    assert all(math.isnan(e.delta_metric) and math.isfinite(e.delta_kl) for e in effects.effects)


def test_a_circuit_of_another_model_is_refused(planted):
    other = build_model()
    circuit = Circuit.from_kept(
        ModelDims.from_cfg(other.cfg), {"head": torch.ones(2, 4, dtype=torch.bool)}
    )
    with pytest.raises(UsageError, match="found on a model"):
        node_effects(planted.model, circuit, planted.dataset)
