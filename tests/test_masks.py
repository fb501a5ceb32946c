import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer_lens_mgp import HardConcrete

hc = HardConcrete()


def test_samples_lie_in_unit_interval_with_exact_zeros_and_ones():
    log_alpha = torch.zeros(20_000)
    s = hc.sample(log_alpha, torch.Generator().manual_seed(0))
    assert s.min() >= 0 and s.max() <= 1
    assert (s == 0).any() and (s == 1).any()
    assert ((s > 0) & (s < 1)).any()


@pytest.mark.parametrize("value", [-3.0, -0.5, 0.0, 1.0, 4.0])
def test_expected_l0_matches_monte_carlo(value):
    log_alpha = torch.full((200_000,), value)
    s = hc.sample(log_alpha, torch.Generator().manual_seed(1))
    empirical = (s > 0).float().mean().item()
    assert math.isclose(hc.expected_l0(log_alpha)[0].item(), empirical, abs_tol=5e-3)


def test_gradients_flow_to_log_alpha():
    log_alpha = torch.zeros(1000, requires_grad=True)
    hc.sample(log_alpha, torch.Generator().manual_seed(0)).sum().backward()
    assert torch.isfinite(log_alpha.grad).all() and log_alpha.grad.abs().sum() > 0
    log_alpha.grad = None
    hc.expected_l0(log_alpha).sum().backward()
    assert (log_alpha.grad > 0).all()


@settings(max_examples=200, deadline=None)
@given(st.floats(-20, 20, allow_nan=False))
def test_deterministic_mask_exceeds_half_exactly_above_threshold(value):
    mask = hc.deterministic(torch.tensor(value, dtype=torch.float64)).item()
    assert 0 <= mask <= 1
    if abs(value - hc.keep_threshold) > 1e-9:
        assert (mask > 0.5) == (value > hc.keep_threshold)


def test_large_log_alpha_is_fully_on_and_small_fully_off():
    assert hc.deterministic(torch.tensor(3.0)).item() == 1.0
    assert hc.deterministic(torch.tensor(-3.0)).item() == 0.0
    s = hc.sample(torch.full((1000,), 10.0), torch.Generator().manual_seed(0))
    assert (s == 1).float().mean() > 0.99


def test_same_generator_seed_same_sample():
    la = torch.randn(100)
    a = hc.sample(la, torch.Generator().manual_seed(3))
    b = hc.sample(la, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_invalid_constants_rejected():
    with pytest.raises(ValueError, match="gamma"):
        HardConcrete(gamma=0.1)


@settings(max_examples=100, deadline=None)
@given(st.floats(-20, 20, allow_nan=False))
def test_kept_softly_tends_to_the_extraction_rule(value):
    log_alpha = torch.tensor([value])
    kept = (hc.deterministic(log_alpha) > 0.5).float()
    at_one = hc.kept_softly(log_alpha)
    sharp = hc.kept_softly(log_alpha, temperature=1e-3)
    assert torch.allclose(at_one, torch.sigmoid(log_alpha - hc.keep_threshold))
    if abs(value - hc.keep_threshold) > 0.05:
        assert torch.allclose(sharp, kept, atol=1e-6)
        assert (sharp - kept).abs() <= (at_one - kept).abs()
