"""PruningConfig: every setting of a fit, checked when made, round-tripped through a dict."""

from __future__ import annotations

import dataclasses

import pytest

from transformer_lens_mgp import DEFAULT_SPARSITY, HardConcrete, ModelDims, PruningConfig

DIMS = ModelDims(n_layers=2, n_heads=3, d_head=4, d_mlp=5)


def test_to_dict_and_from_dict_round_trip():
    config = PruningConfig(
        granularities=["mlp_neuron", "head"],
        target={"head": 0.2},
        steps=30,
        hard_concrete=HardConcrete(beta=0.5),
        bf16=True,
    )
    assert PruningConfig.from_dict(config.to_dict()) == config
    assert config.granularities == ("head", "mlp_neuron")  # canonical, parent first


def test_it_is_frozen_and_replace_checks_again():
    config = PruningConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.steps = 3
    assert config.replace(steps=3).steps == 3 and config.steps == 200
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
        (dict(bf16="yes"), TypeError, "True or False"),
        (dict(lr_decay=1.5), ValueError, r"lr_decay is a share of the steps, in \[0, 1\]"),
        (dict(lr_decay="half"), ValueError, "lr_decay is a share"),
        (dict(hard_finish=-0.1), ValueError, r"hard_finish is a share of the steps, in \[0, 1\]"),
        (dict(metric_share=1.5), ValueError, r"metric_share is a share of the steps, in \[0, 1\]"),
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


def test_the_small_circuit_setting_fits_the_model():
    from transformer_lens_mgp import ModelDims
    from transformer_lens_mgp.training.config import (
        PRESETS,
        SMALL_CIRCUIT_STEPS,
        SMALL_CIRCUIT_TARGETS,
        small_circuit,
    )

    full = small_circuit("cpu", ModelDims(n_layers=2, n_heads=2, d_head=4, d_mlp=8))
    assert dict(full.target) == SMALL_CIRCUIT_TARGETS and full.steps == SMALL_CIRCUIT_STEPS
    attention_only = small_circuit("cpu", ModelDims(n_layers=2, n_heads=2, d_head=4, d_mlp=None))
    assert "mlp_neuron" not in attention_only.target
    assert small_circuit("cpu", steps=10, bf16=False).steps == 10
    thorough = PRESETS["thorough"]
    assert thorough.config().target == full.target
    assert thorough.steps > PRESETS["small"].steps and thorough.n_pairs > PRESETS["small"].n_pairs
