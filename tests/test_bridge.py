"""The same CircuitPruner on a TransformerBridge and on a HookedTransformer of one model."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_untouched, model_state, needs_hooked_transformer

from transformer_lens_mgp import CircuitPruner, PairedDataset, evaluate
from transformer_lens_mgp.models import bridge_from_hf, hooked_from_hf
from transformer_lens_mgp.testing.tiny import tiny_llama

pytestmark = needs_hooked_transformer


@pytest.fixture(scope="module")
def twins(tokenizer_model):
    """A tiny random Llama (GQA, gated MLP, RMS norm, rotary) seen through both APIs."""
    tokenizer = tokenizer_model.tokenizer
    hf = tiny_llama(tokenizer)
    return bridge_from_hf(hf, tokenizer), hooked_from_hf(hf, tokenizer)


@pytest.fixture(scope="module")
def pairs(twins):
    _, hooked = twins
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 1000, (16, 6), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(0, 1000, (16,), generator=g)
    with torch.no_grad():
        top2 = hooked(clean)[:, -1].topk(2).indices
    return PairedDataset(clean, corrupted, top2[:, 0], wrong_answer_tokens=top2[:, 1])


def test_both_views_compute_the_same_logits(twins, pairs):
    bridge, hooked = twins
    with torch.no_grad():
        assert torch.allclose(bridge(pairs.clean_tokens), hooked(pairs.clean_tokens), atol=1e-4)


def test_circuits_found_on_bridge_and_hooked_model_agree(twins, pairs):
    bridge, hooked = twins
    before = model_state(bridge)
    settings = dict(seed=0, steps=30, bf16=False)  # the same arithmetic on both views
    on_bridge = CircuitPruner(bridge, **settings).fit(pairs, progress=False)
    assert_untouched(bridge, before)
    on_hooked = CircuitPruner(hooked, **settings).fit(pairs, progress=False)
    for g in on_bridge.granularities:
        assert torch.allclose(on_bridge.log_alpha[g], on_hooked.log_alpha[g], atol=1e-2), g
        assert torch.equal(on_bridge.kept(g), on_hooked.kept(g)), g
    kl_bridge = evaluate(bridge, on_bridge, pairs).kl
    assert kl_bridge == pytest.approx(evaluate(hooked, on_bridge, pairs).kl, abs=1e-4)


def test_circuit_hooks_patch_the_bridge(twins, pairs):
    """An empty circuit run through fwd_hooks changes the bridge's output as it changes the
    HookedTransformer's."""
    bridge, hooked = twins
    circuit = CircuitPruner(hooked, seed=0, steps=2).fit(pairs, progress=False)
    empty = type(circuit)(
        dims=circuit.dims,
        log_alpha={g: torch.full_like(v, -10.0) for g, v in circuit.log_alpha.items()},
    )
    with torch.no_grad():
        outs = [
            m.run_with_hooks(pairs.clean_tokens, fwd_hooks=empty.fwd_hooks(pairs, model=m))
            for m in (bridge, hooked)
        ]
        plain = hooked(pairs.clean_tokens)
    assert torch.allclose(outs[0], outs[1], atol=1e-4)
    assert not torch.allclose(outs[1], plain, atol=1e-3)


@pytest.mark.slow
def test_default_model_as_a_bridge_matches_the_hooked_one(smollm2):
    from transformer_lens_mgp import load_model, tasks

    bridge = load_model(bridge=True, progress=False)
    data = tasks.ioi(smollm2, n=8, seed=0)
    with torch.no_grad():
        a, b = bridge(data.clean_tokens), smollm2(data.clean_tokens)
    rows = torch.arange(len(data))
    last_a = a[rows, data.answer_positions].log_softmax(-1)
    last_b = b[rows, data.answer_positions].log_softmax(-1)
    assert (last_a - last_b).abs().max() < 1e-3
    circuit = CircuitPruner(bridge, seed=0, steps=2, batch_size=4).fit(data, progress=False)
    assert evaluate(smollm2, circuit, data).kl == pytest.approx(
        evaluate(bridge, circuit, data).kl, abs=1e-3
    )


def test_head_and_neuron_profiles_agree_on_both_views(twins, pairs):
    from transformer_lens_mgp.analysis.heads import head_profiles
    from transformer_lens_mgp.analysis.neurons import neuron_profiles

    bridge, hooked = twins
    data = pairs.with_roles(("END",), pairs.answer_positions[:, None])
    heads = [(0, 1), (1, 2)]
    on_bridge, on_hooked = (head_profiles(m, data, heads) for m in twins)
    for b, h in zip(on_bridge.heads, on_hooked.heads, strict=True):
        assert b.direct_effect == pytest.approx(h.direct_effect, rel=1e-3, abs=1e-4)
        for group in on_hooked.groups:
            assert b.attention[group] == pytest.approx(h.attention[group], abs=1e-4)
    neurons = [(0, 3), (1, 50)]
    on_bridge, on_hooked = (neuron_profiles(m, data, neurons) for m in twins)
    for b, h in zip(on_bridge.neurons, on_hooked.neurons, strict=True):
        assert b.direct_effect == pytest.approx(h.direct_effect, rel=1e-3, abs=1e-4)
        assert [t.token for t in b.top_activations] == [t.token for t in h.top_activations]
