"""The benchmark scripts run (on tiny configurations); their numbers are not asserted here."""

import importlib.util
import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_perf_benchmark_runs(tmp_path, monkeypatch, capsys):
    bench = load("perf")
    out = tmp_path / "perf.json"
    argv = ["perf.py", "--models", "tiny", "--batch", "2", "--seq", "6", "--steps", "1"]
    monkeypatch.setattr(sys, "argv", [*argv, "--json", str(out)])
    bench.main()
    (row,) = json.loads(out.read_text())["rows"]
    for mode in ("floor", "ours"):
        assert row[mode]["seconds_per_step"] > 0 and row[mode]["peak_mib"] >= 0, row[mode]
    assert "| tiny | 2 | 6 |" in capsys.readouterr().out
