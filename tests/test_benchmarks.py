"""The benchmark scripts run (on tiny configurations); their numbers are not asserted here."""

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import needs_hooked_transformer

from transformer_lens_mgp import Circuit, ModelDims, tasks

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def load(name: str):
    """A benchmark script as the module ``benchmarks.<name>`` (the repository root is on
    pytest's path)."""
    return importlib.import_module(f"benchmarks.{name}")


def test_ground_truth_benchmark_runs(tmp_path, monkeypatch, capsys):
    bench = load("ground_truth")
    monkeypatch.setattr(bench, "SCALES", (0.5, 2.0))
    out = tmp_path / "gt.json"
    argv = ["ground_truth.py", "--variants", "attn_only", "--seeds", "0", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    rows = json.loads(out.read_text())["rows"]
    assert {r["method"] for r in rows} == {
        "pruning",
        "attribution patching",
        "activation magnitude",
    }
    assert {r["granularity"] for r in rows} == {"block", "head", "attn_neuron"}
    assert "| attn_only | head | pruning |" in capsys.readouterr().out


def test_task_table_reads_discover_runs(tmp_path, capsys, monkeypatch):
    table = load("task_table")
    run = tmp_path / "ioi"
    run.mkdir()
    ours = {
        "kept": {"head": 27, "mlp_neuron": 100},
        "total": {"head": 270, "mlp_neuron": 46080},
        "kl": 0.3,
        "recovered": 0.9,
        "accuracy_circuit": 0.9,
        "accuracy_full": 0.97,
    }
    rand = {**ours, "kl": 4.0, "recovered": 0.0}
    metrics = {
        "task": "ioi",
        "circuit": ours,
        "random_circuit_same_size": rand,
        "wall_seconds": 300,
        "fit_seconds": 250,
        "peak_rss_mib": 2048,
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    monkeypatch.setattr(sys, "argv", ["task_table.py", str(run)])
    table.main()
    printed = capsys.readouterr().out
    assert "| ioi | 27 / 270 (10.0 %) | – | – | 100 / 46,080 (0.2 %) | 0.300 | 0.90 |" in printed
    assert "| 4.00 / 0.00 | – |" in printed  # a run without unseen frames
    metrics["circuit_unseen_frames"] = {**ours, "kl": 0.45, "recovered": 0.85}
    (run / "metrics.json").write_text(json.dumps(metrics))
    table.main()
    assert "| 4.00 / 0.00 | 0.450 / 0.85 |" in capsys.readouterr().out


@needs_hooked_transformer
def test_perf_benchmark_runs_with_peers(tmp_path, monkeypatch, capsys):
    bench = load("perf")
    monkeypatch.setattr(bench, "PEER_VENV", tmp_path / "no-venv")
    out = tmp_path / "perf.json"
    argv = ["perf.py", "--models", "tiny", "--batch", "2", "--seq", "6", "--steps", "1"]
    monkeypatch.setattr(sys, "argv", [*argv, "--no-install", "--json", str(out)])
    bench.main()
    (row,) = json.loads(out.read_text())["rows"]
    for mode in ("floor", "ours", "ours-recompute", "eap"):
        assert row[mode]["seconds_per_step"] > 0 and row[mode]["peak_mib"] >= 0, row[mode]
    assert row["eap"]["edges"] == 110
    assert "no auto-circuit venv" in row["auto-circuit"]["reason"]
    assert set(row["ratios"]) == {
        "ours/floor",
        "ours-recompute/floor",
        "eap/ours",
        "eap/ours-recompute",
    }
    printed = capsys.readouterr().out
    assert "| tiny | 2 | 6 | ours-recompute |" in printed
    assert "| tiny | 2 | 6 | eap/ours-recompute |" in printed
    assert "auto-circuit on tiny 2x6: no auto-circuit" in printed


@needs_hooked_transformer
def test_gpu_check_runs_its_parts_on_a_cpu(tmp_path, monkeypatch, capsys):
    bench = load("gpu_check")
    out = tmp_path / "gpu.json"
    argv = ["gpu_check.py", "--device", "cpu", "--models", "tiny", "--batch", "2", "--seq", "6"]
    monkeypatch.setattr(sys, "argv", [*argv, "--steps", "1", "--no-ioi", "--json", str(out)])
    bench.main()
    result = json.loads(out.read_text())
    assert result["environment"]["devices"][0].startswith("cpu")
    (row,) = result["perf"]
    for mode in ("floor", "ours", "ours-bf16", "eap"):
        assert row[mode]["seconds_per_step"] > 0, row[mode]
    assert "multi_device" not in result  # one device here
    assert "devices: cpu" in capsys.readouterr().out


@needs_hooked_transformer
def test_memory_scale_measures_llama_shapes_and_extrapolates(tmp_path, monkeypatch, capsys):
    bench = load("memory_scale")
    shapes = {
        f"llama-{d}": bench.Shape(2, d, 4, 2 * d, d // 4, 300, 2, llama=True) for d in (16, 32)
    }
    monkeypatch.setattr(bench, "MEASURED", shapes)
    big = bench.Shape(4, 128, 4, 256, 32, 300, 2, llama=True)
    monkeypatch.setattr(bench, "EXTRAPOLATED", {"llama-big": big})
    out = tmp_path / "memory.json"
    argv = ["memory_scale.py", "--modes", "floor", "ours", "--batch", "2", "--seq", "6"]
    monkeypatch.setattr(sys, "argv", [*argv, "--json", str(out)])
    bench.main()
    result = json.loads(out.read_text())
    for row in result["measured"].values():
        assert row["floor"]["peak_mib"] >= 0 and row["ours"]["seconds_per_step"] > 0
    line = result["fits"]["ours"]
    assert line["points"] == 2
    predicted = result["extrapolated"]["llama-big"]["ours"]["peak_mib"]
    assert predicted == pytest.approx(
        bench.math.exp(line["intercept"] + line["slope"] * bench.math.log(big.n_params))
    )
    assert "| llama-big (extrapolated) |" in capsys.readouterr().out


@needs_hooked_transformer
def test_shape_parameter_counts_match_the_built_models():
    import torch

    perf = load("perf")
    for shape in (perf.SHAPES["tiny"], perf.Shape(2, 32, 4, 64, 8, 50, 2, llama=True)):
        model = perf.build(perf.shape_name(shape), "cpu")
        weights = sum(
            p.numel()
            for name, p in model.named_parameters()
            if name.split(".")[-1].lstrip("_").startswith("W_") and not name.endswith("W_pos")
        )
        assert weights == shape.n_params, shape
        assert torch.isfinite(model(torch.zeros(1, 3, dtype=torch.long))).all()


def test_gpu_check_records_a_failing_part_and_goes_on():
    bench = load("gpu_check")
    assert bench.guarded(lambda: 1 / 0)["error"].startswith("ZeroDivisionError")
    assert bench.guarded(lambda: {"ok": 1}) == {"ok": 1}


@needs_hooked_transformer
def test_eap_scores_into_a_node_add_up_to_its_attribution():
    """Upstream outputs sum to a downstream input, so its edges' scores sum to the node's."""
    import torch

    perf, eap = load("perf"), load("peers.eap")
    model = perf.build("tiny", "cpu")
    graph = eap.prepare(model)
    clean, corrupted, answers, _ = perf.tokens(model.cfg.d_vocab, 3, 5)
    scores = eap.edge_scores(model, graph, clean, corrupted, answers)
    assert scores.shape == graph.valid.shape == (1 + 2 * 5, 2 * 13 + 1)
    assert torch.isfinite(scores).all() and (scores[~graph.valid] == 0).all()
    # Only the corrupted position's embedding differs, and the last layer reads it only into
    # positions the metric ignores: those few edges score exactly zero.
    assert (scores[graph.valid] != 0).float().mean() > 0.8

    names = {"logits": "blocks.1.hook_resid_post", "1.mlp_in": "blocks.1.hook_mlp_in"}
    names |= {"1.q2": "blocks.1.hook_q_input", "0.v1": "blocks.0.hook_v_input"}
    _, corrupted_cache = model.run_with_cache(corrupted, names_filter=list(names.values()))
    acts = {}

    def keep(act, hook):
        act.retain_grad()
        acts[hook.name] = act

    hooks = [("hook_embed", eap.start_graph), *[(n, keep) for n in names.values()]]
    with model.hooks(fwd_hooks=hooks):
        eap.metric(model(clean), answers).backward()
    for node, hook_name in names.items():
        act = acts[hook_name]
        attribution = (corrupted_cache[hook_name] - act.detach()) * act.grad
        if act.ndim == 4:  # per-head inputs: the head's slice
            attribution = attribution[:, :, int(node[-1])]
        column = scores[:, graph.downstream.index(node)]
        torch.testing.assert_close(column.sum(), attribution.sum(), rtol=1e-4, atol=1e-6)


def test_scaling_benchmark_runs(tmp_path, monkeypatch, capsys):
    scaling = load("scaling")
    base = scaling.Point(scaling.perf.SHAPES["tiny"], batch=2, seq=6)
    monkeypatch.setattr(scaling, "BASE", base)
    monkeypatch.setattr(scaling, "AXES", {"batch": (2, 4)})
    out, html = tmp_path / "scaling.json", tmp_path / "scaling.html"
    argv = ["scaling.py", "--steps", "1", "--json", str(out), "--html", str(html)]
    monkeypatch.setattr(sys, "argv", argv)
    scaling.main()
    result = json.loads(out.read_text())
    assert [r["value"] for r in result["rows"]] == [2, 4]
    assert set(result["slopes"]) >= {"batch/ours/time", "batch/floor/memory"}
    assert html.stat().st_size > 0
    assert "| batch |" in capsys.readouterr().out


@pytest.fixture
def task_model(tokenizer_model):
    """A two-layer random model with MLPs and SmolLM2's tokenizer, for the task benchmarks."""

    from transformer_lens_mgp.testing.tiny import build_cfg, model_from_cfg

    tokenizer = tokenizer_model.tokenizer
    cfg = build_cfg(
        n_layers=2,
        d_model=16,
        n_ctx=64,
        d_head=4,
        n_heads=2,
        d_mlp=8,
        d_vocab=len(tokenizer),
        default_prepend_bos=False,
    )
    return model_from_cfg(cfg, tokenizer=tokenizer)


def test_node_baselines_benchmark_runs_on_a_tiny_model(tmp_path, monkeypatch, capsys, task_model):
    bench = load("node_baselines")
    monkeypatch.setattr(bench, "load_model", lambda name=None: task_model)
    out = tmp_path / "b"
    bench.main(
        [
            "--task",
            "ioi",
            "--n",
            "40",
            "--scales",
            "--head-targets",
            "0.5",
            "--steps",
            "3",
            "--head-steps",
            "3",
            "--score-pairs",
            "8",
            "--patch-pairs",
            "4",
            "--ig-steps",
            "2",
            "--out",
            str(out),
        ]
    )
    record = json.loads((out / "baselines.json").read_text())
    rows = record["rows"]
    neuron = {r["method"] for r in rows if r["level"] == "neuron"}
    head = {r["method"] for r in rows if r["level"] == "head"}
    assert neuron == {"pruning", "attribution patching", "integrated gradients", "random"}
    assert head == neuron | {"exact patching"}
    for level in ("neuron", "head"):
        sizes = {json.dumps(r["kept"]) for r in rows if r["level"] == level}
        assert len(sizes) == 1, level  # every method at the pruning circuit's size
    assert all(r["unseen frames"]["kl"] >= 0 for r in rows)
    assert record["n_test"]["unseen"] == record["n_test"]["test"] == 4
    assert record["held_out_vocabulary"]["templates"]
    assert (out / "baselines.html").stat().st_size > 1000
    assert "| neuron | default | pruning |" in capsys.readouterr().out
    assert all(r["sizing"] for r in rows if r["level"] == "neuron")  # the default sized it
    # the generalisation table reads the run: pruning beside the best non-random baseline
    load("baselines_table").main([str(out), "--json", str(tmp_path / "table.json")])
    (row,) = json.loads((tmp_path / "table.json").read_text())
    assert row["best_baseline"] in {"attribution patching", "integrated gradients"}
    assert row["kept"] == next(r["kept"] for r in rows if r["method"] == "pruning")
    assert f"| {row['model']} | ioi |" in capsys.readouterr().out


def test_corruptions_benchmark_runs_on_a_tiny_model(tmp_path, monkeypatch, capsys, task_model):
    bench = load("corruptions")
    monkeypatch.setattr(bench, "load_model", lambda name=None: task_model)
    out = tmp_path / "c"
    bench.main(["--n", "24", "--steps", "3", "--out", str(out)])
    record = json.loads((out / "corruptions.json").read_text())
    assert set(record["kept"]) == {"abc", "abb", "random"}
    assert len(record["cross"]) == 9 and len(record["jaccard"]) == 3
    for overlap in record["jaccard"].values():
        assert all(0 <= v <= 1 for v in overlap.values())
    assert "KL / recovered under abb" in capsys.readouterr().out


def test_convergence_benchmark_runs_on_a_tiny_model(tmp_path, monkeypatch, capsys, task_model):
    bench = load("convergence")
    monkeypatch.setattr(bench, "load_model", lambda name=None: task_model)
    out = tmp_path / "c"
    bench.main(["--tasks", "ioi", "gp", "--n", "24", "--set", "steps=10", "--out", str(out)])
    records = json.loads((out / "convergence.json").read_text())
    assert [r["task"] for r in records] == ["ioi", "gp"]
    for record in records:
        assert record["config"]["steps"] == 10 and record["config"]["schedule"]["decay"] == 0.6
        assert record["unseen_frames"]["kl"] >= 0  # judged on frames it never saw too
        rows = record["granularities"]
        assert set(rows) == {"head", "attn_neuron", "mlp_neuron"}
        sizing = record["sizing"]  # the default searched the size: 10 steps, then shorter fits
        assert sizing and record["target_scale"] in [r["scale"] for r in sizing]
        chosen_end = next(r["end"] for r in sizing if r["scale"] == record["target_scale"])
        assert all(len(h) == chosen_end for h in record["size_history"].values())
        assert all(row["target"] is not None and row["change"] >= 0 for row in rows.values())
    assert "| ioi | mlp_neuron |" in capsys.readouterr().out


@needs_hooked_transformer
def test_edge_pruning_benchmark_runs_on_a_tiny_model(tmp_path, monkeypatch, capsys, task_model):
    bench = load("edge_pruning")
    monkeypatch.setattr(bench, "load_model", lambda name=None: task_model)
    dims = ModelDims.from_cfg(task_model.cfg)
    heads = torch.zeros(dims.shape("head"), dtype=torch.bool)
    heads[:, 0] = True  # one head per layer: fewer writers than the whole model
    Circuit.from_kept(dims, {"head": heads}).save(tmp_path / "circuit.safetensors")
    out = tmp_path / "e"
    args = ["--circuit", str(tmp_path / "circuit.safetensors"), "--n", "40", "--n-unseen", "12"]
    args += ["--steps", "4", "--score-pairs", "8", "--sparsity", "0.5", "4"]
    bench.main([*args, "--out", str(out)])
    record = json.loads((out / "edges.json").read_text())
    rules = {r["rule"] for r in record["rows"]}
    assert rules == {"learned", "attribution", "random", "node circuit (every edge)"}
    assert {r["test"] for r in record["rows"]} == {"in-template", "unseen templates"}
    for sparsity in (0.5, 4.0):
        counts = {r["rule"]: r["edges"] for r in record["rows"] if r["sparsity"] == sparsity}
        assert counts["attribution"] == counts["random"] == max(1, counts["learned"])
    assert record["cost"] is None  # only with --cost
    assert (out / "edges.safetensors").is_file()
    assert "| 4.0 | unseen templates | learned |" in capsys.readouterr().out
    # the cost of each kind of step (--cost runs each in a process of its own)
    train = tasks.ioi(task_model, n=40)
    nodes = Circuit.load(tmp_path / "circuit.safetensors")
    cost = {kind: bench.measure_one(kind, task_model, nodes, train, 4) for kind in bench.COST_KINDS}
    every, ours = cost["edge step, every node kept"], cost["edge step, the circuit's nodes"]
    assert every["writers"] > ours["writers"] and every["edges"] > ours["edges"]
    assert all(c["seconds"] > 0 and c["peak_mib"] >= 0 for c in cost.values())
    bench.print_cost(cost)
    assert "| edge step, every node kept |" in capsys.readouterr().out


def test_sizing_benchmark_measures_every_rung(tmp_path, monkeypatch, capsys, task_model):
    bench = load("sizing")
    monkeypatch.setattr(bench, "load_model", lambda name=None: task_model)
    out = tmp_path / "s"
    bench.main(["--tasks", "ioi", "--n", "40", "--steps", "5", "--out", str(out)])
    (record,) = json.loads((out / "sizing.json").read_text())
    rungs = record["rungs"]
    assert 2 <= len(rungs) <= 3 and sum(r["chosen"] for r in rungs) == 1
    assert all(r["in-frame"]["kl"] >= 0 and r["unseen frames"]["kl"] >= 0 for r in rungs)
    assert record["level"]["kl"] == 0.2 and record["n_validation"] > 0
    assert "| ioi | x1 |" in capsys.readouterr().out


def test_positions_benchmark_compares_at_equal_node_position_counts(
    tmp_path, monkeypatch, capsys, task_model
):
    bench = load("positions")
    monkeypatch.setattr(bench, "load_model", lambda name=None: task_model)
    out = tmp_path / "p"
    argv = ["--task", "ioi", "--n", "40", "--steps", "4", "--score-pairs", "8", "--ig-steps", "2"]
    bench.main([*argv, "--out", str(out)])
    record = json.loads((out / "positions.json").read_text())
    assert record["slots"] == ["IO", "S1", "S1+1", "S2", "END", "other"]
    rows = {r["method"]: r for r in record["rows"]}
    per_role = rows["pruning per role"]
    for method in ("integrated gradients per role", "random per role"):
        assert rows[method]["kept"] == per_role["kept"]  # equal (node x slot) counts
    assert sum(per_role["per_slot"]["head"]) == per_role["kept"]["head"]
    agnostic = rows["pruning"]
    # a node without positions holds every slot: its counts are multiples of the six slots
    assert all(k % 6 == 0 for k in agnostic["kept"].values())
    assert set(agnostic["per_slot"]["head"]) == {agnostic["kept"]["head"] // 6}
    assert rows["integrated gradients"]["kept"] == agnostic["kept"]
    assert all(r[t]["kl"] >= 0 for r in rows.values() for t in ("in-frame", "unseen frames"))
    assert (out / "positions.html").stat().st_size > 1000
    assert "| pruning per role |" in capsys.readouterr().out
