import pytest
import torch
from conftest import VARIANTS

from transformer_lens_mgp import GRANULARITIES, ModelDims
from transformer_lens_mgp.core.nodes import resolve_granularities, site_masks, with_ancestors
from transformer_lens_mgp.testing.tiny import build_model


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_follow_the_config_and_match_hook_activations(variant):
    model = build_model(**VARIANTS[variant])
    dims = ModelDims.from_cfg(model.cfg)
    _, cache = model.run_with_cache(torch.zeros(1, 3, dtype=torch.long))
    for layer in range(dims.n_layers):
        z = cache[f"blocks.{layer}.attn.hook_z"]
        assert tuple(z.shape[2:]) == dims.shape("attn_neuron")[1:]
        if dims.has_mlp:
            post = cache[f"blocks.{layer}.mlp.hook_post"]
            assert tuple(post.shape[2:]) == dims.shape("mlp_neuron")[1:]
    assert dims.shape("head") == (model.cfg.n_layers, model.cfg.n_heads)


def test_attention_only_models_have_no_mlp_granularities():
    dims = ModelDims.from_cfg(build_model(**VARIANTS["attn_only"]).cfg)
    assert dims.available() == ("block", "head", "attn_neuron")
    with pytest.raises(ValueError, match="attention-only"):
        resolve_granularities(["mlp_neuron"], dims)


def test_unknown_granularity_names_the_choices():
    dims = ModelDims(2, 4, 8, 16)
    with pytest.raises(ValueError, match="unknown granularity 'neuron'.*block"):
        resolve_granularities(["head", "neuron"], dims)
    with pytest.raises(ValueError, match="at least one"):
        resolve_granularities([], dims)


def test_resolution_puts_parents_first():
    dims = ModelDims(2, 4, 8, 16)
    assert resolve_granularities(["mlp_neuron", "block"], dims) == ("block", "mlp_neuron")
    assert resolve_granularities("head", dims) == ("head",)
    assert resolve_granularities(GRANULARITIES[::-1], dims) == GRANULARITIES


def test_site_masks_multiply_down_the_tree():
    dims = ModelDims(n_layers=2, n_heads=3, d_head=4, d_mlp=5)
    values = {g: torch.full(dims.shape(g), 1.0) for g in GRANULARITIES}
    values["head"][0, 1] = 0.5
    values["attn_neuron"][0, 1, 2] = 0.5
    values["block"][1] = 0.0
    values["mlp"][0] = 0.25
    values["mlp_neuron"][0, 3] = 0.5
    attn, mlp = site_masks(values, dims)
    assert attn[0, 1, 2] == 0.25 and attn[0, 1, 0] == 0.5 and attn[0, 0, 0] == 1
    assert (attn[1] == 0).all() and (mlp[1] == 0).all()
    assert mlp[0, 3] == 0.125 and mlp[0, 0] == 0.25


def test_missing_granularities_count_as_kept():
    dims = ModelDims(n_layers=2, n_heads=3, d_head=4, d_mlp=5)
    attn, mlp = site_masks({"head": torch.zeros(2, 3)}, dims)
    assert (attn == 0).all() and (mlp == 1).all()


def test_with_ancestors_multiplies_each_granularity_by_its_trained_ancestors():
    dims = ModelDims(n_layers=2, n_heads=3, d_head=4, d_mlp=5)
    values = {
        g: torch.rand(dims.shape(g), generator=torch.Generator().manual_seed(0))
        for g in GRANULARITIES
    }
    out = with_ancestors(values)
    attn, mlp = site_masks(values, dims)
    assert torch.allclose(out["attn_neuron"], attn) and torch.allclose(out["mlp_neuron"], mlp)
    assert torch.allclose(out["head"], values["head"] * values["block"][:, None])
    assert torch.equal(out["block"], values["block"])
    # an untrained level in between is skipped: neurons answer to the block directly
    skipped = with_ancestors({"block": values["block"], "mlp_neuron": values["mlp_neuron"]})
    assert torch.allclose(skipped["mlp_neuron"], values["mlp_neuron"] * values["block"][:, None])
