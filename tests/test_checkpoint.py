import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import transformer_lens_mgp.training.run as run_module
from transformer_lens_mgp import CircuitPruner, HardConcrete
from transformer_lens_mgp.testing.tiny import build_dataset, build_model
from transformer_lens_mgp.training.checkpoint import CHECKPOINT_NAME


def assert_same_circuit(a, b):
    for g in a.granularities:
        assert torch.equal(a.log_alpha[g], b.log_alpha[g]), g
    assert a.history == b.history


@pytest.mark.parametrize(
    "settings",
    [{}, {"target": {"mlp_neuron": 0.3}}, {"sparsity": {"head": 0.5}}, {"max_kl": 0.05}],
    ids=["default", "target", "lambda", "max_kl"],
)
def test_resume_after_interrupt_matches_uninterrupted_fit(tmp_path, monkeypatch, settings):
    model = build_model()
    ds = build_dataset(model)
    reference = CircuitPruner(model, seed=4, **settings, steps=20).fit(ds, progress=False)

    calls = []
    real_kl = run_module.kl_divergence

    def interrupt_at_step_13(*args):
        calls.append(torch.is_grad_enabled())  # training steps only
        if sum(calls) == 13:
            raise KeyboardInterrupt
        return real_kl(*args)

    monkeypatch.setattr(run_module, "kl_divergence", interrupt_at_step_13)
    with pytest.raises(KeyboardInterrupt):
        CircuitPruner(model, seed=4, **settings, steps=20, checkpoint_every=5).fit(
            ds, progress=False, checkpoint_dir=tmp_path
        )
    monkeypatch.setattr(run_module, "kl_divergence", real_kl)
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["state"]
    assert state["run"]["step"] == 10
    resumed = CircuitPruner(model, seed=4, **settings, steps=20).fit(
        ds, progress=False, checkpoint_dir=tmp_path, resume=True
    )
    assert_same_circuit(resumed, reference)


def test_resume_refuses_a_checkpoint_of_another_fit(tmp_path):
    model = build_model()
    ds = build_dataset(model)
    CircuitPruner(model, seed=1, steps=5).fit(ds, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="different fit.*seed"):
        CircuitPruner(model, seed=2, steps=5).fit(
            ds, progress=False, checkpoint_dir=tmp_path, resume=True
        )


