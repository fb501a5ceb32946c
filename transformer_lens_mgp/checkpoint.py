"""Atomic training checkpoints: a killed process loses at most the steps since the last one."""

from __future__ import annotations

import os
from pathlib import Path

import torch

CHECKPOINT_NAME = "checkpoint.pt"
RESUME_KEYS = (
    "granularities",
    "sparsity",
    "target",
    "target_warmup",
    "ablation",
    "seed",
    "init_log_alpha",
    "batch_size",
    "lr",
    "dataset",
    "n_pairs",
    "dims",
    "max_kl",
    "n_validation",
    "eval_every",
    "bf16",
)


def save_checkpoint(path: Path, state: dict) -> None:
    """Write to a temporary file, flush it to disk, then rename over the old checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, config: dict) -> dict | None:
    """The saved state, or None if there is none; refuses one made by a different fit."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged file: say which and how to recover
        raise ValueError(
            f"cannot read checkpoint {path} ({err}); delete it to start over"
        ) from None
    saved = state.get("config", {})
    differs = [k for k in RESUME_KEYS if saved.get(k) != config.get(k)]
    if differs:
        raise ValueError(
            f"checkpoint {path} belongs to a different fit ({', '.join(differs)} differ: "
            f"{ {k: saved.get(k) for k in differs} } vs { {k: config.get(k) for k in differs} }); "
            "use another checkpoint_dir or resume=False"
        )
    return state
