"""Shared builders: tiny random HookedTransformers and paired datasets made from them."""

from __future__ import annotations

import random
import warnings

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from transformer_lens_mgp import PairedDataset

warnings.filterwarnings("ignore", message=".*HookedTransformer is deprecated.*")


@pytest.fixture(autouse=True)
def seeded():
    random.seed(0)
    torch.manual_seed(0)


def build_cfg(**overrides) -> HookedTransformerConfig:
    """A two-layer model small enough to fit in a fraction of a second."""
    kwargs = dict(
        n_layers=2,
        d_model=32,
        n_ctx=16,
        d_head=8,
        n_heads=4,
        d_mlp=64,
        d_vocab=40,
        act_fn="gelu",
        normalization_type="LN",
        seed=0,
    )
    kwargs.update(overrides)
    return HookedTransformerConfig(**kwargs)


def build_model(**overrides) -> HookedTransformer:
    model = HookedTransformer(build_cfg(**overrides))
    model.eval()
    return model


VARIANTS = {
    "standard": {},
    "attn_only": dict(attn_only=True, d_mlp=None),
    "gated_gqa": dict(
        gated_mlp=True,
        act_fn="silu",
        normalization_type="RMS",
        n_key_value_heads=2,
        positional_embedding_type="rotary",
        rotary_dim=8,
    ),
    "three_layers": dict(n_layers=3, d_head=4, n_heads=3, d_mlp=24),
}


def build_dataset(model, n: int = 32, seq_len: int = 6, seed: int = 0) -> PairedDataset:
    """Random prompts whose corruption changes two tokens; the answer is the model's own top
    prediction on the clean prompt (so every pair has a behaviour to explain)."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, model.cfg.d_vocab, (n, seq_len), generator=g)
    corrupted = clean.clone()
    corrupted[:, 1] = torch.randint(0, model.cfg.d_vocab, (n,), generator=g)
    corrupted[:, -2] = torch.randint(0, model.cfg.d_vocab, (n,), generator=g)
    with torch.no_grad():
        logits = model(clean)[:, -1]
    top2 = logits.topk(2, dim=-1).indices
    return PairedDataset(
        clean_tokens=clean,
        corrupted_tokens=corrupted,
        answer_tokens=top2[:, 0],
        wrong_answer_tokens=top2[:, 1],
    )


def model_state(model) -> tuple[dict, list[bool], int]:
    """What must be unchanged after fit: weights, requires_grad flags, attached hooks."""
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    n_hooks = sum(len(h.fwd_hooks) + len(h.bwd_hooks) for h in model.hook_dict.values())
    return weights, flags, n_hooks


def assert_untouched(model, before) -> None:
    weights, flags, n_hooks = model_state(model)
    assert n_hooks == before[2] == 0
    assert flags == before[1]
    assert weights.keys() == before[0].keys()
    for k in weights:
        assert torch.equal(weights[k], before[0][k]), k
