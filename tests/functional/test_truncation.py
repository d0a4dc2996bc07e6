"""Truncation bias maths (Aicher et al. 2019) against closed forms on constructed per-lag curves."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_rnn.functional import choose_truncation, fit_geometric_tail, truncation_bias


def geometric(r: float, lags: int, dtype=torch.float64) -> torch.Tensor:
    return (r ** torch.arange(lags + 1, dtype=torch.float64)).to(dtype)


@pytest.mark.parametrize("r", [0.3, 0.6, 0.85, 0.97])
def test_bias_of_geometric_curve_is_r_pow_k_plus_1(r):
    # measured up to M = 30, evaluated up to 80: inside and beyond the measured lags
    b = truncation_bias(geometric(r, 30), 80)
    expected = r ** torch.arange(1, 82, dtype=torch.float64)
    torch.testing.assert_close(b, expected, rtol=1e-6, atol=1e-300)


@pytest.mark.parametrize("r,bound", [(0.5, 0.1), (0.8, 0.1), (0.9, 0.05), (0.95, 0.01), (0.7, 0.3)])
def test_choice_matches_closed_form(r, bound):
    # smallest K with r^(K+1) < bound: K = floor(log(bound) / log(r)) (the ratio is not an integer here)
    x = math.log(bound) / math.log(r)
    assert x != int(x)
    expected = math.floor(x)
    choice = choose_truncation(geometric(r, 20), bound, min_steps=1, max_steps=500)
    assert choice.steps == expected
    assert choice.reached
    assert choice.bias == pytest.approx(r ** (expected + 1), rel=1e-6)
    assert choice.tail.rate == pytest.approx(r, rel=1e-9)


def test_choice_extrapolates_beyond_measured_lags():
    # only 10 lags measured, but r = 0.9 needs K = 21 for a 0.1 bound: the fitted tail decides
    choice = choose_truncation(geometric(0.9, 10), 0.1, min_steps=1, max_steps=100)
    assert choice.steps == 21


def test_flat_and_growing_curves_give_max_steps():
    for curve in (torch.ones(50), 1.01 ** torch.arange(50.0)):
        choice = choose_truncation(curve, 0.1, min_steps=5, max_steps=200)
        assert choice.steps == 200 and not choice.reached
        assert choice.tail.rate >= 1.0 - 1e-9
        assert torch.all(choice.biases == 1.0)


def test_fast_decay_gives_min_steps():
    choice = choose_truncation(geometric(0.05, 40), 0.1, min_steps=5, max_steps=200)
    assert choice.steps == 5 and choice.reached
    # bound within the measured range but below min_steps: still min_steps
    assert choose_truncation(geometric(0.5, 40), 0.2, min_steps=7, max_steps=9).steps == 7


def test_slow_decay_clamped_to_max_steps():
    choice = choose_truncation(geometric(0.99, 50), 0.1, min_steps=1, max_steps=100)
    assert choice.steps == 100 and not choice.reached
    assert choice.bias == pytest.approx(0.99**101, rel=1e-6)


def test_underflowed_zeros_do_not_break_the_fit():
    # float32 0.3^k underflows to 0 after ~85 lags: the tail half of 200 lags is all zeros
    curve = geometric(0.3, 200, torch.float32)
    assert int((curve == 0).sum()) > 100
    tail = fit_geometric_tail(curve)
    assert tail.rate == pytest.approx(0.3, rel=1e-4)
    assert choose_truncation(curve, 0.1, 1, 200).steps == math.floor(math.log(0.1) / math.log(0.3))


def test_all_lags_vanished_gives_zero_rate():
    curve = torch.tensor([1.0, 0.0, 0.0, 0.0])
    tail = fit_geometric_tail(curve)
    assert tail.rate == 0.0 and tail.num_points == 0
    assert torch.all(truncation_bias(curve, 10) == 0.0)
    assert choose_truncation(curve, 0.1, 3, 10).steps == 3


def test_robust_to_noise_and_outliers():
    g = torch.Generator().manual_seed(0)
    r = 0.8
    curve = geometric(r, 80) * torch.exp(0.2 * torch.randn(81, generator=g, dtype=torch.float64))
    curve[50] = 10.0  # a wild outlier in the tail
    curve[60] = float("nan")  # a lag no target reached
    tail = fit_geometric_tail(curve)
    assert tail.rate == pytest.approx(r, rel=0.03)
    assert tail.num_points == 39  # lags 41..80, minus the NaN one


def test_fit_on_tail_only_ignores_transient_head():
    # a fast transient over the first lags, then geometric decay r = 0.9: the tail fit sees only the latter
    curve = geometric(0.9, 60)
    curve[1:5] = curve[1:5] * 0.1
    tail = fit_geometric_tail(curve, tail_fraction=0.5)
    assert tail.rate == pytest.approx(0.9, rel=1e-9)
    assert tail.start == 31


def test_nan_lags_use_the_fitted_tail_in_the_bias():
    r = 0.7
    full = geometric(r, 30)
    holed = full.clone()
    holed[25] = float("nan")
    torch.testing.assert_close(truncation_bias(holed, 40), truncation_bias(full, 40))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(1e-6, 10.0), min_size=3, max_size=40), st.integers(0, 60))
def test_bias_is_a_non_increasing_fraction(values, max_steps):
    curve = torch.tensor([1.0] + values, dtype=torch.float64)
    b = truncation_bias(curve, max_steps)
    assert b.shape == (max_steps + 1,)
    assert torch.all((b >= 0) & (b <= 1))
    assert torch.all(b[1:] <= b[:-1] + 1e-12)


def test_bad_input():
    curve = geometric(0.5, 10)
    with pytest.raises(ValueError, match="bias_bound"):
        choose_truncation(curve, 1.0)
    with pytest.raises(ValueError, match="bias_bound"):
        choose_truncation(curve, 0.0)
    with pytest.raises(ValueError, match="min_steps <= max_steps"):
        choose_truncation(curve, 0.1, min_steps=10, max_steps=5)
    with pytest.raises(ValueError, match="min_steps"):
        choose_truncation(curve, 0.1, min_steps=0)
    with pytest.raises(ValueError, match="G\\(0\\)"):
        fit_geometric_tail(torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="shape"):
        fit_geometric_tail(torch.ones(2, 3))
    with pytest.raises(ValueError, match="shape"):
        fit_geometric_tail(torch.ones(1))
    with pytest.raises(TypeError, match="Tensor"):
        fit_geometric_tail([1.0, 0.5])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tail_fraction"):
        fit_geometric_tail(curve, tail_fraction=1.5)
    with pytest.raises(ValueError, match="max_steps"):
        truncation_bias(curve, -1)
