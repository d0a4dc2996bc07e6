"""Truncation bias of TBPTT from a per-lag gradient curve, and the truncation length that bounds it.

Aicher, Foti & Fox 2019 ("Adaptively Truncating Backpropagation Through Time to Control Gradient Bias")
choose the truncation length K of TBPTT from the measured decay of G(k) = ‖∂L_t/∂h_{t−k}‖ (see
:func:`~lightning_rnn.functional.per_lag_gradient_norms`). Truncating at K keeps the lags 0..K and drops
the rest, so the relative bias of the truncated gradient is estimated by

    bias(K) = Σ_{k>K} G(k) / Σ_{k>=0} G(k).

A probe measures G only up to a finite lag M; beyond it the curve is extrapolated with a geometric tail
G(k) ≈ a·r^k fitted to the measured tail (log G(k) linear in k; Theil–Sen, so robust to noise, outliers
and underflowed zeros). With r < 1 the unmeasured mass is a·r^(M+1)/(1−r); with r >= 1 it is infinite and
every finite K has bias 1. For a pure geometric curve G(k) = r^k this gives bias(K) = r^(K+1) exactly.

Pure PyTorch; no lightning import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_rnn._validation import check_float, check_int

__all__ = ["GeometricTail", "TruncationChoice", "choose_truncation", "fit_geometric_tail", "truncation_bias"]


@dataclass(frozen=True)
class GeometricTail:
    """A geometric fit G(k) ≈ exp(log_scale)·rate^k of the tail of a per-lag curve.

    Attributes:
        rate: r >= 0, the per-step decay factor (r >= 1: no decay, the tail mass is infinite).
        log_scale: log a, in the units of the curve passed to :func:`fit_geometric_tail`.
        start: first lag of the points the fit used.
        num_points: how many (lag, value) points the fit used (0: nothing above the vanishing floor,
            ``rate`` is 0).
    """

    rate: float
    log_scale: float
    start: int
    num_points: int

    def __call__(self, lags: Tensor) -> Tensor:
        """G(k) of the fit at ``lags`` (float64)."""
        lags = lags.double()
        if self.rate <= 0.0:
            return torch.zeros_like(lags)
        return torch.exp(self.log_scale + lags * math.log(self.rate))


@dataclass(frozen=True)
class TruncationChoice:
    """The result of :func:`choose_truncation`.

    Attributes:
        steps: the chosen truncation length K.
        bias: the estimated relative bias at ``steps`` (in [0, 1]; NaN when the curve is unusable).
        reached: whether ``bias < bias_bound`` (False: ``steps`` is ``max_steps`` and the bound is not met).
        tail: the geometric tail fitted to the curve.
        biases: ``(max_steps + 1,)`` float64, bias(K) for K = 0..max_steps.
    """

    steps: int
    bias: float
    reached: bool
    tail: GeometricTail
    biases: Tensor


def _check_curve(curve: Tensor) -> Tensor:
    if not isinstance(curve, Tensor):
        raise TypeError(f"Expected curve to be a Tensor, got {type(curve).__name__}")
    if curve.dim() != 1 or curve.numel() < 2:
        raise ValueError(f"Expected curve of shape (M+1,) with M >= 1 measured lags, got {list(curve.shape)}")
    return curve.detach().double().cpu()


def _check_fraction(name: str, value: float) -> None:
    check_float(name, value, min=0.0, max=1.0, min_inclusive=False, max_inclusive=False)


def _theil_sen(x: Tensor, y: Tensor) -> tuple[float, float]:
    """Median of pairwise slopes and median intercept (robust straight-line fit)."""
    i, j = torch.triu_indices(x.numel(), x.numel(), offset=1)
    slope = float(((y[j] - y[i]) / (x[j] - x[i])).median())
    intercept = float((y - slope * x).median())
    return slope, intercept


def fit_geometric_tail(curve: Tensor, *, tail_fraction: float = 0.5, floor: float = 1e-12) -> GeometricTail:
    """Fit G(k) ≈ a·r^k to the tail of a per-lag curve.

    The tail is the last ``tail_fraction`` of the measured lags (at least two, never lag 0). NaN lags (no
    target reached them) are ignored. Lags whose value is below ``floor``·G(0) (or zero: underflow) have
    vanished; they are left out of the fit, and when fewer than two tail lags remain the fit uses every
    non-vanished lag >= 1 instead (the decay measured before the curve vanished). The slope of log G(k)
    over k is the Theil–Sen estimate (median of pairwise slopes), robust to noise and outliers.

    Args:
        curve: ``(M+1,)`` G(k) for k = 0..M (absolute or normalised; only ratios matter).
        tail_fraction: share of the measured lags that form the tail, in (0, 1).
        floor: relative level below which a lag counts as vanished, in (0, 1).

    Inputs:
        curve: (M+1,).

    Outputs:
        A :class:`GeometricTail`. ``rate`` is 0 when no lag >= 1 is above the floor (the gradient vanishes
        within one step); a curve with G(0) <= 0 or non-finite raises.

    Example::

        >>> tail = fit_geometric_tail(0.5 ** torch.arange(20.0))
        >>> round(tail.rate, 6), round(tail.log_scale, 6)
        (0.5, 0.0)
    """
    g = _check_curve(curve)
    _check_fraction("tail_fraction", tail_fraction)
    _check_fraction("floor", floor)
    g0 = float(g[0])
    if not math.isfinite(g0) or g0 <= 0.0:
        raise ValueError(f"Expected curve[0] = G(0) to be finite and > 0, got {g0}")
    m = g.numel() - 1
    lags = torch.arange(m + 1, dtype=torch.float64)
    alive = torch.isfinite(g) & (g > floor * g0)
    alive[0] = False  # lag 0 is a different quantity (only the read-out coordinates get gradient)
    start = max(1, min(m - 1, m - math.ceil(tail_fraction * m) + 1)) if m >= 2 else 1
    use = alive.clone()
    use[:start] = False
    if int(use.sum()) < 2:
        use = alive
        start = int(use.nonzero()[0, 0]) if bool(use.any()) else start
    count = int(use.sum())
    if count == 0:
        return GeometricTail(rate=0.0, log_scale=-math.inf, start=start, num_points=0)
    x, y = lags[use], g[use].log()
    if count == 1:  # one point: the decay from lag 0 to it
        slope = (float(y[0]) - math.log(g0)) / float(x[0])
        intercept = math.log(g0)
    else:
        slope, intercept = _theil_sen(x, y)
    return GeometricTail(rate=math.exp(slope), log_scale=intercept, start=start, num_points=count)


def truncation_bias(curve: Tensor, max_steps: int | None = None, *, tail: GeometricTail | None = None,
                    tail_fraction: float = 0.5, floor: float = 1e-12) -> Tensor:
    """Relative truncation bias bias(K) = Σ_{k>K} G(k) / Σ_{k>=0} G(k) for K = 0..max_steps.

    Measured values are used for k <= M (NaN lags replaced by the fit), the fitted geometric tail
    (:func:`fit_geometric_tail`, or ``tail``) beyond.

    Args:
        curve: ``(M+1,)`` G(k), k = 0..M.
        max_steps: the largest K to evaluate (default M); may exceed M.
        tail: a precomputed fit of ``curve``.
        tail_fraction, floor: passed to :func:`fit_geometric_tail` when ``tail`` is None.

    Inputs:
        curve: (M+1,).

    Outputs:
        ``(max_steps + 1,)`` float64 in [0, 1], non-increasing; all ones when the tail rate is >= 1.

    Example::

        >>> r = 0.8
        >>> b = truncation_bias(r ** torch.arange(30.0), 40)
        >>> torch.allclose(b, r ** torch.arange(1.0, 42.0, dtype=torch.float64))
        True
    """
    g = _check_curve(curve)
    m = g.numel() - 1
    if max_steps is None:
        max_steps = m
    check_int("max_steps", max_steps, min=0)
    if tail is None:
        tail = fit_geometric_tail(g, tail_fraction=tail_fraction, floor=floor)
    if tail.rate >= 1.0:
        return torch.ones(max_steps + 1, dtype=torch.float64)
    lags = torch.arange(m + 1, dtype=torch.float64)
    measured = torch.where(torch.isfinite(g), g, tail(lags)).clamp_min(0.0)  # (M+1,)
    # mass beyond M: a r^(M+1) / (1 - r)
    beyond = float(tail(torch.tensor([m + 1.0]))[0]) / (1.0 - tail.rate) if tail.rate > 0 else 0.0
    total = float(measured.sum()) + beyond
    # suffix sums: after[K] = Σ_{K<k<=M} G(k) + beyond, for K = 0..M
    after = measured.flip(0).cumsum(0).flip(0) - measured + beyond  # (M+1,)
    biases = torch.empty(max_steps + 1, dtype=torch.float64)
    n_in = min(m, max_steps) + 1
    biases[:n_in] = after[:n_in]
    if max_steps > m:  # K > M: the geometric tail alone, a r^(K+1) / (1 - r)
        ks = torch.arange(m + 1, max_steps + 1, dtype=torch.float64)
        biases[n_in:] = tail(ks + 1) / (1.0 - tail.rate) if tail.rate > 0 else 0.0
    return (biases / total).clamp(0.0, 1.0)


def choose_truncation(curve: Tensor, bias_bound: float, min_steps: int = 1, max_steps: int = 200, *,
                      tail_fraction: float = 0.5, floor: float = 1e-12) -> TruncationChoice:
    """Smallest K in [min_steps, max_steps] with bias(K) < bias_bound (Aicher et al. 2019).

    When no K up to ``max_steps`` meets the bound (slow decay, or a flat / growing curve), K is
    ``max_steps`` and ``reached`` is False. For G(k) = r^k, bias(K) = r^(K+1), so the choice is
    K = floor(log(bias_bound) / log(r)), clamped to [min_steps, max_steps].

    Args:
        curve: ``(M+1,)`` G(k), k = 0..M (e.g. ``per_lag_gradient_norms(...).curve``).
        bias_bound: the largest acceptable relative bias, in (0, 1).
        min_steps, max_steps: bounds of K, 1 <= min_steps <= max_steps.
        tail_fraction, floor: see :func:`fit_geometric_tail`.

    Inputs:
        curve: (M+1,).

    Outputs:
        A :class:`TruncationChoice`.

    Example::

        >>> choose_truncation(0.5 ** torch.arange(20.0), bias_bound=0.1, min_steps=1, max_steps=50).steps
        3
    """
    _check_fraction("bias_bound", bias_bound)
    for name, value in (("min_steps", min_steps), ("max_steps", max_steps)):
        check_int(name, value, min=1)
    if min_steps > max_steps:
        raise ValueError(f"Expected min_steps <= max_steps, got min_steps={min_steps} > max_steps={max_steps}")
    g = _check_curve(curve)
    tail = fit_geometric_tail(g, tail_fraction=tail_fraction, floor=floor)
    biases = truncation_bias(g, max_steps, tail=tail)
    ok = (biases[min_steps:] < bias_bound).nonzero()
    if ok.numel():
        k = min_steps + int(ok[0, 0])
        return TruncationChoice(steps=k, bias=float(biases[k]), reached=True, tail=tail, biases=biases)
    return TruncationChoice(steps=max_steps, bias=float(biases[max_steps]), reached=False, tail=tail, biases=biases)
