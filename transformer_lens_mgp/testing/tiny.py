"""Tiny models and pairs built in a fraction of a second, for tests and examples.

``HookedTransformer`` exists only up to TransformerLens 3.x; on 4.x, builders that need it
say so, and :func:`tiny_llama` (a Hugging Face model, wrapped as a TransformerBridge with
:func:`~transformer_lens_mgp.models.bridge_from_hf`) serves instead.
"""

from __future__ import annotations

import torch

from ..core.data import PairedDataset
from ..core.errors import UsageError

LLAMA_LIKE = dict(
    gated_mlp=True,
    act_fn="silu",
    normalization_type="RMS",
    n_key_value_heads=2,
    positional_embedding_type="rotary",
    rotary_dim=8,
)
"""Config overrides for a Llama-like tiny model: gated MLP, RMS norm, rotary embeddings and
grouped-query attention (two key/value heads)."""


def hooked_transformer_classes(feature: str):
    """``(HookedTransformer, HookedTransformerConfig)``, or a clear error on TransformerLens
    4.x, which removed them."""
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError:
        raise UsageError(
            f"{feature} are built as HookedTransformers, which TransformerLens 4.x removed; "
            "use transformer-lens 3.9 for them"
        ) from None
    return HookedTransformer, HookedTransformerConfig


def build_cfg(**overrides):
    """A two-layer model config small enough to fit in a fraction of a second."""
    _, HookedTransformerConfig = hooked_transformer_classes("tiny test models")
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


def build_model(**overrides):
    """A random HookedTransformer of :func:`build_cfg`, in eval mode."""
    HookedTransformer, _ = hooked_transformer_classes("tiny test models")
    return HookedTransformer(build_cfg(**overrides)).eval()


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


def tiny_llama(tokenizer):
    """A tiny random Llama (grouped-query attention, gated MLP, RMS norm, rotary, tied
    embeddings) as a Hugging Face model, for either view of :mod:`transformer_lens_mgp.models`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()
