"""A tiny random Llama (GQA, gated MLP, RMS norm, rotary, tied embeddings) for bridge tests;
shared by tests/test_bridge.py and tests/tl4/, which runs without the shared conftest."""

from __future__ import annotations

import torch


def tiny_llama(tokenizer):
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
