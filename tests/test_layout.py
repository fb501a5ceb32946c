"""Weights laid out for the forward pass: identical outputs, no copies, everything put back."""

import einops
import pytest
import torch
from conftest import VARIANTS, assert_untouched, model_state, needs_hooked_transformer

from transformer_lens_mgp.runtime.layout import forward_layout
from transformer_lens_mgp.testing.tiny import build_dataset, build_model

pytestmark = needs_hooked_transformer


@pytest.mark.parametrize("variant", VARIANTS)
def test_outputs_are_bitwise_identical_and_the_model_is_restored(variant):
    model = build_model(**VARIANTS[variant])
    tokens = build_dataset(model).clean_tokens
    expected = model(tokens)
    before = model_state(model)
    with forward_layout(model):
        assert torch.equal(model(tokens), expected)
    assert_untouched(model, before)
    assert torch.equal(model(tokens), expected)


@pytest.mark.parametrize("option", ["use_split_qkv_input", "use_attn_result", "use_attn_in"])
def test_transformer_lens_options_give_the_same_outputs(option):
    model = build_model()
    setattr(model.cfg, option, True)
    tokens = build_dataset(model).clean_tokens
    expected = model(tokens)
    with forward_layout(model):
        torch.testing.assert_close(model(tokens), expected, rtol=1e-5, atol=1e-5)


def test_the_forward_pass_reads_the_weights_without_copying_them():
    model = build_model(**VARIANTS["gated_gqa"])
    block = model.blocks[0]
    with forward_layout(model):
        for weight in (block.mlp.W_in, block.mlp.W_gate, block.mlp.W_out):
            assert weight.T.contiguous().data_ptr() == weight.data_ptr()
        for weight in (block.attn.W_Q, block.attn._W_K, block.attn._W_V):
            flat = einops.rearrange(weight, "head d_model d_head -> (head d_head) d_model")
            assert flat.data_ptr() == weight.data_ptr() and flat.is_contiguous()
        w_o = einops.rearrange(block.attn.W_O, "head d_head d_model -> d_model (head d_head)")
        assert w_o.is_contiguous()
    assert not block.mlp.W_in.T.is_contiguous(), "the original layout is back"


def test_weights_sharing_storage_are_left_alone():
    model = build_model()
    shared = model.blocks[0].mlp.W_in
    model.blocks[1].mlp.W_in = torch.nn.Parameter(shared.data)  # a second view of one storage
    before = model_state(model)
    with forward_layout(model):
        assert model.blocks[1].mlp.W_in.stride() == shared.stride() == (64, 1)
        assert torch.equal(model.blocks[1].mlp.W_in, shared)
    assert_untouched(model, before)


def test_layout_is_restored_when_the_context_raises():
    model = build_model()
    before = model_state(model)
    with pytest.raises(RuntimeError, match="inside"), forward_layout(model):
        raise RuntimeError("inside")
    assert_untouched(model, before)


def test_other_models_are_not_touched():
    module = torch.nn.Linear(3, 2)
    weight = module.weight.detach().clone()
    with forward_layout(module):
        assert module.weight.stride() == (3, 1)
    assert torch.equal(module.weight, weight)


def test_weights_in_shared_memory_are_left_to_the_process_that_shares_them():
    model = build_model()
    model.share_memory()
    tokens = build_dataset(model).clean_tokens
    expected = model(tokens)
    w_in = model.blocks[0].mlp.W_in
    with forward_layout(model):
        assert w_in.is_contiguous(), "another process may be reading these strides"
    with forward_layout(model, include_shared=True):
        assert not w_in.is_contiguous()
        assert torch.equal(model(tokens), expected)
    assert w_in.is_contiguous() and torch.equal(model(tokens), expected)


def test_a_failure_half_way_puts_every_weight_back(monkeypatch):
    """The re-layout is all-or-nothing: when one weight fails (and, by the next test, puts
    itself back), the ones re-laid before it get their layout back too."""
    import transformer_lens_mgp.runtime.layout as layout

    model = build_model()
    tokens = build_dataset(model).clean_tokens
    expected = model(tokens)
    before = model_state(model)
    real, calls = layout._relayout, []

    def fail_on_the_fifth(weight, strides):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("relayout failed")
        real(weight, strides)

    monkeypatch.setattr(layout, "_relayout", fail_on_the_fifth)
    with pytest.raises(RuntimeError, match="relayout failed"), forward_layout(model):
        pass
    monkeypatch.setattr(layout, "_relayout", real)
    assert_untouched(model, before)
    assert torch.equal(model(tokens), expected)


def test_a_weight_that_fails_to_relayout_keeps_its_values(monkeypatch):
    model = build_model()
    weight = model.blocks[0].attn.W_Q
    values, strides = weight.detach().clone(), weight.stride()
    real_copy = torch.Tensor.copy_
    calls = []

    def copy_fails_once(self, src, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("copy failed")
        return real_copy(self, src, *args, **kwargs)

    import transformer_lens_mgp.runtime.layout as layout

    monkeypatch.setattr(torch.Tensor, "copy_", copy_fails_once)
    with pytest.raises(RuntimeError, match="copy failed"):
        layout._relayout(weight, (8 * 32, 1, 8))
    monkeypatch.setattr(torch.Tensor, "copy_", real_copy)
    assert weight.stride() == strides and torch.equal(weight, values)
