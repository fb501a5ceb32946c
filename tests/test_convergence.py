import pytest
import torch

from transformer_lens_mgp import Circuit, ModelDims
from transformer_lens_mgp.analysis.convergence import relative_change, settling


def test_relative_change_reads_the_last_fifth():
    sizes = [1.0] * 79 + [0.5] * 11 + [0.4] * 10  # the size after step 79, then steps 80-99
    assert relative_change(sizes) == pytest.approx(0.25)  # 0.5 -> 0.4
    assert relative_change([0.3] * 50) == 0.0
    assert relative_change([0.2] * 10 + [0.0]) == 1.0
    assert relative_change([0.0] * 10) == 0.0


def test_settling_reports_kept_target_and_change_per_recorded_granularity():
    dims = ModelDims(n_layers=2, n_heads=2, d_head=2, d_mlp=4)
    circuit = Circuit(
        dims=dims,
        log_alpha={g: torch.ones(dims.shape(g)) for g in ("head", "mlp_neuron")},
        config={"target": {"head": 0.5}},
        history={"size/head": [1.0] * 7 + [0.8, 0.9, 1.0], "kl": [0.1] * 10},
    )
    (row,) = settling(circuit)  # mlp_neuron has no recorded size
    assert row.granularity == "head" and row.kept == 1.0 and row.target == 0.5
    assert row.change == pytest.approx(0.2)  # 0.8 at the start of the last fifth, 1.0 at the end
