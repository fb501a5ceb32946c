"""compare: the overlap of two circuits of one model, per granularity and by head."""

from __future__ import annotations

import pytest
import torch

from transformer_lens_mgp import Circuit, ModelDims, compare
from transformer_lens_mgp.analysis.plotting import plot_head_comparison

DIMS = ModelDims(n_layers=2, n_heads=3, d_head=2, d_mlp=4)


def heads(*kept: tuple[int, int]) -> Circuit:
    mask = torch.zeros(2, 3, dtype=torch.bool)
    for layer, head in kept:
        mask[layer, head] = True
    return Circuit.from_kept(DIMS, {"head": mask, "mlp": torch.tensor([True, False])})


def test_overlap_per_granularity_and_by_head():
    a, b = heads((0, 0), (0, 1), (1, 2)), heads((0, 1), (1, 0))
    result = compare(a, b, ("ioi", "gp"))
    assert result.overlap["head"].kept_a == 3 and result.overlap["head"].kept_b == 2
    assert result.overlap["head"].shared == 1
    assert result.overlap["head"].jaccard == pytest.approx(1 / 4)
    assert result.overlap["mlp"].jaccard == 1.0  # both keep the MLP of layer 0 only
    assert result.shared_heads == ["L0.H1"]
    assert result.only_a_heads == ["L0.H0", "L1.H2"] and result.only_b_heads == ["L1.H0"]
    assert "Jaccard" in result.table() and result.to_dict()["names"] == ("ioi", "gp")


def test_a_circuit_compared_with_itself_overlaps_fully():
    a = heads((0, 2), (1, 1))
    assert all(o.jaccard == 1.0 for o in compare(a, a).overlap.values())
    assert compare(a, a).only_a_heads == []


def test_circuits_of_models_of_different_sizes_are_refused():
    other = Circuit.from_kept(ModelDims(3, 3, 2, 4), {"head": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="different sizes"):
        compare(heads((0, 0)), other)


def test_the_head_comparison_figure_codes_each_head():
    a, b = heads((0, 0), (0, 1)), heads((0, 1), (1, 2))
    figure = plot_head_comparison(a, b, ("A", "B"))
    assert figure.data[0].z.tolist() == [[1, 3, 0], [0, 0, 2]]
    assert "1 shared" in figure.layout.title.text


@pytest.mark.parametrize("names", [("one",), "ab", ("a", "b", "c")])
def test_names_label_exactly_two_circuits(names):
    with pytest.raises(ValueError, match="give two"):
        compare(heads((0, 0)), heads((0, 1)), names=names)
