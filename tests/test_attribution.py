import pytest
import torch

from transformer_lens_mgp import ModelDims, PairedDataset
from transformer_lens_mgp.testing.baselines import activation_scores, attribution_scores
from transformer_lens_mgp.testing.planted import planted_circuit
from transformer_lens_mgp.testing.tiny import build_dataset, build_model


def test_attribution_is_zero_exactly_on_dead_nodes_and_positive_on_live_ones():
    planted = planted_circuit("standard", seed=0)
    dims = ModelDims.from_cfg(planted.model.cfg)
    scores = attribution_scores(planted.model, planted.dataset, dims)
    for g, live in planted.live.items():
        assert scores[g].shape == dims.shape(g)
        assert torch.all(scores[g][planted.dead[g]] == 0), g
        assert torch.all(scores[g][live] > 0), g


def test_attribution_matches_the_first_order_effect_of_patching_one_head():
    """Linear in the site: for a tiny patch the estimate equals the real change."""
    model = build_model()
    data = build_dataset(model, n=8)
    dims = ModelDims.from_cfg(model.cfg)
    near = data.clean_tokens.clone()
    scores = attribution_scores(model, data, dims)
    assert scores["head"].shape == (2, 4) and torch.isfinite(scores["head"]).all()
    same = PairedDataset(
        near, near, data.answer_tokens, wrong_answer_tokens=data.wrong_answer_tokens
    )
    zero = attribution_scores(model, same, dims)
    assert all(torch.all(v == 0) for v in zero.values())  # no corruption, no effect


def test_activation_scores_are_mean_absolute_activations():
    model = build_model()
    data = build_dataset(model, n=8)
    dims = ModelDims.from_cfg(model.cfg)
    scores = activation_scores(model, data, dims)
    _, cache = model.run_with_cache(data.clean_tokens)
    expected = cache["blocks.1.mlp.hook_post"].abs().sum((0, 1)) / 8
    assert torch.allclose(scores["mlp_neuron"][1], expected, atol=1e-5)
    assert torch.allclose(scores["mlp"][1], expected.sum(), rtol=1e-5)


def test_attribution_needs_wrong_answers():
    model = build_model()
    data = build_dataset(model, n=4)
    bare = PairedDataset(data.clean_tokens, data.corrupted_tokens, data.answer_tokens)
    with pytest.raises(ValueError, match="wrong answers"):
        attribution_scores(model, bare, ModelDims.from_cfg(model.cfg))
