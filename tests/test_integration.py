"""End to end on the embedded SmolLM2-135M: a short fit on IOI finds a circuit far smaller
than the model that predicts far better than a random circuit of the same size; the
examples run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_untouched, model_state

from transformer_lens_mgp import CircuitPruner, evaluate, random_circuit, tasks

pytestmark = pytest.mark.slow


def test_short_ioi_fit_beats_random_circuit_of_equal_size(smollm2):
    train, test = tasks.ioi(smollm2, n=96, seed=0).split(1 / 3, seed=0)
    before = model_state(smollm2)
    pruner = CircuitPruner(smollm2, sparsity={"head": 1.0, "attn_neuron": 1.0, "mlp_neuron": 2.0})
    circuit = pruner.fit(train, steps=40, batch_size=8, lr=0.2, progress=False)
    assert_untouched(smollm2, before)

    for g in ("head", "attn_neuron", "mlp_neuron"):
        assert circuit.fraction_kept(g) < 0.5, (g, circuit.fraction_kept(g))
    ours = evaluate(smollm2, circuit, test)
    theirs = evaluate(smollm2, random_circuit(circuit, seed=0), test)
    assert ours.kept == theirs.kept or all(theirs.kept[g] >= 0.5 * ours.kept[g] for g in ours.kept)
    assert ours.kl < 0.5 * theirs.kl, (ours.kl, theirs.kl)
    assert ours.recovered > theirs.recovered + 0.3, (ours.recovered, theirs.recovered)


@pytest.mark.parametrize(
    "script, args",
    [("ioi_quickstart.py", ["--n", "40", "--steps", "2"]), ("custom_task.py", ["--steps", "2"])],
)
def test_examples_run(script, args, tmp_path):
    examples = Path(__file__).parents[1] / "examples"
    extra = ["--out", str(tmp_path)] if script == "ioi_quickstart.py" else []
    done = subprocess.run(
        [sys.executable, str(examples / script), *args, *extra],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "kept" in done.stdout


def test_notebook_runs(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(Path(__file__).parents[1] / "examples" / "ioi_walkthrough.ipynb", 4)
    env = {"TL_MGP_NOTEBOOK_STEPS": "2", "TL_MGP_NOTEBOOK_PAIRS": "40"}
    setup = nbformat.v4.new_code_cell("import os\nos.environ.update(" + repr(env) + ")")
    notebook.cells.insert(0, setup)
    NotebookClient(notebook, timeout=600, resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert (tmp_path / "ioi_report.html").is_file()
