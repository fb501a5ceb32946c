"""PruningConfig: every setting of a fit, checked when made, round-tripped through a dict."""

from __future__ import annotations

import dataclasses

import pytest

from transformer_lens_mgp import (
    DEFAULT_SPARSITY,
    EdgeConfig,
    HardConcrete,
    ModelDims,
    PruningConfig,
    Schedule,
)
from transformer_lens_mgp.training.config import DEFAULT_METRIC_WEIGHT, DEFAULT_TARGET

DIMS = ModelDims(n_layers=2, n_heads=3, d_head=4, d_mlp=5)


def test_to_dict_and_from_dict_round_trip():
    config = PruningConfig(
        granularities=["mlp_neuron", "head"],
        target={"head": 0.2},
        steps=30,
        hard_concrete=HardConcrete(beta=0.5),
        schedule=Schedule(warmup=0.2, decay=0.5, finish=0.1),
        bf16=True,
    )
    assert PruningConfig.from_dict(config.to_dict()) == config
    assert config.granularities == ("head", "mlp_neuron")  # canonical, parent first


def test_it_is_frozen_and_replace_checks_again():
    config = PruningConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.steps = 3
    assert config.replace(steps=3).steps == 3 and config.steps == 250
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        config.replace(steps=0)


def test_resolved_makes_the_model_s_settings_explicit():
    resolved = PruningConfig(sparsity={"head": 2.0}, target={"mlp_neuron": 0.1}).resolved(DIMS)
    assert resolved.granularities == DIMS.available()
    assert resolved.sparsity == {
        "block": DEFAULT_SPARSITY["block"],
        "head": 2.0,
        "attn_neuron": DEFAULT_SPARSITY["attn_neuron"],
        "mlp": DEFAULT_SPARSITY["mlp"],
    }
    assert PruningConfig(max_kl=0.3, steps=50).resolved(DIMS).eval_every == 5


@pytest.mark.parametrize(
    "settings, error, message",
    [
        (dict(steps=True), ValueError, "steps must be a positive integer"),
        (dict(batch_size=2.5), ValueError, "batch_size must be a positive integer"),
        (dict(seed=None), ValueError, "seed must be an integer"),
        (dict(seed=1.5), ValueError, "seed must be an integer"),
        (dict(seed=2**70), ValueError, "seed must be an integer"),
        (dict(lr=float("nan")), ValueError, "lr must be a finite number"),
        (dict(metric_weight=-1.0), ValueError, "metric_weight must be a finite number"),
        (dict(metric_weight="1"), ValueError, "metric_weight must be a finite number"),
        (dict(target="mlp_neuron=0.05"), TypeError, "mapping"),
        (dict(target={"mlp_neuron": "0.05"}), ValueError, "must be a number"),
        (dict(ablation="noise"), ValueError, "unknown ablation"),
        (dict(granularities=["neurons"]), ValueError, "unknown granularity"),
        (dict(bf16="yes"), TypeError, "True, False or None"),
        (dict(schedule={"decay": 1.5}), ValueError, r"schedule.decay is a share of the steps"),
        (dict(schedule={"decay": "half"}), ValueError, "schedule.decay is a share"),
        (dict(schedule={"finish": -0.1}), ValueError, r"schedule.finish is a share of the steps"),
        (dict(schedule={"share": 0.1}), TypeError, "is not a Schedule"),
        (dict(schedule=0.3), TypeError, "must be a Schedule"),
        (dict(hard_concrete={"beta": "x"}), ValueError, "beta"),
        (dict(granularities=5), TypeError, "granularities is a list"),
        (dict(gradient_checkpointing="no"), TypeError, "True or False"),
        (dict(eval_every=5), ValueError, "set max_kl"),
        (dict(device="cuda"), TypeError, r"unknown setting\(s\) \['device'\]"),
    ],
)
def test_bad_settings_fail_when_the_config_is_made(settings, error, message):
    with pytest.raises(error, match=message):
        PruningConfig().replace(**settings)


def test_a_target_for_a_granularity_not_pruned_is_refused():
    config = PruningConfig(granularities=["head"], target={"mlp_neuron": 0.1})
    with pytest.raises(ValueError, match="does not prune"):
        config.resolved(DIMS)


def test_the_default_is_the_small_circuit_setting():
    """Targets for what the model has, the schedule's final phase with the metric held, and
    bf16 decided by the device; a fixed price or a budget turns the targets off."""
    resolved = PruningConfig().resolved(DIMS, "cpu")
    assert resolved.target == DEFAULT_TARGET and resolved.steps == 250
    assert resolved.metric_weight == DEFAULT_METRIC_WEIGHT and resolved.schedule == Schedule()
    assert isinstance(resolved.bf16, bool)
    attention_only = ModelDims(n_layers=2, n_heads=2, d_head=4, d_mlp=None)
    assert "mlp_neuron" not in PruningConfig().resolved(attention_only).target
    heads = PruningConfig(granularities=["head"]).resolved(DIMS)
    assert heads.target == {"head": DEFAULT_TARGET["head"]}
    assert PruningConfig(sparsity={"head": 1.0}).resolved(DIMS).target == {}
    assert PruningConfig(max_kl=0.3).resolved(DIMS).target == {}
    assert PruningConfig().resolved(DIMS, has_wrong_answers=False).metric_weight == 0
    assert PruningConfig(bf16=False).resolved(DIMS).bf16 is False
    assert PruningConfig.from_dict(resolved.to_dict()) == resolved


def test_the_metric_term_is_priced_over_the_final_phase():
    config = PruningConfig(steps=10, metric_weight=1.0)
    assert [config.prices_metric(s) for s in range(10)] == [False] * 7 + [True] * 3
    always = config.replace(schedule=Schedule(finish=0.0))
    assert all(always.prices_metric(s) for s in range(10))
    assert not any(config.replace(metric_weight=0.0).prices_metric(s) for s in range(10))


def test_node_and_edge_fits_share_one_set_of_checks():
    for bad in (dict(seed=2**70), dict(hard_concrete="x"), dict(schedule={"warmup": 2})):
        with pytest.raises((ValueError, TypeError)):
            PruningConfig(**bad)
        with pytest.raises((ValueError, TypeError)):
            EdgeConfig(**bad)
    assert EdgeConfig().schedule.finish == 0 and EdgeConfig(seed=3).seed == 3
