import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import build_dataset, build_model

import transformer_lens_mgp.pruner as pruner_module
from transformer_lens_mgp import CircuitPruner
from transformer_lens_mgp.checkpoint import CHECKPOINT_NAME

TESTS = Path(__file__).parent


def assert_same_circuit(a, b):
    for g in a.granularities:
        assert torch.equal(a.log_alpha[g], b.log_alpha[g]), g
    assert a.history == b.history


@pytest.mark.parametrize(
    "settings",
    [{}, {"target": {"mlp_neuron": 0.3}}, {"max_kl": 0.05}],
    ids=["lambda", "target", "max_kl"],
)
def test_resume_after_interrupt_matches_uninterrupted_fit(tmp_path, monkeypatch, settings):
    model = build_model()
    ds = build_dataset(model)
    reference = CircuitPruner(model, seed=4, **settings).fit(ds, steps=20, progress=False)

    calls = []
    real_kl = pruner_module.kl_divergence

    def interrupt_at_step_13(*args):
        calls.append(torch.is_grad_enabled())  # training steps only
        if sum(calls) == 13:
            raise KeyboardInterrupt
        return real_kl(*args)

    monkeypatch.setattr(pruner_module, "kl_divergence", interrupt_at_step_13)
    with pytest.raises(KeyboardInterrupt):
        CircuitPruner(model, seed=4, **settings).fit(
            ds, steps=20, progress=False, checkpoint_dir=tmp_path, checkpoint_every=5
        )
    monkeypatch.setattr(pruner_module, "kl_divergence", real_kl)
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["step"] == 10
    resumed = CircuitPruner(model, seed=4, **settings).fit(
        ds, steps=20, progress=False, checkpoint_dir=tmp_path, resume=True
    )
    assert_same_circuit(resumed, reference)


def test_resume_refuses_a_checkpoint_of_another_fit(tmp_path):
    model = build_model()
    ds = build_dataset(model)
    CircuitPruner(model, seed=1).fit(ds, steps=5, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="different fit.*seed"):
        CircuitPruner(model, seed=2).fit(
            ds, steps=5, progress=False, checkpoint_dir=tmp_path, resume=True
        )


def test_damaged_checkpoint_and_missing_dir_get_clear_errors(tmp_path):
    model = build_model()
    ds = build_dataset(model)
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="delete it"):
        CircuitPruner(model).fit(ds, steps=5, progress=False, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        CircuitPruner(model).fit(ds, steps=5, progress=False, resume=True)


KILLED_FIT = """
import sys
sys.path.insert(0, {tests!r})
from conftest import build_dataset, build_model
from transformer_lens_mgp import CircuitPruner
model = build_model()
CircuitPruner(model, seed=7).fit(build_dataset(model), steps=100000, progress=False,
                                 checkpoint_dir={ckpt!r}, checkpoint_every=5)
"""


def test_sigkill_loses_at_most_the_steps_since_the_last_checkpoint(tmp_path):
    script = KILLED_FIT.format(tests=str(TESTS), ckpt=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script])
    path = tmp_path / CHECKPOINT_NAME
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if path.exists() and torch.load(path, weights_only=True)["step"] >= 15:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the fit never wrote a checkpoint")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = torch.load(path, weights_only=True)
    saved = state["step"]
    assert saved % 5 == 0 and len(state["history"]["kl"]) == saved

    model = build_model()
    ds = build_dataset(model)
    resumed = CircuitPruner(model, seed=7).fit(
        ds, steps=saved + 5, progress=False, checkpoint_dir=tmp_path, resume=True
    )
    reference = CircuitPruner(model, seed=7).fit(ds, steps=saved + 5, progress=False)
    assert_same_circuit(resumed, reference)
