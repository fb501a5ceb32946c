"""``load_model`` on every kind of source, offline: loaded Hugging Face models of each family
(logits checked against the Hugging Face model), Hugging Face folders, and bad sources that
must fail in one line."""

from __future__ import annotations

import pytest
import torch

from transformer_lens_mgp.core.errors import MissingFileError, UsageError
from transformer_lens_mgp.core.model_api import has_hooked_transformer, is_hooked_transformer
from transformer_lens_mgp.models import load_model, prepends_bos
from transformer_lens_mgp.models.convert import check_supported
from transformer_lens_mgp.testing.tiny import HF_FAMILIES, tiny_hf_model, tiny_tokenizer

TEXT = "When Mary and John went to the store , John gave a drink to"
# TransformerLens configures Gemma by official name only, so a tiny Gemma has no
# HookedTransformer conversion and loads as a bridge.
BRIDGE_ONLY = {"gemma3"}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def _gap(model, hf_model) -> float:
    tokens = model.to_tokens(TEXT)
    with torch.no_grad():
        ours = model(tokens).log_softmax(-1)
        theirs = hf_model(tokens).logits.log_softmax(-1)
    return (ours - theirs).abs().max().item()


@pytest.mark.parametrize("family", HF_FAMILIES)
def test_each_family_matches_the_hugging_face_model(family, tokenizer):
    hf_model = tiny_hf_model(family, len(tokenizer))
    model = load_model(hf_model=hf_model, tokenizer=tokenizer)
    hooked = has_hooked_transformer() and family not in BRIDGE_ONLY
    assert is_hooked_transformer(model) == hooked
    assert _gap(model, hf_model) < 1e-4
    assert "blocks.1.attn.hook_z" in model.hook_dict and "blocks.1.mlp.hook_post" in model.hook_dict
    assert not model.training


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_bridge_on_request(family, tokenizer):
    hf_model = tiny_hf_model(family, len(tokenizer))
    model = load_model(hf_model=hf_model, tokenizer=tokenizer, bridge=True)
    assert not is_hooked_transformer(model)
    assert _gap(model, hf_model) < 1e-5


def test_bos_follows_the_tokenizer(tmp_path):
    with_bos, without = tiny_tokenizer(tmp_path / "a"), tiny_tokenizer(tmp_path / "b", bos=False)
    assert prepends_bos(with_bos) and not prepends_bos(without)
    for tok, expected in ((with_bos, True), (without, False)):
        model = load_model(hf_model=tiny_hf_model("llama", len(tok)), tokenizer=tok)
        assert model.cfg.default_prepend_bos is expected
        first = model.to_tokens("Mary")[0, 0].item()
        assert (first == tok.bos_token_id) is expected


def test_a_hugging_face_folder_loads_offline(tmp_path, tokenizer):
    hf_model = tiny_hf_model("qwen2", len(tokenizer))
    hf_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = load_model(tmp_path)
    assert _gap(model, hf_model) < 1e-4
    assert model.cfg.model_name == tmp_path.name or not is_hooked_transformer(model)


def test_a_folder_without_a_config_is_refused(tmp_path):
    with pytest.raises(MissingFileError, match="no config.json"):
        load_model(tmp_path)


def test_a_missing_gguf_is_refused(tmp_path):
    with pytest.raises(MissingFileError, match="no GGUF file"):
        load_model(tmp_path / "model.gguf")


def test_an_unknown_name_gets_one_line():
    with pytest.raises(UsageError, match="not a local file or folder") as err:
        load_model("no such model")  # not a valid hub id either: fails before any network
    assert "\n" not in str(err.value)
    assert "gemma-3-270m" in str(err.value)


def test_an_unsupported_architecture_names_the_supported_ones():
    config = type("Config", (), {"architectures": ["BioGptForCausalLM"]})()
    with pytest.raises(UsageError, match="cannot run BioGptForCausalLM.*LlamaForCausalLM"):
        check_supported(config)


def test_hf_model_needs_its_tokenizer(tokenizer):
    with pytest.raises(UsageError, match="needs its tokenizer"):
        load_model(hf_model=tiny_hf_model("llama", len(tokenizer)))


@pytest.mark.skipif(
    not has_hooked_transformer(), reason="TransformerLens 4.x has no HookedTransformer"
)
def test_a_wrong_conversion_is_refused(tokenizer):
    from transformer_lens_mgp.models.convert import _check_logits

    model = load_model(hf_model=tiny_hf_model("llama", len(tokenizer)), tokenizer=tokenizer)
    other = tiny_hf_model("llama", len(tokenizer), seed=1)
    with pytest.raises(UsageError, match="disagrees with the Hugging Face model"):
        _check_logits(model, other, "LlamaForCausalLM")
