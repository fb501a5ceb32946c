"""MIB circuit-track JSON: a hand-written file in MIB's documented format is read, circuits
are written in it, and a round trip keeps the heads and MLPs."""

from __future__ import annotations

import json

import pytest
import torch

from transformer_lens_mgp import Circuit, CircuitPruner, compare, evaluate
from transformer_lens_mgp.core.errors import UsageError
from transformer_lens_mgp.core.model_api import model_dims
from transformer_lens_mgp.testing.tiny import build_dataset, build_model

# What EAP-IG's Graph.to_json writes for a 2-layer model with 4 heads per layer: every node
# and edge named, in_graph and score on each. Written by hand from that format.
HAND_WRITTEN = {
    "cfg": {"n_layers": 2, "n_heads": 4, "d_model": 32, "parallel_attn_mlp": False},
    "nodes": {
        "input": {"in_graph": True, "score": 0.0},
        "a0.h0": {"in_graph": False, "score": 0.01},
        "a0.h1": {"in_graph": True, "score": 0.8},
        "a0.h2": {"in_graph": False, "score": 0.02},
        "a0.h3": {"in_graph": False, "score": 0.0},
        "m0": {"in_graph": True, "score": 1.3},
        "a1.h0": {"in_graph": False, "score": 0.1},
        "a1.h1": {"in_graph": False, "score": 0.0},
        "a1.h2": {"in_graph": True, "score": 2.1},
        "a1.h3": {"in_graph": False, "score": 0.0},
        "m1": {"in_graph": False, "score": 0.05},
        "logits": {"in_graph": True, "score": 0.0},
    },
    "edges": {
        "input->a0.h1<q>": {"score": 0.4, "in_graph": True},
        "a0.h1->a1.h2<v>": {"score": 0.9, "in_graph": True},
        "input->a1.h3<k>": {"score": 0.5, "in_graph": True},  # a node only an edge names
        "a1.h2->logits": {"score": 1.1, "in_graph": True},
        "m0->m1": {"score": 0.0, "in_graph": False},
    },
}


@pytest.fixture
def model():
    return build_model(n_heads=4)


def test_a_hand_written_mib_file_is_read(model, tmp_path):
    path = tmp_path / "eap.json"
    path.write_text(json.dumps(HAND_WRITTEN))
    circuit = Circuit.from_mib(path, model)
    assert circuit.nodes("head") == ["L0.H1", "L1.H2", "L1.H3"]
    assert circuit.nodes("mlp") == ["L0.mlp"]
    assert circuit.n_kept("mlp_neuron") == model.cfg.d_mlp  # its neurons kept whole
    data = build_dataset(model, n=8)
    assert evaluate(model, circuit, data).n_pairs == 8


def test_a_fitted_circuit_round_trips_its_heads_and_mlps(model, tmp_path):
    data = build_dataset(model, n=16)
    fitted = CircuitPruner(model, seed=0, steps=3, batch_size=8).fit(data, progress=False)
    path = fitted.to_mib(tmp_path / "ours.json")
    document = json.loads(path.read_text())
    assert document["cfg"] == {
        "n_layers": 2,
        "n_heads": 4,
        "d_model": 32,
        "parallel_attn_mlp": False,
    }
    back = Circuit.from_mib(path, model)
    assert torch.equal(back.kept("head"), fitted.kept("head"))
    assert torch.equal(back.kept("mlp"), fitted.kept("mlp"))
    overlap = compare(fitted, back).overlap
    assert overlap["head"].jaccard == 1.0 and overlap["mlp"].jaccard == 1.0


def test_written_nodes_and_edges_follow_mib_names(model, tmp_path):
    heads = torch.zeros(2, 4, dtype=torch.bool)
    heads[0, 1] = heads[1, 2] = True
    circuit = Circuit.from_kept(
        model_dims(model), {"head": heads, "mlp": torch.tensor([True, False])}
    )
    document = json.loads(circuit.to_mib(tmp_path / "c.json", model).read_text())
    nodes, edges = document["nodes"], document["edges"]
    assert len(nodes) == 1 + 2 * 4 + 2 + 1
    assert [n for n, v in nodes.items() if v["in_graph"]] == [
        "input",
        "a0.h1",
        "m0",
        "a1.h2",
        "logits",
    ]
    assert nodes["a0.h1"]["score"] == pytest.approx(1.0)
    assert set(edges) == {
        "input->a0.h1<q>",
        "input->a0.h1<k>",
        "input->a0.h1<v>",
        "input->m0",
        "a0.h1->m0",
        *(f"{w}->a1.h2<{x}>" for w in ("input", "a0.h1", "m0") for x in "qkv"),
        *(f"{w}->logits" for w in ("input", "a0.h1", "m0", "a1.h2")),
    }
    assert all(e["in_graph"] for e in edges.values())


def test_a_circuit_of_another_model_is_refused(model, tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({**HAND_WRITTEN, "cfg": {**HAND_WRITTEN["cfg"], "n_layers": 12}}))
    with pytest.raises(UsageError, match="12 layers of 4 heads, not this one's 2 of 4"):
        Circuit.from_mib(path, model)
    path.write_text("[1, 2]")
    with pytest.raises(UsageError, match="not a MIB circuit file"):
        Circuit.from_mib(path, model)


def test_learned_edges_mark_which_edges_are_in_the_graph(model, tmp_path):
    from transformer_lens_mgp.core.edge_circuit import EdgeCircuit
    from transformer_lens_mgp.core.edge_graph import EdgeGraph

    heads = torch.zeros(2, 4, dtype=torch.bool)
    heads[0, 1] = heads[1, 2] = True
    nodes = Circuit.from_kept(
        model_dims(model), {"head": heads, "mlp": torch.tensor([False, False])}
    )
    graph = EdgeGraph.of(nodes)
    kept = torch.tensor([(u, v) == ("L0.H1", "L1.H2.v") for u, v in graph.edge_names])
    edges = EdgeCircuit.from_kept(nodes, graph, kept)
    document = json.loads(nodes.to_mib(tmp_path / "e.json", model, edges=edges).read_text())
    assert [n for n, e in document["edges"].items() if e["in_graph"]] == ["a0.h1->a1.h2<v>"]
    assert document["edges"]["a0.h1->a1.h2<v>"]["score"] == 10.0
