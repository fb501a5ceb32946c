"""Atomic training checkpoints: a killed process loses at most the steps since the last one.

A checkpoint holds a run's whole state and the identity of the fit it belongs to: the
config, the model's sizes, fingerprints of its weights and of the training and validation
pairs. Resuming
with anything different is refused, naming what differs.
"""

from __future__ import annotations

import hashlib
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..core.checks import check_writable_folder
from ..core.data import PairedDataset
from ..core.errors import UsageError
from ..core.model_api import model_fingerprint

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = 2


def dataset_fingerprint(dataset: PairedDataset | None) -> str | None:
    """A digest of the pairs' tensors and metric: equal only for the same pairs (token roles,
    which no fit reads, do not count)."""
    if dataset is None:
        return None
    digest = hashlib.sha256(dataset.metric.encode())
    for name, tensor in sorted(dataset._tensors().items()):
        if name == "role_positions":
            continue
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().long().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def fit_identity(
    model, config, dims, train: PairedDataset, validation: PairedDataset | None
) -> dict:
    """What makes two fits the same fit: a checkpoint of one resumes only the other. Every
    setting counts but ``checkpoint_every``, which changes how often the run is saved, not
    what it computes."""
    settings = config.to_dict()
    settings.pop("checkpoint_every")
    return {
        "config": settings,
        "dims": dims.to_dict(),
        "model": model_fingerprint(model),
        "train": dataset_fingerprint(train),
        "validation": dataset_fingerprint(validation),
    }


def checkpoint_path(folder: str | Path) -> Path:
    """Where a fit checkpoints in ``folder``, checked now rather than at the first
    checkpoint: the folder can be written, and a ``checkpoint.pt`` already there is one of
    ours (a file of the same name that is not is never overwritten)."""
    path = check_writable_folder(folder, "checkpoint_dir") / CHECKPOINT_NAME
    if path.exists() and _read(path) is None:
        raise UsageError(
            f"{path} is not a checkpoint of transformer-lens-mgp (or is damaged) and would be "
            "overwritten; move or delete it, or give another checkpoint_dir"
        )
    return path


def _read(path: Path) -> dict | None:
    """The checkpoint at ``path``, or None when the file is not one of ours."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a torch file, or one holding objects we never write
        return None
    ours = isinstance(saved, dict) and {"format", "identity", "state"} <= set(saved)
    return saved if ours else None


def save_checkpoint(path: Path, identity: dict, state: dict) -> None:
    """Write to a temporary file, flush it to disk, then rename over the old checkpoint. A
    Ctrl-C meanwhile is held until the file is complete (a checkpoint write is short), then
    raised as the KeyboardInterrupt it is; no temporary file is left either way."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with _interrupt_deferred(), os.fdopen(handle, "wb") as f:
            torch.save({"format": FORMAT, "identity": identity, "state": state}, f)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def _interrupt_deferred() -> Iterator[None]:
    """SIGINT (Ctrl-C) recorded during the block and raised after it (main thread only:
    elsewhere signals cannot be handled and nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def load_checkpoint(path: Path, identity: dict) -> dict | None:
    """The saved run state, or None if there is none; refuses one made by a different fit."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged file: say which and how to recover
        raise UsageError(
            f"cannot read checkpoint {path} ({err}); delete it to start over"
        ) from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise UsageError(
            f"checkpoint {path} was written by another version of transformer-lens-mgp; "
            "delete it to start over, or use another checkpoint_dir"
        )
    differs = _differences(saved["identity"], identity)
    if differs:
        raise UsageError(
            f"checkpoint {path} belongs to a different fit ({'; '.join(differs)}); "
            "use another checkpoint_dir or resume=False"
        )
    return saved["state"]


def _differences(saved: dict, wanted: dict, prefix: str = "") -> list[str]:
    """``key: saved -> wanted`` for every leaf that differs."""
    out = []
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out
