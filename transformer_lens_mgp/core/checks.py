"""Checks every entry point shares, so a wrong argument fails the same way everywhere and
before any work (a path is checked before the job that writes to it, not at its end)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch

from .errors import UsageError


def check_writable_folder(path: str | Path, what: str) -> Path:
    """``path`` as a folder that exists or can be made and written, creating nothing; else
    a clear error naming ``what`` it is for (e.g. ``"--out"``, ``"checkpoint_dir"``)."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == path else f"lies under the file {existing}"
        raise UsageError(f"{what} {path} {where}; give a folder")
    try:  # by writing: os.access says yes to root on a read-only mount or folder
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise UsageError(
            f"{what} {path} cannot be written ({existing}: {err.strerror or err})"
        ) from None
    return path


def is_int(value) -> bool:
    """An integer, and not a bool (``steps=True`` is a mistake, not one step)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_finite(value) -> bool:
    """A number that is neither inf nor NaN (and not a bool)."""
    return is_number(value) and math.isfinite(value)


def check_positive_int(name: str, value) -> None:
    if not is_int(value) or value < 1:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")


def check_device(device: str | None) -> None:
    """A device name this machine has (None: the default)."""
    if device is None:
        return
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise UsageError(f"--device {device!r} is not a device name (e.g. cpu, cuda)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: this machine has no CUDA device; use --device cpu")
