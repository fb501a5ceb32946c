"""A circuit measured by TransformerLens's own ``faithfulness``: the same circuit, the same
pairs, the same numbers as ours where the two definitions meet."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.tools.analysis import attribution_patching

from transformer_lens_mgp import Circuit, ModelDims, UsageError, evaluate
from transformer_lens_mgp.analysis.tl_tools import tl_edges, tl_faithfulness
from transformer_lens_mgp.core.metrics import task_metric
from transformer_lens_mgp.testing.tiny import build_dataset, count_hooks, tiny_gpt2

needs_faithfulness = pytest.mark.skipif(
    not hasattr(attribution_patching, "faithfulness"),
    reason="TransformerLens's faithfulness arrived in 4.0",
)


@pytest.fixture(scope="module")
def gpt2():
    return tiny_gpt2()


@pytest.fixture(scope="module")
def pairs(gpt2):
    return build_dataset(gpt2, n=6, seq_len=6, seed=3)


def whole_circuit(model) -> Circuit:
    heads = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 0]], dtype=torch.bool)
    mlps = torch.tensor([True, False])
    return Circuit.from_kept(ModelDims.from_cfg(model.cfg), {"head": heads, "mlp": mlps})


def per_pair_metric(model, circuit: Circuit, pairs) -> torch.Tensor:
    rows = torch.arange(len(pairs))
    with torch.no_grad(), circuit.applied(model, pairs):
        return task_metric(model(pairs.clean_tokens)[rows, pairs.answer_positions], pairs)


@needs_faithfulness
def test_its_faithfulness_runs_the_model_as_our_circuit(gpt2, pairs):
    circuit = whole_circuit(gpt2)
    results = tl_faithfulness(gpt2, circuit, pairs)
    theirs = torch.tensor(
        [r.corrupt_metric + r.recovered * (r.full_metric - r.corrupt_metric) for r in results]
    )
    ours = per_pair_metric(gpt2, circuit, pairs)
    assert ours.abs().max() > 0.1  # the metric is not trivially zero
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    # Averaged over pairs it is our evaluation's circuit metric.
    ours_mean = evaluate(gpt2, circuit, pairs).metric_circuit
    assert theirs.mean().item() == pytest.approx(ours_mean, abs=1e-4)
    assert count_hooks(gpt2) == 0


@needs_faithfulness
def test_the_whole_model_is_every_edge_and_recovers_everything(gpt2, pairs):
    dims = ModelDims.from_cfg(gpt2.cfg)
    full = Circuit.from_kept(
        dims, {"head": torch.ones(2, 4, dtype=torch.bool), "mlp": torch.ones(2, dtype=torch.bool)}
    )
    result = tl_faithfulness(gpt2, full, pairs[:1])[0]
    assert result.circuit_size == result.total_edges
    assert result.recovered == pytest.approx(1.0, abs=1e-4)
    # Pruning a head removes its edges to every later reader, at every position.
    fewer = tl_edges(whole_circuit(gpt2), gpt2, pairs.seq_len)
    assert len(fewer) < result.total_edges
    assert all(w.kind != "attn_head_out" or (w.layer, w.head) != (0, 1) for w, _ in fewer)


@needs_faithfulness
def test_neuron_circuits_export_whole_heads_only_when_asked(gpt2, pairs):
    dims = ModelDims.from_cfg(gpt2.cfg)
    neurons = torch.zeros(dims.shape("attn_neuron"), dtype=torch.bool)
    neurons[0, 2, :3] = True  # part of L0.H2
    partial = Circuit.from_kept(dims, {"attn_neuron": neurons})
    with pytest.raises(UsageError, match="coarse=True"):
        tl_edges(partial, gpt2, pairs.seq_len)
    only_head = torch.zeros(2, 4, dtype=torch.bool)
    only_head[0, 2] = True
    envelope = Circuit.from_kept(dims, {"head": only_head})
    assert set(tl_edges(partial, gpt2, 6, coarse=True)) == set(tl_edges(envelope, gpt2, 6))


@needs_faithfulness
def test_circuits_ablated_otherwise_are_refused(gpt2, pairs):
    circuit = whole_circuit(gpt2)
    circuit.config = {"ablation": "mean"}
    with pytest.raises(UsageError, match="ablation='corrupted'"):
        tl_faithfulness(gpt2, circuit, pairs)


def test_an_older_transformer_lens_is_named(monkeypatch, gpt2, pairs):
    monkeypatch.delattr(attribution_patching, "faithfulness", raising=False)
    with pytest.raises(UsageError, match="transformer-lens>=4"):
        tl_faithfulness(gpt2, whole_circuit(gpt2), pairs)
