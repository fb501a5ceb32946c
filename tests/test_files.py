"""core.files: one safetensors file written atomically, without touching the user's files."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from transformer_lens_mgp import Circuit, ModelDims

DIMS = ModelDims(n_layers=2, n_heads=3, d_head=2, d_mlp=4)


def circuit() -> Circuit:
    return Circuit.from_kept(DIMS, {"head": torch.ones(2, 3, dtype=torch.bool)})


def test_a_file_of_the_temporary_name_a_user_keeps_is_left_alone(tmp_path):
    mine = tmp_path / "c.safetensors.tmp"
    mine.write_text("my notes")
    path = circuit().save(tmp_path / "c.safetensors")
    assert mine.read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors", "c.safetensors.tmp"]
    assert Circuit.load(path).n_kept("head") == 6


def test_saving_again_keeps_the_file_s_permissions(tmp_path):
    path = circuit().save(tmp_path / "c.safetensors")
    os.chmod(path, 0o640)
    circuit().save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_read_only_file_is_not_replaced(tmp_path):
    path = circuit().save(tmp_path / "c.safetensors")
    before = path.read_bytes()
    os.chmod(path, 0o444)
    with pytest.raises(ValueError, match="read-only"):
        circuit().save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


def test_a_circuit_file_without_masks_is_refused_when_read(tmp_path):
    meta = circuit().file_parts()[1]
    path = tmp_path / "empty.safetensors"
    save_file({}, str(path), metadata={"transformer_lens_mgp": json.dumps(meta)})
    with pytest.raises(ValueError, match="holds no masks"):
        Circuit.load(path)
