"""Head roles: each detector on patterns or heads whose answer is known, and each labelling
rule on measurements made up to fit it (and only it)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_untouched, model_state

from transformer_lens_mgp.analysis.heads import HeadProfile
from transformer_lens_mgp.analysis.node_effects import NodeEffect, NodeEffects
from transformer_lens_mgp.analysis.roles import (
    PATTERN_SCORE,
    acts_at,
    classify,
    head_roles,
    pattern_scores,
    repeated_token_scores,
)
from transformer_lens_mgp.core.model_api import has_hooked_transformer

LENGTH = 6
SEQ = 1 + 2 * LENGTH


def one_hot_pattern(target) -> torch.Tensor:
    """A [1, 1, SEQ, SEQ] pattern where each query puts all its attention on ``target(q)``
    (itself where that is not an earlier position)."""
    pattern = torch.zeros(1, 1, SEQ, SEQ)
    for q in range(SEQ):
        k = target(q)
        pattern[0, 0, q, k if 0 <= k <= q else q] = 1.0
    return pattern


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (lambda q: q - 1, (1.0, None, None)),
        (lambda q: q - LENGTH, (None, 1.0, 0.0)),
        (lambda q: q - LENGTH + 1, (None, 0.0, 1.0)),
        (lambda q: 0, (None, 0.0, 0.0)),
    ],
    ids=["previous-token", "duplicate-token", "induction", "first token"],
)
def test_pattern_scores_of_heads_that_do_one_thing(target, expected):
    scores = pattern_scores(one_hot_pattern(target), LENGTH)[:, 0].tolist()
    for got, want in zip(scores, expected, strict=True):
        if want is not None:
            assert got == pytest.approx(want)


def profile(attention, direct=0.0, by_query=None) -> HeadProfile:
    groups = {"first": 0.0, "IO": 0.0, "S1": 0.0, "S1+1": 0.0, "S2": 0.0, "END": 0.0}
    groups.update(attention)
    groups["other"] = 1.0 - sum(groups.values())
    return HeadProfile("L9.H6", 9, 6, groups, direct, by_query or {})


NO_PATTERN = {"previous_token": 0.05, "duplicate_token": 0.02, "induction": 0.01}


@pytest.mark.parametrize(
    ("head", "scores", "total", "role"),
    [
        (profile({"IO": 0.6}, direct=1.5), NO_PATTERN, 1.8, "name mover"),
        (profile({"IO": 0.5}, direct=-0.9), NO_PATTERN, -1.0, "negative name mover"),
        (profile({"S2": 0.7}, direct=0.01), NO_PATTERN, 2.0, "S-inhibition"),
        (profile({"S1": 0.7}, direct=0.8), NO_PATTERN, 1.0, "mover of S1"),
        (
            profile({"S1+1": 0.5}, direct=0.0),
            NO_PATTERN,
            -0.9,
            "reads S1+1, acts through later nodes",
        ),
        (profile({"first": 0.3}), {**NO_PATTERN, "induction": 0.7}, 0.5, "induction"),
        (profile({"first": 0.3}), {**NO_PATTERN, "duplicate_token": 0.5}, 0.5, "duplicate-token"),
        (profile({"first": 0.3}), {**NO_PATTERN, "previous_token": 0.9}, 0.5, "previous-token"),
        (profile({"first": 0.95}), NO_PATTERN, 3.0, "sink"),
        (profile({"first": 0.3, "IO": 0.2}, direct=2.0), NO_PATTERN, 2.0, "unclassified"),
        (profile({"IO": 0.6}, direct=0.01), NO_PATTERN, 0.02, "unclassified"),
    ],
)
def test_each_rule_names_its_role_and_nothing_else_does(head, scores, total, role):
    got, evidence = classify(head, scores, total, scale=5.0)
    assert got == role
    assert evidence  # a label always comes with its measurements


def test_evidence_quotes_the_measurements():
    _, evidence = classify(profile({"IO": 0.6}, direct=1.5), NO_PATTERN, 1.8, scale=5.0)
    assert "IO" in evidence and "0.60" in evidence and "+1.50" in evidence
    head = profile({"first": 0.3}, by_query={"S2": {"S1+1": 0.8, "first": 0.2}})
    _, evidence = classify(head, {**NO_PATTERN, "induction": 0.7}, 0.5, scale=5.0)
    assert "induction score 0.70" in evidence and "S2->S1+1 0.80" in evidence
    _, evidence = classify(profile({"first": 0.95}), NO_PATTERN, 3.0, scale=5.0)
    assert "0.95" in evidence and "-3.00" in evidence


def test_a_head_acts_from_the_role_where_it_reaches_another_role():
    rows = {
        "IO": {"first": 0.9, "IO": 0.1},
        "S1+1": {"first": 0.3, "S1": 0.2, "S1+1": 0.5},  # mostly itself: not a reach
        "S2": {"first": 0.2, "S1+1": 0.8},
        "END": {"first": 0.98, "END": 0.02},
    }
    head = profile({"first": 0.98}, by_query=rows)
    assert acts_at(head, "induction") == "S2"
    assert acts_at(head, "name mover") == acts_at(head, "sink") == "END"
    assert acts_at(profile({"first": 0.98}), "induction") == ""  # no roles recorded


def test_effects_without_a_metric_never_name_a_mover():
    head = profile({"IO": 0.9}, direct=float("nan"))
    assert classify(head, NO_PATTERN, float("nan"), scale=5.0)[0] == "unclassified"


def planted_heads(sharpness: float = 10.0):
    """A one-layer attention-only model whose head 0 attends to the previous token and head 1
    to the earlier copy of its own token; heads 2 and 3 attend evenly. Positions and tokens
    have one-hot embeddings of their own, so each head's scores are set by hand."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    n_ctx, d_vocab = 48, 40
    d_model = n_ctx + d_vocab
    cfg = HookedTransformerConfig(
        n_layers=1, d_model=d_model, n_ctx=n_ctx, d_head=d_model, n_heads=4, d_vocab=d_vocab,
        attn_only=True, normalization_type=None, act_fn="relu", seed=0,
    )  # fmt: skip
    model = HookedTransformer(cfg).eval()
    eye = torch.eye(d_model)
    positions, tokens = eye[:n_ctx], eye[n_ctx:]
    attn = model.blocks[0].attn
    with torch.no_grad():
        model.embed.W_E.copy_(tokens)
        model.pos_embed.W_pos.copy_(positions)
        for weight in (attn.W_Q, attn.W_K, attn.W_V, attn.W_O):
            weight.zero_()
        shift = torch.zeros(d_model, d_model)
        shift[torch.arange(n_ctx - 1), torch.arange(1, n_ctx)] = 1.0  # key j looks like j+1
        attn.W_Q[0] = sharpness * torch.diag(torch.cat([torch.ones(n_ctx), torch.zeros(d_vocab)]))
        attn.W_K[0] = sharpness * shift
        attn.W_Q[1] = sharpness * torch.diag(torch.cat([-torch.ones(n_ctx), torch.ones(d_vocab)]))
        attn.W_K[1] = sharpness * eye
    return model


