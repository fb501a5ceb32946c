"""Gradient checkpointing and bf16 autocast: same circuits, less kept memory, model left alone."""

import pytest
import torch
from conftest import LAMBDA, VARIANTS, assert_untouched, model_state
from test_pruner import LIVE_HEADS, LIVE_NEURONS, kept_set, known_answer_model

import transformer_lens_mgp.core.hooks as interventions
from transformer_lens_mgp import CircuitPruner
from transformer_lens_mgp.core.nodes import ModelDims, SiteMasks, site_masks
from transformer_lens_mgp.runtime.forward import masked_answer_logits
from transformer_lens_mgp.runtime.recompute import checkpointable_blocks, recomputed_blocks
from transformer_lens_mgp.testing.tiny import build_dataset, build_model


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradient_checkpointing_gives_the_same_circuit(variant):
    model = build_model(**VARIANTS[variant])
    data = build_dataset(model)
    plain = CircuitPruner(model, steps=15).fit(data, progress=False)
    before = model_state(model)
    checkpointed = CircuitPruner(model, gradient_checkpointing=True, steps=15).fit(
        data, progress=False
    )
    assert_untouched(model, before)
    for g in plain.granularities:
        torch.testing.assert_close(checkpointed.log_alpha[g], plain.log_alpha[g])
    assert checkpointed.history["kl"] == pytest.approx(plain.history["kl"], rel=1e-5)
    assert checkpointed.config["gradient_checkpointing"] is True


def saved_bytes(model, data, recompute: bool) -> int:
    """Bytes autograd keeps for the backward pass of one masked forward."""
    dims = ModelDims.from_cfg(model.cfg)
    log_alpha = {
        g: torch.ones(dims.shape(g), requires_grad=True) for g in ("head", "attn_neuron", "mlp")
    }
    attn, mlp = site_masks(log_alpha, dims)
    ablated = interventions.site_activations(model, data.corrupted_tokens, dims)
    kept = []

    def pack(tensor):
        kept.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with recomputed_blocks(model) if recompute else torch.enable_grad():
            logits = masked_answer_logits(model, data, dims, SiteMasks(attn, mlp), ablated)
    assert logits.requires_grad
    return sum(kept)


def test_gradient_checkpointing_keeps_a_fraction_of_the_activations():
    model = build_model(n_layers=4, n_ctx=64)
    for p in model.parameters():
        p.requires_grad_(False)
    data = build_dataset(model, n=8, seq_len=48)
    plain, recomputed = saved_bytes(model, data, False), saved_bytes(model, data, True)
    assert recomputed < plain / 5, (recomputed, plain)


def test_blocks_are_restored_when_the_context_raises_and_own_forwards_survive():
    model = build_model()
    tokens = build_dataset(model).clean_tokens
    expected = model(tokens)
    custom = model.blocks[1].forward  # a forward the user had set on the instance
    vars(model.blocks[1])["forward"] = custom
    with pytest.raises(RuntimeError, match="inside"):
        with recomputed_blocks(model):
            assert all("forward" in vars(block) for block in model.blocks)
            raise RuntimeError("inside")
    assert "forward" not in vars(model.blocks[0])
    assert vars(model.blocks[1])["forward"] is custom
    del model.blocks[1].forward
    assert torch.equal(model(tokens), expected)


def test_a_model_without_blocks_gets_a_clear_error():
    with pytest.raises(ValueError, match="model.blocks.*gradient_checkpointing=False"):
        checkpointable_blocks(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("flag", ["bf16", "gradient_checkpointing"])
def test_flags_must_be_booleans(flag):
    with pytest.raises(TypeError, match=f"{flag} is True"):
        CircuitPruner(build_model(), **{flag: "yes"})


def test_bf16_runs_the_model_in_bfloat16_and_finds_the_known_circuit(monkeypatch):
    model = known_answer_model()
    before = model_state(model)
    seen = set()
    real = interventions.interpolate_hook

    def spy(activation, **kwargs):
        seen.add(activation.dtype)
        return real(activation, **kwargs)

    monkeypatch.setattr(interventions, "interpolate_hook", spy)
    circuit = CircuitPruner(model, LAMBDA, bf16=True, steps=150).fit(
        build_dataset(model, n=64), progress=False
    )
    assert seen == {torch.bfloat16}
    assert not torch.is_autocast_enabled("cpu")
    assert_untouched(model, before)
    assert all(t.dtype == torch.float32 for t in circuit.log_alpha.values())
    assert circuit.config["bf16"] is True
    assert kept_set(circuit, "head") == LIVE_HEADS
    assert kept_set(circuit, "mlp_neuron") == LIVE_NEURONS