def test_damaged_checkpoint_and_missing_dir_get_clear_errors(tmp_path):
    model = build_model()
    ds = build_dataset(model)
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="delete it"):
        CircuitPruner(model, steps=5).fit(ds, progress=False, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        CircuitPruner(model, steps=5).fit(ds, progress=False, resume=True)


KILLED_FIT = """
import sys
from transformer_lens_mgp import CircuitPruner
from transformer_lens_mgp.testing.tiny import build_dataset, build_model
model = build_model()
pruner = CircuitPruner(model, seed=7, steps=KILLED_STEPS, checkpoint_every=5)
pruner.fit(build_dataset(model), progress=False, checkpoint_dir={ckpt!r})
"""
KILLED_STEPS = 300


def test_sigkill_loses_at_most_the_steps_since_the_last_checkpoint(tmp_path):
    script = KILLED_FIT.format(ckpt=str(tmp_path)).replace("KILLED_STEPS", str(KILLED_STEPS))
    proc = subprocess.Popen([sys.executable, "-c", script])
    path = tmp_path / CHECKPOINT_NAME
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if path.exists() and torch.load(path, weights_only=True)["state"]["run"]["step"] >= 15:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the fit never wrote a checkpoint")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = torch.load(path, weights_only=True)["state"]["run"]
    saved = state["step"]
    assert saved % 5 == 0 and len(state["history"]["kl"]) == saved

    model = build_model()
    ds = build_dataset(model)
    resumed = CircuitPruner(model, seed=7, steps=KILLED_STEPS).fit(
        ds, progress=False, checkpoint_dir=tmp_path, resume=True
    )
    reference = CircuitPruner(model, seed=7, steps=KILLED_STEPS).fit(ds, progress=False)
    assert_same_circuit(resumed, reference)


@pytest.mark.parametrize(
    "change, named",
    [
        ({"steps": 8}, "config.steps: 5 -> 8"),
        ({"hard_concrete": HardConcrete(beta=0.5)}, "config.hard_concrete.beta"),
        ({"lr": 0.2}, "config.lr"),
    ],
)
def test_resume_refuses_other_settings_and_names_them(tmp_path, change, named):
    """Warm-up and hold lengths depend on steps, the gates on their constants: a resume
    with other values would silently be another fit."""
    model = build_model()
    ds = build_dataset(model)
    CircuitPruner(model, steps=5).fit(ds, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=re.escape(named)):
        CircuitPruner(model, **{"steps": 5, **change}).fit(
            ds, progress=False, checkpoint_dir=tmp_path, resume=True
        )


def test_resume_refuses_other_pairs_of_the_same_size(tmp_path):
    model = build_model()
    CircuitPruner(model, steps=5).fit(build_dataset(model), progress=False, checkpoint_dir=tmp_path)
    other = build_dataset(model, seed=1)
    with pytest.raises(ValueError, match="train"):
        CircuitPruner(model, steps=5).fit(
            other, progress=False, checkpoint_dir=tmp_path, resume=True
        )


def test_checkpoint_every_may_change_on_resume(tmp_path):
    model = build_model()
    ds = build_dataset(model)
    CircuitPruner(model, steps=6, checkpoint_every=3).fit(
        ds, progress=False, checkpoint_dir=tmp_path
    )
    resumed = CircuitPruner(model, steps=6, checkpoint_every=2).fit(
        ds, progress=False, checkpoint_dir=tmp_path, resume=True
    )
    assert_same_circuit(resumed, CircuitPruner(model, steps=6).fit(ds, progress=False))


def test_resume_refuses_a_model_with_two_heads_swapped(tmp_path):
    """The weights' fingerprint is a hash of their bytes: the same sizes, sums and norms
    with two heads' W_O swapped are another model."""
    model = build_model()
    ds = build_dataset(model)
    CircuitPruner(model, steps=5).fit(ds, progress=False, checkpoint_dir=tmp_path)
    name, weight = next(  # a weight matrix (the embeddings may have equal rows)
        (n, p) for n, p in model.named_parameters() if p.dim() >= 2 and "W_E" not in n
    )
    with torch.no_grad():
        weight[[0, 1]] = weight[[1, 0]].clone()  # the same sum and norm
    with pytest.raises(ValueError, match="model"):
        CircuitPruner(model, steps=5).fit(ds, progress=False, checkpoint_dir=tmp_path, resume=True)


def test_a_file_of_ours_name_that_is_not_ours_is_never_overwritten(tmp_path):
    mine = tmp_path / CHECKPOINT_NAME
    mine.write_text("my own notes")
    model = build_model()
    with pytest.raises(ValueError, match="not a checkpoint of transformer-lens-mgp"):
        CircuitPruner(model, steps=2).fit(
            build_dataset(model), progress=False, checkpoint_dir=tmp_path
        )
    assert mine.read_text() == "my own notes"


def test_ctrl_c_during_a_checkpoint_write_stays_a_keyboard_interrupt(tmp_path, monkeypatch):
    """SIGINT in the middle of writing the file is held until the file is whole, then raised
    as KeyboardInterrupt; the checkpoint is complete and no temporary file is left."""
    import os

    import transformer_lens_mgp.training.checkpoint as checkpoint_module

    real_save = torch.save

    def interrupted_save(obj, f):
        os.kill(os.getpid(), signal.SIGINT)
        real_save(obj, f)

    monkeypatch.setattr(checkpoint_module.torch, "save", interrupted_save)
    model = build_model()
    with pytest.raises(KeyboardInterrupt):
        CircuitPruner(model, steps=4, checkpoint_every=2).fit(
            build_dataset(model), progress=False, checkpoint_dir=tmp_path
        )
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]
    monkeypatch.undo()
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert state["state"]["run"]["step"] == 2


def test_a_checkpoint_folder_that_cannot_be_written_is_found_by_writing(tmp_path, monkeypatch):
    """Root passes os.access on a read-only folder: the check writes a file instead."""
    import tempfile

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refused)
    model = build_model()
    with pytest.raises(ValueError, match="cannot be written.*Permission denied"):
        CircuitPruner(model, steps=2).fit(
            build_dataset(model), progress=False, checkpoint_dir=tmp_path / "ckpt"
        )