@pytest.mark.skipif(not has_hooked_transformer(), reason="planted weights on a HookedTransformer")
def test_planted_previous_and_duplicate_token_heads_are_found():
    model = planted_heads()
    before = model_state(model)
    scores = repeated_token_scores(model, [(0, 0), (0, 1), (0, 2)], first_token=0)
    assert_untouched(model, before)
    assert scores[(0, 0)]["previous_token"] > 0.95
    assert scores[(0, 1)]["duplicate_token"] > 0.6  # a token repeated within a half splits it
    assert scores[(0, 1)]["previous_token"] < 0.2
    assert max(scores[(0, 2)].values()) < PATTERN_SCORE
    neutral = profile({"first": 0.1})
    roles = [classify(neutral, scores[(0, h)], 0.0, scale=1.0)[0] for h in range(3)]
    assert roles == ["previous-token", "duplicate-token", "unclassified"]


@pytest.mark.skipif(not has_hooked_transformer(), reason="planted weights on a HookedTransformer")
def test_head_roles_join_profiles_scores_and_removal_effects():
    model = planted_heads()
    heads = [HeadProfile(f"L0.H{h}", 0, h, {"first": 0.1, "other": 0.9}, 0.0, {}) for h in (0, 1)]
    effects = NodeEffects(
        (NodeEffect("L0.H0", "head", (0, 0), 0.3, -0.7),), kl=0.1, metric=2.0, n_pairs=4
    )
    roles = head_roles(model, heads, effects, first_token=0)
    assert [r.role for r in roles] == ["previous-token", "duplicate-token"]
    assert roles[0].total_effect == pytest.approx(0.7)
    assert math.isnan(roles[1].total_effect)  # its removal was not measured
