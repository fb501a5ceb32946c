"""Side environments for peers whose dependencies cannot live beside ours (auto-circuit needs
TransformerLens 2.x, tracr needs JAX): created on first use, reused after."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

TIMEOUT_S = 1800


def ensure_venv(
    folder: Path, requirements: Sequence[Sequence[str]], install: bool = True
) -> str | None:
    """Make ``folder`` a venv with each group of ``requirements`` installed in order (torch
    first, pinned, so that pip never fetches a CUDA build); returns why it could not be
    done, or None once it is there."""
    marker = folder / "installed.txt"
    wanted = "\n".join(" ".join(group) for group in requirements) + "\n"
    if marker.is_file() and marker.read_text() == wanted:
        return None
    if not install:
        return f"no side environment at {folder} (run without --no-install to create it)"
    pip = [str(python(folder)), "-m", "pip", "install", "-q"]
    commands = [[sys.executable, "-m", "venv", str(folder)]]
    commands += [[*pip, *group] for group in requirements]
    for cmd in commands:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as err:
            return f"`{' '.join(cmd)}` failed: {err}"
        if done.returncode != 0:
            return f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-1500:]}"
    marker.write_text(wanted)
    return None


def python(folder: Path) -> Path:
    return folder / "bin" / "python"
