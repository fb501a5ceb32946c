"""Edge scores between kept nodes: zero where the wiring allows no path, the bookkeeping
exact (the scores into a node add up to its first-order change), the model left as it was."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_untouched, model_state, needs_hooked_transformer

import transformer_lens_mgp.analysis.edges as edges_module
from transformer_lens_mgp import Circuit, ModelDims
from transformer_lens_mgp.analysis.edges import (
    INPUT,
    LOGITS,
    edge_graph,
    edge_scores,
    per_head_inputs,
)
from transformer_lens_mgp.analysis.plotting import plot_edge_graph
from transformer_lens_mgp.core.metrics import task_metric
from transformer_lens_mgp.testing.planted import planted_circuit
from transformer_lens_mgp.testing.tiny import build_dataset, build_model

pytestmark = needs_hooked_transformer

EMBED, FROM_H0, FROM_H1, LATE = (slice(8 * i, 8 * i + 8) for i in range(4))
WIRED = {(INPUT, "L0.H0"), (INPUT, "L0.H1"), ("L0.H0", "L1.H0"), ("L0.H1", "L1.H1")}
WIRED |= {("L1.H0", LOGITS), ("L1.H1", LOGITS), (INPUT, "L1.H0"), (INPUT, "L1.H1")}
UNWIRED = {("L0.H0", "L1.H1"), ("L0.H1", "L1.H0"), ("L0.H0", LOGITS), ("L0.H1", LOGITS)}
UNWIRED |= {(INPUT, LOGITS)}  # the corruption leaves the answer position's token alone


def wired_model():
    """Attention-only, no layer norm, the residual stream cut into four 8-dim subspaces: the
    embeddings write the first; head L0.Hi writes its own; head L1.Hi reads the embeddings
    and L0.Hi's subspace only and writes the last one, which is all the unembedding reads
    besides the embeddings. So L0.H0 reaches L1.H1 and the logits by no path."""
    model = build_model(n_heads=2, attn_only=True, d_mlp=None, normalization_type=None)
    blocks = model.blocks
    with torch.no_grad():
        for name in ("W_E", "W_pos"):
            weight = getattr(model, "embed" if name == "W_E" else "pos_embed").__getattr__(name)
            weight[:, 8:] = 0
        for head, own in enumerate((FROM_H0, FROM_H1)):
            keep = torch.zeros(32, dtype=torch.bool)
            keep[own] = True
            blocks[0].attn.W_O[head][:, ~keep] = 0
            blocks[1].attn.W_O[head][:, ~LATE_MASK] = 0
            reads = EMBED_MASK | keep
            for name in ("W_Q", "W_K", "W_V"):
                getattr(blocks[1].attn, name)[head][~reads] = 0
            for weight in (blocks[0].attn.W_O, blocks[1].attn.W_O):
                weight[head] *= 3
        for block in blocks:
            block.attn.b_O.zero_()
        model.unembed.W_U[~(EMBED_MASK | LATE_MASK)] = 0
    return model


def _mask(part: slice) -> torch.Tensor:
    out = torch.zeros(32, dtype=torch.bool)
    out[part] = True
    return out


EMBED_MASK, LATE_MASK = _mask(EMBED), _mask(LATE)


def everything(model) -> Circuit:
    dims = ModelDims.from_cfg(model.cfg)
    return Circuit(
        dims=dims, log_alpha={g: torch.full(dims.shape(g), 10.0) for g in dims.available()}
    )


def test_edges_follow_the_known_wiring():
    model = wired_model()
    scores = edge_scores(model, everything(model), build_dataset(model, n=32))
    largest = max(abs(v) for v in scores.values())
    for edge in UNWIRED:
        assert abs(scores[edge]) < 1e-6 * largest, (edge, scores[edge])
    for edge in WIRED:
        assert abs(scores[edge]) > 1e-3 * largest, (edge, scores[edge])


@pytest.mark.parametrize("variant", ["standard", "gqa"])
def test_scores_into_the_logits_add_up_to_the_first_order_change(variant):
    """Every write reaches the final stream, so the scores into ``logits`` sum to
    grad . (final stream as the circuit on clean - final stream on corrupted)."""
    planted = planted_circuit(variant, seed=0, n=16)
    model, data = planted.model, planted.dataset
    scores = edge_scores(model, everything(model), data)
    into_logits = sum(v for (_, to), v in scores.items() if to == LOGITS)
    last = model.cfg.n_layers
    with torch.no_grad():
        corrupted = model(data.corrupted_tokens, stop_at_layer=last)
    stream = model(data.clean_tokens, stop_at_layer=last).detach().requires_grad_(True)
    logits = model.unembed(model.ln_final(stream))
    metric = task_metric(logits[torch.arange(len(data)), data.answer_positions], data).sum()
    (grad,) = torch.autograd.grad(metric, stream)
    expected = float((grad * (stream.detach() - corrupted)).sum()) / len(data)
    assert into_logits == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert abs(expected) > 1e-3


@pytest.mark.parametrize("variant", ["standard", "gqa"])
def test_scores_into_a_layers_heads_add_up_to_their_first_order_change(variant):
    """The heads of a layer read what the stream carries into them: the gradient at
    ``resid_pre`` minus the part that skips them (the gradient at ``resid_mid``)."""
    planted = planted_circuit(variant, seed=0, n=16)
    model, data = planted.model, planted.dataset
    layer = model.cfg.n_layers - 1
    scores = edge_scores(model, everything(model), data)
    into_heads = sum(v for (_, to), v in scores.items() if to.startswith(f"L{layer}.H"))
    pre, mid = f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.hook_resid_mid"
    with torch.no_grad():
        _, corrupted = model.run_with_cache(data.corrupted_tokens, names_filter=pre)
    kept = {}

    def store(activation, *, hook):
        kept[hook.name] = activation

    def leaf(activation, *, hook):
        return activation.detach().requires_grad_(True)

    hooks = [("blocks.0.hook_resid_pre", leaf), (pre, store), (mid, store)]
    logits = model.run_with_hooks(data.clean_tokens, fwd_hooks=hooks)
    metric = task_metric(logits[torch.arange(len(data)), data.answer_positions], data).sum()
    grad_pre, grad_mid = torch.autograd.grad(metric, [kept[pre], kept[mid]])
    change = kept[pre].detach() - corrupted[pre]
    expected = float(((grad_pre - grad_mid) * change).sum()) / len(data)
    assert into_heads == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert abs(expected) > 1e-3


def test_dropped_nodes_have_no_edges_and_the_model_is_untouched():
    model = build_model()
    data = build_dataset(model, n=8)
    circuit = everything(model)
    circuit.log_alpha["head"][0, 1] = -10.0
    before = model_state(model)
    flags = (model.cfg.use_split_qkv_input, model.cfg.ungroup_grouped_query_attention)
    graph = edge_graph(model, circuit, data)
    assert "L0.H1" not in graph and "L0.H0" in graph and "L1.mlp" in graph
    assert graph.nodes[INPUT]["layer"] == -1 and graph.nodes[LOGITS]["layer"] == 2
    assert all(u != "L0.H1" and v != "L0.H1" for u, v in graph.edges)
    assert graph.has_edge("L0.H0", "L0.mlp")  # a head feeds its own layer's MLP
    assert not graph.has_edge("L0.mlp", "L0.H0")  # never backwards
    assert (model.cfg.use_split_qkv_input, model.cfg.ungroup_grouped_query_attention) == flags
    assert_untouched(model, before)
    fewer = edge_graph(model, circuit, data, min_share=0.5)
    assert 0 < fewer.number_of_edges() < graph.number_of_edges()
    assert len(plot_edge_graph(graph).data) == graph.number_of_edges() + 1


def test_settings_come_back_after_an_error(monkeypatch):
    model = build_model()
    before = model_state(model)

    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(edges_module, "_batch_scores", fail)
    with pytest.raises(RuntimeError, match="boom"):
        edge_scores(model, everything(model), build_dataset(model, n=4))
    assert not model.cfg.use_split_qkv_input and not model.cfg.ungroup_grouped_query_attention
    assert_untouched(model, before)
    with per_head_inputs(model):
        assert model.cfg.use_split_qkv_input
    assert not model.cfg.use_split_qkv_input


def test_bad_arguments_are_explained():
    model = build_model()
    data = build_dataset(model, n=4)
    with pytest.raises(ValueError, match="min_share"):
        edge_graph(model, everything(model), data, min_share=2)
    with pytest.raises(ValueError, match="unknown ablation"):
        edge_scores(model, everything(model), data, ablation="noise")
    with pytest.raises(ValueError, match="use the model the circuit was discovered on"):
        edge_scores(build_model(n_layers=3), everything(model), data)
