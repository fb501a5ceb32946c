"""discover(): the command line's job as one library call, returning one typed result."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_untouched, model_state, needs_hooked_transformer

from transformer_lens_mgp import CircuitPruner, Discovery, discover, models, tasks
from transformer_lens_mgp.analysis.text import discovery_text
from transformer_lens_mgp.cli import main
from transformer_lens_mgp.core.model_api import is_hooked_transformer


@pytest.fixture
def ioi(tokenizer_model):
    pairs = tasks.split_pairs("ioi", tokenizer_model, 40, seed=0)  # as the command line does
    return tokenizer_model, pairs.train, pairs.test, pairs.unseen


def test_discover_fits_measures_and_leaves_the_model_as_it_was(ioi):
    model, train, test, unseen = ioi
    before = model_state(model)
    config = CircuitPruner(model, steps=3).config
    run = discover(model, train, test, config, unseen=unseen, progress=False)
    assert_untouched(model, before)
    assert isinstance(run, Discovery) and run.n_test == len(test) == 4
    assert run.evaluation.kept == run.random_baseline.kept  # a rival of the same size
    assert run.unseen.n_pairs == len(unseen) and run.unseen_random.kept == run.unseen.kept
    assert run.unseen.metric_full != run.evaluation.metric_full  # other pairs
    assert run.anatomy is not None and run.curve is None
    # the graph's edges by default where each head has its own input, else said why not
    assert (run.edges is not None) == is_hooked_transformer(model)
    if run.edges is None:
        assert "HookedTransformer" in run.facts["edges"]
    assert [r.head for r in run.anatomy.roles] == [h.head for h in run.anatomy.heads.heads]
    assert {row.granularity for row in run.settling} == set(run.circuit.granularities)
    parts = run.to_dict()["time_parts"]
    trained = run.circuit.fit_info["steps_trained"]  # the size search's rungs included
    assert list(parts)[2] == f"{trained} steps" and run.timings.model_and_pairs == 0
    assert sum(parts.values()) == pytest.approx(run.timings.wall, abs=0.3)
    metrics = json.loads(json.dumps(run.to_dict()))  # JSON-able as metrics.json
    assert metrics["n_train"] == len(train) and metrics["circuit"]["kl"] == run.evaluation.kl
    assert metrics["circuit_unseen_frames"]["kl"] == run.unseen.kl and metrics["n_unseen"] == 4
    text = discovery_text(run)
    assert "KL(full || circuit)" in text and "nodes that matter most" in text
    header = next(line for line in text.splitlines() if line.startswith("held-out pairs"))
    assert "in-frame" in header and "unseen frames" in header


def test_the_notebook_gets_the_circuit_the_command_line_gets(ioi, monkeypatch, tmp_path):
    """``CircuitPruner(model).fit(train)`` with the defaults, on the pairs and seed that
    ``tl-mgp discover`` builds, gives the same circuit."""
    model, train, _, _ = ioi
    monkeypatch.setattr(models, "load_model", lambda source=None, **options: model)
    out = tmp_path / "run"
    argv = ["discover", "--n", "40", "--steps", "3", "--quiet", "--no-node-effects"]
    assert main([*argv, "--out", str(out)]) == 0
    from_cli = json.loads((out / "metrics.json").read_text())
    from transformer_lens_mgp import Circuit

    saved = Circuit.load(out / "circuit.safetensors")
    fitted = CircuitPruner(model, steps=3).fit(train, progress=False)
    assert saved.config == fitted.config
    for g in fitted.granularities:
        assert torch.equal(saved.log_alpha[g], fitted.log_alpha[g]), g
    assert from_cli["n_train"] == len(train)


def test_a_bad_edges_choice_is_refused_before_the_fit(ioi):
    model, train, test, _ = ioi
    with pytest.raises(ValueError, match="edges is one of"):
        discover(model, train, test, edges="all", progress=False)


@needs_hooked_transformer
def test_scored_edges_and_the_curve_come_back_typed(ioi):
    model, train, test, _ = ioi
    config = CircuitPruner(model, steps=2).config
    run = discover(
        model, train, test, config, node_effects=False, curve=True, edges="scored", progress=False
    )
    assert run.curve is not None and 0 <= run.curve.cpr
    assert run.edges is not None and all(isinstance(e.score, float) for e in run.edges)
    assert run.to_dict()["n_edges_scored"] == len(run.edges)
    assert "faithfulness_curve" in run.to_dict()


def test_the_command_line_fits_per_role_and_reports_each_roles_nodes(ioi, monkeypatch, tmp_path):
    model, train, _, _ = ioi
    monkeypatch.setattr(models, "load_model", lambda source=None, **options: model)
    out = tmp_path / "run"
    argv = ["discover", "--n", "40", "--steps", "3", "--quiet", "--per-role", "--out", str(out)]
    assert main(argv) == 0
    from transformer_lens_mgp import Circuit

    saved = Circuit.load(out / "circuit.safetensors")
    assert saved.slots == (*train.roles, "other") and saved.config["per_role"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert "token positions" in metrics["edges"] and "token positions" in metrics["node effects"]
    assert metrics["circuit_unseen_frames"]["kl"] >= 0
    graph = json.loads((out / "graph.json").read_text())
    heads = [n for n in graph["nodes"] if n.get("kind") == "head"]
    assert heads and all(set(n["kept_at"].split(", ")) <= set(saved.slots) for n in heads)
    page = (out / "report.html").read_text()
    assert "kept per token role and layer" in page and "One mask per node and token role" in page
    assert not (out / "nodes.json").exists()
    with pytest.raises(ValueError, match="edges are learned among nodes"):
        discover(model, train, train, CircuitPruner(model, per_role=True).config, edges="learned")
