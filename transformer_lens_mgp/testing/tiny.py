"""Tiny models and pairs built in a fraction of a second, for tests and examples.

On TransformerLens 3.x the tiny models are ``HookedTransformer``s; 4.x removed that class,
so there they are TransformerLens-native models wrapped as a ``TransformerBridge``
(``boot_native``), with the same hook points and the same ``W_*`` weight views.
:func:`tiny_llama` builds a Hugging Face model instead, for either view of
:mod:`transformer_lens_mgp.models`.
"""

from __future__ import annotations

import torch

from ..core.data import PairedDataset
from ..core.model_api import has_hooked_transformer, hooked_transformer_classes

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


def build_cfg(**overrides):
    """A two-layer model config small enough to fit in a fraction of a second: a
    ``HookedTransformerConfig`` on TransformerLens 3.x, a ``TransformerBridgeConfig`` on 4.x."""
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
    if not has_hooked_transformer():
        from transformer_lens.config import TransformerBridgeConfig

        return TransformerBridgeConfig.from_dict(kwargs)
    _, HookedTransformerConfig = hooked_transformer_classes("tiny test models")
    return HookedTransformerConfig(**kwargs)


def model_from_cfg(cfg, tokenizer=None):
    """A random model of ``cfg`` (from :func:`build_cfg`) in eval mode: a HookedTransformer
    on TransformerLens 3.x, a native TransformerBridge on 4.x."""
    if not has_hooked_transformer():
        from transformer_lens.model_bridge import TransformerBridge
        from transformer_lens.model_bridge.sources import native  # noqa: F401  (boot_native)

        return TransformerBridge.boot_native(cfg, tokenizer=tokenizer, dtype=cfg.dtype).eval()
    HookedTransformer, _ = hooked_transformer_classes("tiny test models")
    return HookedTransformer(cfg, tokenizer=tokenizer).eval()


def build_model(**overrides):
    """A random model of :func:`build_cfg`, in eval mode (see :func:`model_from_cfg`)."""
    return model_from_cfg(build_cfg(**overrides))


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


def tiny_tokenizer(folder, bos: bool = True):
    """A word-level tokenizer over a few dozen words, built offline, saved in ``folder`` and
    loaded back from it (TransformerLens reloads tokenizers by path); ``bos=True`` puts
    ``<bos>`` in front of every text, as Gemma's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    words = ["<bos>", "<eos>", "<pad>", "<unk>"] + [
        w
        for w in "When Mary and John went to the store , gave a drink The capital of France "
        "is Paris . key near cabinet are So Anna really great friend isn't he she".split()
    ]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos:
        core.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
        )
    PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>",
    ).save_pretrained(str(folder))  # fmt: skip
    return AutoTokenizer.from_pretrained(str(folder))


def tiny_hf_model(family: str, vocab: int, seed: int = 0):
    """A tiny random Hugging Face causal LM of ``family`` (one of :data:`HF_FAMILIES`), two
    layers wide enough to have heads and MLP neurons, for tests of the loaders."""
    import transformers

    shape = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=64, vocab_size=vocab)  # fmt: skip
    grouped = dict(shape, num_key_value_heads=2)
    configs = {
        "llama": ("LlamaConfig", "LlamaForCausalLM", dict(grouped, tie_word_embeddings=True)),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", grouped),
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(grouped, head_dim=16)),
        "mistral": ("MistralConfig", "MistralForCausalLM", grouped),
        "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(grouped, head_dim=16)),
        "gpt2": ("GPT2Config", "GPT2LMHeadModel",
                 dict(n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=vocab)),
        "pythia": ("GPTNeoXConfig", "GPTNeoXForCausalLM", shape),
    }  # fmt: skip
    config_class, model_class, fields = configs[family]
    config = getattr(transformers, config_class)(**fields)
    torch.manual_seed(seed)
    return getattr(transformers, model_class)(config).eval()


HF_FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma3", "gpt2", "pythia")
"""Architectures :func:`tiny_hf_model` builds: each TransformerLens converts from the config,
except Gemma, which it configures by name only (so a tiny Gemma loads as a bridge)."""


def tiny_gpt2(vocab: int = 40, seed: int = 0):
    """A tiny random GPT-2 (learned positions, LayerNorm, one key/value per head) as a
    ``TransformerBridge``: the shape ``transformer_lens.tools.analysis`` accepts (it refuses
    grouped-query attention). Weights are drawn wider than GPT-2's own init, so that the
    heads matter to the prediction."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from ..models.convert import bridge_from_hf

    cfg = GPT2Config(
        vocab_size=vocab,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=16,
        initializer_range=0.3,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(seed)
    return bridge_from_hf(GPT2LMHeadModel(cfg).eval(), None)


def count_hooks(model) -> int:
    """Hooks attached to ``model``'s hook points, each point counted once (a bridge lists
    some under two names, e.g. ``blocks.0.mlp.hook_post`` and ``blocks.0.mlp.out.hook_in``)."""
    points = {id(point): point for point in model.hook_dict.values()}.values()
    return sum(len(point.fwd_hooks) + len(point.bwd_hooks) for point in points)
