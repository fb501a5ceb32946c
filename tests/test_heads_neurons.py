"""Head and neuron profiles agree with TransformerLens's own cache arithmetic: attention read
from ``hook_pattern``, direct effects from ``stack_head_results`` / ``stack_neuron_results``
with the final norm applied (``apply_ln=True``)."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_untouched, model_state

from transformer_lens_mgp import UsageError
from transformer_lens_mgp.analysis.heads import HeadProfiles, head_profiles
from transformer_lens_mgp.analysis.neurons import (
    AFTER_TOKENS,
    OUTPUT_TOKENS,
    NeuronProfiles,
    neuron_profiles,
    text_activations,
)
from transformer_lens_mgp.testing.tiny import (
    LLAMA_LIKE,
    build_cfg,
    build_dataset,
    build_model,
    model_from_cfg,
)

NORMS = {"LN": dict(normalization_type="LN"), "RMS (Llama-like)": LLAMA_LIKE}


def with_roles(data):
    """Two made-up roles: position 1 (the corrupted token) and the answer position."""
    positions = torch.stack([torch.ones(len(data), dtype=torch.long), data.answer_positions], -1)
    return data.with_roles(("A", "END"), positions)


def reference_direct_effects(model, data, stack):
    """Per component, mean over pairs of its final-normed output . (W_U[right] - W_U[wrong])."""
    _, cache = model.run_with_cache(data.clean_tokens)
    parts = stack(cache)  # [component, batch, d_model] at the last position
    direction = model.W_U[:, data.answer_tokens] - model.W_U[:, data.wrong_answer_tokens]
    return torch.einsum("cbm,mb->cb", parts, direction).mean(-1).detach()


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_head_direct_effects_match_transformer_lens(norm):
    model = build_model(**NORMS[norm])
    data = build_dataset(model, n=12)
    heads = [(0, 1), (1, 3), (1, 0)]
    before = model_state(model)
    profiles = head_profiles(model, data, heads, batch_size=5)
    assert_untouched(model, before)
    expected = reference_direct_effects(
        model,
        data,
        lambda cache: cache.stack_head_results(layer=-1, pos_slice=-1, apply_ln=True),
    )
    n_heads = model.cfg.n_heads
    assert [p.head for p in profiles.heads] == ["L0.H1", "L1.H3", "L1.H0"]
    for profile in profiles.heads:
        reference = expected[profile.layer * n_heads + profile.index]
        assert profile.direct_effect == pytest.approx(float(reference), rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_neuron_direct_effects_match_transformer_lens(norm):
    model = build_model(**NORMS[norm])
    data = build_dataset(model, n=12)
    neurons = [(1, 7), (0, 3), (1, 60)]
    profiles = neuron_profiles(model, data, neurons, batch_size=5)
    expected = reference_direct_effects(
        model,
        data,
        lambda cache: cache.stack_neuron_results(layer=-1, pos_slice=-1, apply_ln=True),
    )
    for profile in profiles.neurons:
        reference = expected[profile.layer * model.cfg.d_mlp + profile.index]
        assert profile.direct_effect == pytest.approx(float(reference), rel=1e-4, abs=1e-5)


def test_attention_groups_come_from_the_pattern_and_sum_to_one():
    model = build_model()
    data = with_roles(build_dataset(model, n=10, seq_len=7))
    profiles = head_profiles(model, data, [(1, 2), (0, 0)], batch_size=4)
    assert profiles.groups == ("first", "A", "END", "other")
    _, cache = model.run_with_cache(data.clean_tokens)
    for profile in profiles.heads:
        pattern = cache["pattern", profile.layer][:, profile.index, -1]  # [batch, key]
        assert sum(profile.attention.values()) == pytest.approx(1.0, abs=1e-5)
        assert profile.attention["first"] == pytest.approx(float(pattern[:, 0].mean()), abs=1e-6)
        assert profile.attention["A"] == pytest.approx(float(pattern[:, 1].mean()), abs=1e-6)
        assert profile.attention["END"] == pytest.approx(float(pattern[:, -1].mean()), abs=1e-6)
        assert profiles.example_patterns[profile.head] == pytest.approx(pattern[0].tolist())
    assert len(profiles.example_tokens) == data.seq_len
    assert HeadProfiles.from_dict(profiles.to_dict()) == profiles


def test_top_activations_are_the_largest_before_each_answer():
    model = build_model()
    data = build_dataset(model, n=9, seq_len=6)
    profiles = neuron_profiles(model, data, [(0, 5)], top_k=4)
    _, cache = model.run_with_cache(data.clean_tokens)
    acts = cache["post", 0][..., 5]  # [batch, pos]; every answer is at the last position
    values = acts.flatten().topk(4).values
    top = profiles.neurons[0].top_activations
    assert [t.activation for t in top] == pytest.approx(values.tolist())
    for t in top:
        assert float(acts[t.pair, t.position]) == pytest.approx(t.activation)
        after = data.clean_tokens[t.pair, t.position + 1 : t.position + 1 + AFTER_TOKENS]
        assert t.context.endswith(f"[{t.token}]" + "".join(f"<{int(i)}>" for i in after))
    assert NeuronProfiles.from_dict(profiles.to_dict()) == profiles


def test_attention_from_every_role_comes_from_the_pattern():
    model = build_model()
    data = with_roles(build_dataset(model, n=10, seq_len=7))
    profiles = head_profiles(model, data, [(1, 2), (0, 3)], batch_size=4)
    _, cache = model.run_with_cache(data.clean_tokens)
    for profile in profiles.heads:
        assert set(profile.attention_by_query) == {"A", "END"}
        assert profile.attention_by_query["END"] == pytest.approx(profile.attention)
        from_a = cache["pattern", profile.layer][:, profile.index, 1]  # query: position 1
        row = profile.attention_by_query["A"]
        assert row["first"] == pytest.approx(float(from_a[:, 0].mean()), abs=1e-6)
        assert row["A"] == pytest.approx(float(from_a[:, 1].mean()), abs=1e-6)
        assert row["END"] == pytest.approx(0.0, abs=1e-7)  # a query never sees a later key
        assert sum(row.values()) == pytest.approx(1.0, abs=1e-5)


def test_a_neuron_writes_the_tokens_its_output_direction_unembeds_to():
    """Through an LN final norm with its scale at 1: the row centred, times the norm's
    weight, through W_U."""
    model = build_model()
    profiles = neuron_profiles(model, build_dataset(model, n=4), [(1, 9)])
    row = model.W_out[1, 9]
    logits = ((row - row.mean()) * model.ln_final.w) @ model.W_U
    top, bottom = logits.topk(OUTPUT_TOKENS).indices, (-logits).topk(OUTPUT_TOKENS).indices
    neuron = profiles.neurons[0]
    assert neuron.promotes == tuple(f"<{int(i)}>" for i in top)
    assert neuron.suppresses == tuple(f"<{int(i)}>" for i in bottom)


def test_a_neuron_that_fires_hardest_on_the_first_token_is_flagged():
    model = build_model()
    data = build_dataset(model, n=12)
    _, cache = model.run_with_cache(data.clean_tokens)
    acts = cache["post", 0]  # [batch, pos, d_mlp]
    first = (acts[:, 0].amax(0) > acts[:, 1:].amax((0, 1))).nonzero().flatten()
    elsewhere = (acts[:, 0].amax(0) < acts[:, 1:].amax((0, 1))).nonzero().flatten()
    assert len(first) and len(elsewhere)
    chosen = [(0, int(first[0])), (0, int(elsewhere[0]))]
    flags = [n.first_token for n in neuron_profiles(model, data, chosen).neurons]
    assert flags == [True, False]


def test_nodes_outside_the_model_are_refused():
    model = build_model()
    data = build_dataset(model, n=4)
    with pytest.raises(UsageError, match="not in a model"):
        head_profiles(model, data, [(5, 0)])
    with pytest.raises(UsageError, match="not in a model"):
        neuron_profiles(model, data, [(0, 999)])


def test_nodes_can_be_named_as_a_circuit_names_them():
    """``circuit.nodes("head")`` and ``circuit.nodes("mlp_neuron")`` give names such as
    ``"L0.H1"`` and ``"L1.mlp.3"``: the profiles take them as they take (layer, index)."""
    model = build_model()
    data = with_roles(build_dataset(model, n=6))
    by_name = head_profiles(model, data, ["L0.H1", "L1.H0"])
    assert [p.head for p in by_name.heads] == ["L0.H1", "L1.H0"]
    neurons = neuron_profiles(model, data, ["L1.mlp.3"])
    assert [n.neuron for n in neurons.neurons] == ["L1.mlp.3"]
    for bad in (["H1"], ["L0.mlp.1"], [3]):
        with pytest.raises(UsageError, match="name|pair"):
            head_profiles(model, data, bad)


def test_activations_on_text_beyond_the_task_come_from_the_lines_themselves(tokenizer_model):
    cfg = build_cfg(n_layers=1, d_model=8, n_ctx=64, d_head=4, n_heads=2, d_mlp=32,
                    d_vocab=tokenizer_model.cfg.d_vocab, default_prepend_bos=False)  # fmt: skip
    model = model_from_cfg(cfg, tokenizer=tokenizer_model.tokenizer)
    lines = ("The keys to the cabinets are here.", "She gave him the book.", "x = 3 + 4")
    neurons = [(0, 2), (0, 17)]
    found = text_activations(model, neurons, top_k=2, lines=lines)
    for layer, index in neurons:
        top = found[(layer, index)]
        assert len(top) == 2 and len({t.pair for t in top}) == 2  # one per line
        assert top[0].activation >= top[1].activation
        for t in top:
            tokens = model.to_tokens(lines[t.pair])
            _, cache = model.run_with_cache(tokens)
            acts = cache["post", layer][0, :, index]
            assert t.activation == pytest.approx(float(acts.max()), abs=1e-6)
            assert int(acts.argmax()) == t.position and f"[{t.token}]" in t.context
    assert text_activations(build_model(), neurons, top_k=2) == {}  # no tokenizer, no text
