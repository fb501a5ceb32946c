"""The ``tl-mgp`` command line: files written, numbers consistent, errors short and clear."""

from __future__ import annotations

import json
import re

import networkx
import pytest
from conftest import needs_hooked_transformer

from transformer_lens_mgp import (
    DEFAULT_SPARSITY,
    Circuit,
    EdgeCircuit,
    ModelDims,
    PruningConfig,
    models,
)
from transformer_lens_mgp.cli import main
from transformer_lens_mgp.core.model_api import has_hooked_transformer
from transformer_lens_mgp.training.config import DEFAULT_TARGET, PAIRS_PER_STEP, has_bf16

FAST = ["--n", "40", "--steps", "3", "--batch-size", "8", "--quiet"]


@pytest.fixture
def tiny_default(monkeypatch, tokenizer_model):
    """Make the CLI's default model the tiny one carrying SmolLM2's tokenizer."""
    monkeypatch.setattr(models, "load_model", lambda source=None, **options: tokenizer_model)
    return tokenizer_model


def test_discover_then_evaluate(tiny_default, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["discover", "--task", "ioi", *FAST, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    files = {"circuit.safetensors", "metrics.json", "nodes.json", "graph.json", "report.html"}
    assert {p.name for p in out.iterdir()} == files
    assert "KL(full || circuit)" in printed and "metric recovered" in printed
    assert "nodes that matter most" in printed and "top head" in printed
    # the small preset's targets, and how far the fit got to them
    assert re.search(r"size at the end .*head [\d.]+ % for [\d.]+ % \(moved [\d.]+ %\)", printed)
    assert "block" not in printed.split("size at the end")[1].splitlines()[0]
    nodes = json.loads((out / "nodes.json").read_text())
    assert nodes["heads"]["groups"] == ["first", "IO", "S1", "S1+1", "S2", "END", "other"]
    assert [r["head"] for r in nodes["roles"]] == [h["head"] for h in nodes["heads"]["heads"]]
    assert all(r["role"] and r["evidence"] for r in nodes["roles"])
    assert "What the top heads attend to" in (out / "report.html").read_text()

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "ioi" and metrics["n_train"] + metrics["n_test"] == 40
    assert metrics["circuit"]["kept"] == metrics["random_circuit_same_size"]["kept"]
    # judged on frames and names the fit never saw too, as many pairs as in-frame
    assert metrics["n_unseen"] == metrics["n_test"]
    assert metrics["circuit_unseen_frames"]["kept"] == metrics["circuit"]["kept"]
    assert "unseen frames" in printed and "unseen frames" in (out / "report.html").read_text()
    assert metrics["peak_rss_mib"] > 0 and metrics["wall_seconds"] > 0
    # where the time went: four parts, the steps named by their count, adding up to the wall
    parts = metrics["time_parts"]
    # the size search: the fit at the targets (3 steps), then shorter fits from it
    assert metrics["sizing"][0]["scale"] == 1 and metrics["sizing"][0]["end"] == 3
    assert f"size chosen: targets x{metrics['target_scale']:g}" in printed
    trained = metrics["sizing"][-1]["end"]
    assert list(parts)[2] == f"{trained} steps" and min(parts.values()) >= 0
    assert sum(parts.values()) == pytest.approx(metrics["wall_seconds"], abs=0.3)
    wall = rf"wall time [\d.]+ s \(model and pairs [\d.]+ s, .*, {trained} steps"
    assert re.search(wall, printed)
    settled = {row["granularity"]: row for row in metrics["settling"]}
    chosen = 0.09 * metrics["target_scale"]  # the chosen rung's target
    assert settled["head"]["target"] == pytest.approx(chosen) and 0 <= settled["head"]["kept"] <= 1

    circuit = Circuit.load(out / "circuit.safetensors", model=tiny_default)
    assert circuit.config["steps"] == 3
    assert (out / "report.html").read_text().lstrip().lower().startswith("<!doctype html")

    assert "faithfulness_curve" not in metrics  # only with --curve

    again = tmp_path / "eval"
    args = ["evaluate", str(out / "circuit.safetensors"), "--task", "ioi", "--n", "40"]
    assert main([*args, "--out", str(again)]) == 0
    evaluated = json.loads((again / "metrics.json").read_text())
    assert evaluated["circuit"]["kl"] == pytest.approx(metrics["circuit"]["kl"], abs=1e-6)
    assert evaluated["circuit_unseen_frames"]["kl"] == pytest.approx(
        metrics["circuit_unseen_frames"]["kl"], abs=1e-6
    )


def test_node_effects_can_be_skipped(tiny_default, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["discover", *FAST, "--no-node-effects", "--out", str(out)]) == 0
    assert not (out / "nodes.json").exists()
    assert "nodes that matter most" not in capsys.readouterr().out
    assert "The nodes that matter most" not in (out / "report.html").read_text()


def test_every_long_part_of_discover_shows_progress(tiny_default, tmp_path, capsys):
    loud = [a for a in FAST if a != "--quiet"]
    assert main(["discover", *loud, "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    for bar in ("full model's answers", "pruning", "held-out evaluation", "node effects"):
        assert f"{bar}:" in err, bar
    assert main(["discover", *FAST, "--out", str(tmp_path / "quiet")]) == 0
    assert "held-out evaluation" not in capsys.readouterr().err


def test_sparsity_and_granularities_reach_the_pruner(tiny_default, tmp_path):
    out = tmp_path / "run"
    args = ["--granularities", "block", "head", "attn_neuron", "--sparsity", "head=2.5"]
    args += ["--target", "attn_neuron=0.5"]
    assert main(["discover", "--task", "gp", *FAST, *args, "--out", str(out)]) == 0
    config = Circuit.load(out / "circuit.safetensors").config
    assert config["granularities"] == ["block", "head", "attn_neuron"]
    assert config["sparsity"] == {"block": DEFAULT_SPARSITY["block"], "head": 2.5}
    assert config["target"] == {"attn_neuron": 0.5}
    assert config["bf16"] is has_bf16("cpu") and config["gradient_checkpointing"] is False


def test_memory_options_reach_the_pruner(tiny_default, tmp_path):
    out = tmp_path / "run"
    args = ["--gradient-checkpointing", "--bf16"]
    assert main(["discover", "--task", "ioi", *FAST, *args, "--out", str(out)]) == 0
    config = Circuit.load(out / "circuit.safetensors").config
    assert config["bf16"] is True and config["gradient_checkpointing"] is True


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--sparsity", "heads=1"], "GRANULARITY=NUMBER"),
        (["--target", "mlp_neuron"], "GRANULARITY=NUMBER"),
        (["--sparsity", "head=lots"], "is not a number"),
        (["--task", "sst2"], "invalid choice"),
        (["--granularities", "neuron"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2(bad, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["discover", *bad, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--steps", "0"], "steps must be a positive integer"),
        (["--sparsity", "mlp=-1"], "must be a finite number >= 0"),
        (["--target", "head=5"], "must be in [0, 1]"),
        (["--target", "head=0.1", "--sparsity", "head=1"], "one of them"),
        (["--n", "0"], "n must be"),
    ],
)
def test_bad_values_give_one_line(bad, message, tiny_default, tmp_path, capsys):
    assert main(["discover", "--task", "ioi", *FAST, *bad, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("tl-mgp: error:") and message in err[-1]
    assert not (tmp_path / "o").exists()


def test_evaluate_missing_file(tiny_default, tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope.safetensors"), "--n", "40"]) == 2
    assert "tl-mgp: error:" in capsys.readouterr().err


@pytest.mark.slow
def test_readme_job_on_smollm2(smollm2, monkeypatch, tmp_path):
    """The README's main job end to end on the real model, shortened."""
    monkeypatch.setattr(models, "load_model", lambda source=None, **options: smollm2)
    out = tmp_path / "ioi"
    assert (
        main(
            ["discover", "--task", "ioi", "--n", "48", "--steps", "4", "--quiet", "--out", str(out)]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["circuit"]["accuracy_full"] > 0.9


def test_curve_goes_into_metrics_and_report(tiny_default, tmp_path):
    out = tmp_path / "run"
    assert main(["discover", "--task", "gp", *FAST, "--curve", "--out", str(out)]) == 0
    curve = json.loads((out / "metrics.json").read_text())["faithfulness_curve"]
    assert len(curve["fractions"]) == len(curve["faithfulness"]) == 10
    assert "CPR" in (out / "report.html").read_text()


def test_sweep_writes_one_folder_per_point_a_summary_and_a_pareto_plot(tiny_default, tmp_path):
    out = tmp_path / "sweep"
    targets = ["head=0.5", "head=0.9,attn_neuron=0.5"]
    assert main(["sweep", "--task", "ioi", *FAST, "--targets", *targets, "--out", str(out)]) == 0
    summary = json.loads((out / "sweep.json").read_text())
    assert [p["target"] for p in summary["points"]] == [
        {"head": 0.5},
        {"head": 0.9, "attn_neuron": 0.5},
    ]
    assert all("kl" in p and "recovered" in p for p in summary["points"])
    assert 0 <= summary["cpr"] <= 1.5 and summary["cmd"] >= 0
    folders = {p.name for p in out.iterdir() if p.is_dir()}
    assert folders == {"head=0.5", "attn_neuron=0.5,head=0.9"}
    assert "CPR" in (out / "sweep.html").read_text()


@needs_hooked_transformer
def test_max_kl_and_edges_reach_the_circuit_and_the_report(tiny_default, tmp_path):
    out = tmp_path / "run"
    args = ["--max-kl", "0.5", "--out", str(out)]  # the graph's edges come by default
    assert main(["discover", "--task", "ioi", *FAST, *args]) == 0
    circuit = Circuit.load(out / "circuit.safetensors")
    assert circuit.config["max_kl"] == 0.5 and circuit.fit_info["validation_kl"] <= 0.5
    graph = networkx.node_link_graph(json.loads((out / "graph.json").read_text()), edges="links")
    kept = set(circuit.nodes("head")) | set(circuit.nodes("mlp") if circuit.dims.has_mlp else [])
    assert set(graph.nodes) == kept | {"input", "logits"}
    assert graph.number_of_edges() > 0
    assert all(isinstance(w, float) for _, _, w in graph.edges(data="weight"))
    assert "The circuit as a graph" in (out / "report.html").read_text()


@needs_hooked_transformer
def test_learned_edges_from_discover_and_from_a_run_folder(tiny_default, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["discover", "--task", "ioi", *FAST, "--edges", "learned", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "edges chosen by" in printed and "attribution" in printed
    learned = json.loads((out / "learned_edges.json").read_text())
    edges = EdgeCircuit.load(out / "edges.safetensors", tiny_default)
    assert learned["n_kept"] == edges.n_kept and learned["n_total"] == edges.n_total
    rules = learned["evaluation"]
    assert set(rules) == {"learned", "random", "attribution", "node circuit (every edge)"}
    assert rules["node circuit (every edge)"]["kept"]["edge"] == edges.n_total
    assert "Learned edges among the kept nodes" in (out / "report.html").read_text()

    args = ["edges", str(out), "--task", "ioi", "--n", "40", "--steps", "4", "--quiet"]
    assert main([*args, "--target-edges", "3", "--out", str(tmp_path / "e")]) == 0
    again = EdgeCircuit.load(tmp_path / "e" / "edges.safetensors")
    assert again.config["target_edges"] == 3 and again.config["steps"] == 4
    assert "Learned edges" in (tmp_path / "e" / "edges.html").read_text()
    assert "strongest kept edges" in capsys.readouterr().out


@pytest.mark.skipif(has_hooked_transformer(), reason="3.9's tiny models are HookedTransformers")
def test_learned_edges_on_a_bridge_are_refused_before_the_fit(tiny_default, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["discover", *FAST, "--edges", "learned", "--out", str(out)]) == 2
    assert "HookedTransformer" in capsys.readouterr().err
    assert not (out / "circuit.safetensors").exists()


@pytest.mark.skipif(has_hooked_transformer(), reason="3.9's tiny models are HookedTransformers")
def test_on_a_bridge_the_graph_has_nodes_only_and_says_why(tiny_default, tmp_path):
    out = tmp_path / "run"
    assert main(["discover", *FAST, "--out", str(out)]) == 0  # scored edges by default
    assert "HookedTransformer" in json.loads((out / "metrics.json").read_text())["edges"]
    graph = json.loads((out / "graph.json").read_text())
    assert graph["nodes"] and graph["links"] == []
    assert "No edges: not scored" in (out / "report.html").read_text()


def test_edges_of_a_missing_run_is_one_line(tiny_default, tmp_path, capsys):
    assert main(["edges", str(tmp_path / "nowhere"), "--n", "40"]) == 2
    assert "no circuit at" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["discover", "--max-kl", "-1"], "max_kl must be a finite number > 0"),
        (["sweep", "--targets", "head=0.1", "head=0.1"], "targets repeat"),
    ],
)
def test_bad_budget_and_sweep_values_give_one_line(args, message, tiny_default, tmp_path, capsys):
    command, *rest = args
    assert main([command, "--task", "ioi", *FAST, *rest, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_python_dash_m_runs_the_command_line():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "transformer_lens_mgp", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "discover" in done.stdout


@pytest.mark.parametrize("command", ["discover", "sweep", "compare", "edges", "evaluate"])
def test_every_command_s_help_renders(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0 and "--" in capsys.readouterr().out


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_an_unwritable_out_is_refused_before_the_model_loads(where, monkeypatch, tmp_path, capsys):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded although --out cannot be written")

    monkeypatch.setattr(models, "load_model", no_model)
    blocker = tmp_path / "taken"
    blocker.write_text("")
    out = blocker if where == "file" else blocker / "run"
    assert main(["discover", *FAST, "--out", str(out)]) == 2
    assert "the output folder (--out)" in capsys.readouterr().err


def test_a_missing_cuda_is_refused_before_the_model_loads(monkeypatch, tmp_path, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    assert main(["discover", *FAST, "--device", "cuda", "--out", str(tmp_path / "o")]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    """Only the package's own usage errors become one line; a TypeError from a bug is not
    hidden behind 'tl-mgp: error:'."""

    def buggy(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(models, "load_model", buggy)
    with pytest.raises(TypeError, match="a bug"):
        main(["discover", *FAST, "--out", str(tmp_path / "o")])


def test_compare_two_runs(tiny_default, tmp_path, capsys):
    for task in ("ioi", "gp"):
        assert main(["discover", "--task", task, *FAST, "--out", str(tmp_path / task)]) == 0
    out = tmp_path / "ioi-vs-gp"
    files = [str(tmp_path / t / "circuit.safetensors") for t in ("ioi", "gp")]
    assert main(["compare", *files, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Jaccard" in printed and "ioi" in printed and "gp" in printed
    result = json.loads((out / "comparison.json").read_text())
    assert set(result["overlap"]) >= {"block", "head", "attn_neuron"}
    assert result["names"] == ["ioi", "gp"]
    assert "heads:" in (out / "comparison.html").read_text()


def test_discover_runs_the_library_default(tiny_default, tmp_path):
    """The command line's fit is ``PruningConfig()``'s; a size given turns the targets off."""
    runs = {
        "default": [],
        "float32": ["--no-bf16"],
        "lambda": ["--sparsity", "head=1"],
        "sized": ["--target", "head=0.5"],
        "weighted": ["--metric-weight", "1.5"],
    }
    configs = {}
    for name, extra in runs.items():
        out = tmp_path / name
        assert main(["discover", *FAST, *extra, "--no-node-effects", "--out", str(out)]) == 0
        configs[name] = Circuit.load(out / "circuit.safetensors").config
    model_dims = ModelDims.from_cfg(tiny_default.cfg)
    library = PruningConfig(steps=3).resolved(model_dims, "cpu").to_dict()
    assert configs["default"] == library
    # the tiny model is attention-only: the MLP neurons' target is left out
    expected = {g: t for g, t in DEFAULT_TARGET.items() if g != "mlp_neuron"}
    assert configs["default"]["target"] == expected and configs["default"]["steps"] == 3
    assert configs["default"]["bf16"] == has_bf16("cpu")
    assert configs["default"]["metric_weight"] == 2
    assert configs["default"]["schedule"]["finish"] == 0.3
    assert configs["float32"]["bf16"] is False and configs["float32"]["target"] == expected
    assert configs["lambda"]["target"] == {} and configs["lambda"]["sparsity"]["head"] == 1
    assert configs["sized"]["target"] == {"head": 0.5}
    assert configs["weighted"]["metric_weight"] == 1.5


def test_the_default_pair_count_follows_the_steps(tiny_default, tmp_path):
    out = tmp_path / "run"
    quick = ["--steps", "3", "--quiet", "--no-node-effects", "--out", str(out)]
    assert main(["discover", *quick]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] + metrics["n_test"] == 3 * PAIRS_PER_STEP


def test_discover_with_the_s2_swap_corruption(tiny_default, tmp_path):
    out = tmp_path / "abb"
    argv = ["discover", "--task", "ioi", "--corruption", "abb", *FAST, "--no-node-effects"]
    assert main([*argv, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["corruption"] == "abb"


def test_corruption_is_refused_for_other_tasks(tiny_default, tmp_path, capsys):
    code = main(["discover", "--task", "gp", "--corruption", "abb", *FAST, "--out", str(tmp_path)])
    assert code != 0
    err = capsys.readouterr().err
    assert "--corruption" in err and "--task ioi" in err and "Traceback" not in err


def test_sweep_on_a_dask_cluster_sends_the_points_there(tiny_default, tmp_path, monkeypatch):
    """The command connects to the scheduler and hands the sweep its executor and a loader
    with which the workers build the model themselves (the sweep itself is tested on a
    LocalCluster in test_sweeps)."""
    distributed = pytest.importorskip("distributed")
    import transformer_lens_mgp.cli as cli

    seen = {}

    def fake_sweep(model, train, targets, config, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(cli, "sweep", fake_sweep)
    with distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=None) as c:
        args = ["--targets", "head=0.5", "--dask-scheduler", c.scheduler_address]
        with pytest.raises(SystemExit):
            main(["sweep", "--task", "ioi", *FAST, *args, "--out", str(tmp_path / "s")])
    assert type(seen["executor"]).__name__ == "ClientExecutor"
    assert seen["load_model"].func is models.load_model


def test_sweep_without_a_dask_scheduler_is_explained(tiny_default, tmp_path, capsys):
    pytest.importorskip("distributed")
    args = ["--targets", "head=0.5", "--dask-scheduler", "tcp://127.0.0.1:9"]
    assert main(["sweep", "--task", "ioi", *FAST, *args, "--out", str(tmp_path / "s")]) == 2
    assert "no Dask scheduler answers at tcp://127.0.0.1:9" in capsys.readouterr().err


def test_a_run_folder_holds_one_run(tiny_default, tmp_path):
    """A second discover into the same folder removes what the first wrote and it does not
    (here nodes.json); files that are not run outputs stay."""
    out = tmp_path / "run"
    assert main(["discover", *FAST, "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    assert (out / "nodes.json").exists()
    assert main(["discover", *FAST, "--no-node-effects", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {
        "circuit.safetensors",
        "metrics.json",
        "graph.json",
        "report.html",
        "notes.txt",
    }


def _pairs_file(path, n: int = 10):
    names = [" Mary", " John", " Anna", " Paul"]
    records = []
    for i in range(n):
        a, b = names[i % 4], names[(i + 1) % 4]
        c, d = names[(i + 2) % 4], names[(i + 3) % 4]
        records.append({"clean": f"When{a} and{b} went to the store,{b} gave a drink to",
                        "corrupted": f"When{c} and{d} went to the store,{d} gave a drink to",
                        "answer": a, "wrong": b})  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_discover_on_your_own_pairs_file(tiny_default, tmp_path, capsys):
    pairs, out = _pairs_file(tmp_path / "mine.jsonl"), tmp_path / "mine"
    args = ["--steps", "3", "--batch-size", "4", "--quiet", "--no-node-effects"]
    assert main(["discover", "--data", str(pairs), *args, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "mine.jsonl"
    assert metrics["n_train"] + metrics["n_test"] == 10
    assert (out / "report.html").is_file()


def test_a_bad_pairs_file_stops_before_the_model_loads(monkeypatch, tmp_path, capsys):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the file was checked")

    monkeypatch.setattr(models, "load_model", no_model)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"clean": "a", "corrupted": "b", "answer": "c"}\n{"clean": "a"}\n')
    assert main(["discover", "--data", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tl-mgp: error:") and "line 2: field 'corrupted' is missing" in err
    assert "\n" not in err
    assert main(["discover", "--data", str(bad), "--task", "gp", "--out", str(tmp_path / "o")]) == 2
    assert "--data gives the pairs; drop --task" in capsys.readouterr().err
