"""Files written atomically: safetensors holding tensors and JSON metadata (the format of
circuit and edge-circuit files), and text (JSON exports)."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from .errors import MissingFileError, UsageError


def write_safetensors(path: str | Path, tensors: dict, meta: dict, example: str) -> Path:
    """Write ``tensors`` with each ``meta`` entry as JSON metadata, atomically (see
    :func:`write_atomic`)."""
    metadata = {k: json.dumps(v) for k, v in meta.items()}
    return write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), example)


def write_atomic_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically (see :func:`write_atomic`)."""
    return write_atomic(path, lambda tmp: tmp.write_text(text), Path(path).name or "file.json")


def write_atomic(path: str | Path, write: Callable[[Path], object], example: str) -> Path:
    """Run ``write`` on a temporary file of a unique name beside ``path``, then move it into
    place: no file of the user's is touched, an existing file keeps its permissions, and a
    read-only file is never overwritten."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give the file's path, e.g. {path}/{example}")
    if path.exists() and not path.stat().st_mode & stat.S_IWUSR:
        raise UsageError(f"{path} is read-only; make it writable or save under another name")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        write(tmp)
        mode = path.stat().st_mode if path.exists() else 0o666 & ~_umask()
        os.chmod(tmp, stat.S_IMODE(mode))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_safetensors(path: str | Path, what: str) -> tuple[dict[str, Tensor], dict]:
    """The tensors of a file and its metadata entries parsed from JSON."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no {what} file at {path}")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
        meta = {k: json.loads(v) for k, v in raw.items()}
    except (SafetensorError, json.JSONDecodeError, OSError, ValueError) as err:
        raise UsageError(f"{path} is not a readable {what} file ({err})") from None
    return tensors, meta
