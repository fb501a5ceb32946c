"""HookedTransformerConfig fields for a Hugging Face Llama-architecture model (SmolLM2, the
embedded default, among them), as TransformerLens' own ``convert_hf_model_config`` builds them."""

from __future__ import annotations

from typing import Any

from ..core.errors import UsageError

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def llama_cfg_fields(hf: Any, model_name: str = DEFAULT_MODEL_NAME) -> dict[str, Any]:
    """HookedTransformerConfig fields for a Llama-architecture HF config, as TransformerLens'
    ``convert_hf_model_config`` builds them for ``LlamaForCausalLM``."""
    if not getattr(hf, "tie_word_embeddings", False):
        raise UsageError("expected tied embeddings in the SmolLM2 GGUF")
    rope = getattr(hf, "rope_parameters", None) or {}
    rope_theta = getattr(hf, "rope_theta", None) or rope.get("rope_theta", 10000.0)
    if rope.get("rope_type", "default") != "default":
        raise UsageError(f"unsupported rope scaling {rope!r}")
    d_head = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    n_kv = hf.num_key_value_heads
    return {
        "model_name": model_name,
        "original_architecture": "LlamaForCausalLM",
        "d_model": hf.hidden_size,
        "d_head": d_head,
        "n_heads": hf.num_attention_heads,
        "n_key_value_heads": n_kv if n_kv != hf.num_attention_heads else None,
        "d_mlp": hf.intermediate_size,
        "n_layers": hf.num_hidden_layers,
        "n_ctx": hf.max_position_embeddings,
        "eps": float(hf.rms_norm_eps),
        "d_vocab": hf.vocab_size,
        "act_fn": hf.hidden_act,
        "normalization_type": "RMS",  # weights kept unfolded, so RMS (not RMSPre)
        "final_rms": True,
        "gated_mlp": True,
        "positional_embedding_type": "rotary",
        "rotary_adjacent_pairs": False,
        "rotary_dim": d_head,
        "rotary_base": float(rope_theta),
        # SmolLM2 was trained, and is run by transformers, without a BOS token; its nominal
        # BOS is the chat token <|im_start|>. Prepending it lowers e.g. IOI accuracy.
        "default_prepend_bos": False,
        "init_weights": False,
    }
