"""functional.clipping: the threshold rules against independently computed sequences, AGC against a reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_rnn.functional import (
    ClipRule,
    QuantileClipRule,
    UnitwiseClipRule,
    ZScoreClipRule,
    adaptive_clip_grad_,
    clip_grads_,
    clip_with_rule_,
    grad_norm,
    unitwise_norm,
)
from lightning_rnn.functional.clipping import quantile

# A scripted norm series: a calm phase, two spikes, a regime change.
NORMS = [1.0, 1.2, 0.9, 1.1, 1.05, 0.95, 8.0, 1.0, 1.3, 0.8, 1.1, 25.0, 2.0, 2.2, 1.9, 2.1, 2.05]


def _expected_autoclip(norms: list[float], q: float, window: int | None) -> list[float]:
    # AutoClip: append the current norm, then np.percentile of the (bounded) history.
    hist: list[float] = []
    out = []
    for g in norms:
        hist.append(g)
        if window is not None:
            hist = hist[-window:]
        out.append(float(np.percentile(np.array(hist), 100 * q)))
    return out


@pytest.mark.parametrize(("q", "window"), [(0.1, None), (0.1, 4), (0.5, 3), (0.9, 1000), (1.0, 5)])
def test_quantile_rule_reproduces_autoclip_sequence(q, window):
    rule = QuantileClipRule(quantile=q, window=window)
    got = [rule.step(g) for g in NORMS]
    np.testing.assert_allclose(got, _expected_autoclip(NORMS, q, window), rtol=1e-12)


def test_quantile_matches_numpy_on_random_values():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 100):
        xs = rng.lognormal(size=n).tolist()
        for q in (0.0, 0.1, 0.37, 0.5, 1.0):
            assert quantile(xs, q) == pytest.approx(float(np.percentile(xs, 100 * q)), rel=1e-12)


def test_quantile_rule_window_bounds_history_and_state_round_trip():
    rule = QuantileClipRule(quantile=0.1, window=4)
    for g in NORMS:
        rule.step(g)
    assert list(rule.history) == NORMS[-4:]
    other = QuantileClipRule(quantile=0.1, window=4)
    other.load_state_dict(rule.state_dict())
    assert other.step(3.0) == rule.step(3.0)


def _expected_zclip(norms, alpha, z_thr, warmup, eps=1e-6):
    # Written from the ZClip paper/reference: warm-up buffer -> population mean/var; EMA fed the clipped value,
    # the variance update uses the already-updated mean.
    out, buf, mu, var = [], [], None, None
    for g in norms:
        if mu is None:
            buf.append(g)
            if len(buf) == max(warmup, 1):
                arr = np.array(buf)
                mu, var = float(arr.mean()), float(arr.var())
            out.append(math.inf)
            continue
        sd = var**0.5
        z = (g - mu) / (sd + eps)
        if z > z_thr:
            clip_to = mu + (z_thr * sd) / (z / z_thr)
            out.append(clip_to)
            g_eff = clip_to
        else:
            out.append(mu + z_thr * (sd + eps))
            g_eff = g
        mu = alpha * mu + (1 - alpha) * g_eff
        var = alpha * var + (1 - alpha) * (g_eff - mu) ** 2
    return out


@pytest.mark.parametrize(("alpha", "z_thr", "warmup"), [(0.97, 2.5, 5), (0.8, 2.0, 3), (0.5, 1.0, 0)])
def test_zscore_rule_reproduces_zclip_sequence(alpha, z_thr, warmup):
    rule = ZScoreClipRule(alpha=alpha, z_threshold=z_thr, warmup_steps=warmup)
    got = [rule.step(g) for g in NORMS]
    np.testing.assert_allclose(got, _expected_zclip(NORMS, alpha, z_thr, warmup), rtol=1e-12)
    # The big spike is clipped; the first calm step after a real warm-up is not (with warm-up 0 -> 1, sigma
    # starts at 0 and every larger norm is a spike).
    clipped = [g > t for g, t in zip(NORMS, got)]
    assert clipped[NORMS.index(25.0)]
    assert not any(clipped[:warmup])
    if warmup >= 3:
        assert not clipped[warmup]


def test_zscore_threshold_is_continuous_at_trigger():
    rule = ZScoreClipRule(alpha=0.9, z_threshold=2.0, warmup_steps=2)
    rule.step(1.0)
    rule.step(3.0)  # mean 2, std 1
    state = rule.state_dict()
    trigger = 2.0 + 2.0 * (1.0 + 1e-6)
    below, above = ZScoreClipRule(0.9, 2.0, 2), ZScoreClipRule(0.9, 2.0, 2)
    below.load_state_dict(state)
    above.load_state_dict(state)
    assert below.step(trigger - 1e-9) == pytest.approx(trigger)
    assert above.step(trigger + 1e-9) == pytest.approx(trigger, rel=1e-6)


@pytest.mark.parametrize("rule", [QuantileClipRule(), ZScoreClipRule()])
def test_rules_reject_non_finite_norms(rule):
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="finite"):
            rule.step(bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"quantile": 0.0}, "quantile"),
        ({"quantile": 1.5}, "quantile"),
        ({"window": 0}, "window"),
        ({"window": 2.5}, "window"),
    ],
)
def test_quantile_rule_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantileClipRule(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 1.0}, "alpha"),
        ({"alpha": 0.0}, "alpha"),
        ({"z_threshold": 0.0}, "z_threshold"),
        ({"warmup_steps": -1}, "warmup"),
    ],
)
def test_zscore_rule_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ZScoreClipRule(**kwargs)


def test_grad_norm_matches_concatenated_norm():
    grads = [torch.randn(3, 4), torch.randn(5), torch.randn(())]
    flat = torch.cat([g.reshape(-1) for g in grads])
    for p in (1.0, 2.0, 3.0, math.inf):
        assert float(grad_norm(grads, p)) == pytest.approx(
            float(torch.linalg.vector_norm(flat, ord=p)), rel=1e-5
        )
    assert float(grad_norm([])) == 0.0
    grads[1][0] = math.nan
    assert math.isnan(float(grad_norm(grads)))


def test_clip_grads_sets_norm_exactly_to_threshold():
    grads = [torch.randn(10, 10) * 5, torch.randn(10)]
    before = [g.clone() for g in grads]
    norm = float(grad_norm(grads))
    assert clip_grads_(grads, norm / 7, norm)
    assert float(grad_norm(grads)) == pytest.approx(norm / 7, rel=1e-6)
    for g, b in zip(grads, before):  # direction preserved
        torch.testing.assert_close(g, b / 7, rtol=1e-6, atol=0)
    assert not clip_grads_(grads, 1e9, float(grad_norm(grads)))
    assert not clip_grads_(grads, math.inf, float(grad_norm(grads)))


def _agc_reference(w: torch.Tensor, g: torch.Tensor, lam: float, eps: float) -> torch.Tensor:
    # Straightforward loop over units (rows), the NFNets definition.
    if w.ndim <= 1:
        wn = max(float(w.norm()), eps)
        gn = float(g.norm())
        return g * (lam * wn / gn) if gn > lam * wn else g.clone()
    out = g.clone()
    for i in range(w.shape[0]):
        wn = max(float(w[i].norm()), eps)
        gn = float(g[i].norm())
        if gn > lam * wn:
            out[i] = g[i] * (lam * wn / gn)
    return out


@pytest.mark.parametrize("lam", [0.01, 0.1, 1.0])
def test_agc_matches_reference(lam):
    gen = torch.Generator().manual_seed(1)
    shapes = [(8, 5), (12, 3), (7,), (), (4, 3, 2)]
    params = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s, generator=gen))
        p.grad = torch.randn(s, generator=gen) * torch.rand((), generator=gen) * 0.3
        params.append(p)
    params[1].data[0].zero_()  # a zero unit: the eps floor matters
    expected = [_agc_reference(p.detach(), p.grad, lam, 1e-3) for p in params]
    n_expected = sum(
        int(not torch.equal(e, p.grad))
        if p.ndim <= 1
        else int((e != p.grad).any(dim=tuple(range(1, p.ndim))).sum())
        for e, p in zip(expected, params)
    )
    count = adaptive_clip_grad_(params, clip_factor=lam, eps=1e-3)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-7)
    assert int(count) == n_expected
    if lam == 0.01:
        assert n_expected > 0


def test_agc_skips_params_without_grad_and_unitwise_norm_shapes():
    p = torch.nn.Parameter(torch.randn(4, 3))
    assert int(adaptive_clip_grad_([p])) == 0
    assert unitwise_norm(torch.randn(4, 3, 2)).shape == (4, 1, 1)
    assert unitwise_norm(torch.randn(5)).shape == ()


# ----------------------------------------------------------------------------- the ClipRule interface
def _grad_sequence(n_steps: int, seed: int = 0) -> list[list[torch.Tensor]]:
    """Gradients of a few parameters over ``n_steps`` steps, with the NORMS series' spikes."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(6, 4), (6,), (3, 6)]
    return [[torch.randn(s, generator=gen) * NORMS[i % len(NORMS)] for s in shapes] for i in range(n_steps)]


def _params(weights: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.nn.Parameter]:
    params = []
    for w, g in zip(weights, grads):
        p = torch.nn.Parameter(w.clone())
        p.grad = g.clone()
        params.append(p)
    return params


@pytest.mark.parametrize("ceiling", [None, 2.0])
@pytest.mark.parametrize("mode", ["quantile", "zscore", "agc"])
def test_clip_with_rule_matches_the_formulas_step_by_step(mode, ceiling):
    """Every built-in rule through the one interface gives the thresholds and gradients of its formula: AutoClip's
    percentile, ZClip's EMA (the references above), AGC's per-unit loop, then the global ceiling."""
    steps = _grad_sequence(len(NORMS))
    weights = [torch.randn(g.shape, generator=torch.Generator().manual_seed(7)) for g in steps[0]]
    norms = [float(grad_norm(g)) for g in steps]
    max_norm = None if ceiling is None else ceiling * float(np.median(norms))  # cuts the spikes only
    rule = {
        "quantile": QuantileClipRule(quantile=0.3, window=5),
        "zscore": ZScoreClipRule(alpha=0.8, z_threshold=2.0, warmup_steps=3),
        "agc": UnitwiseClipRule(clip_factor=2.0, eps=1e-3),  # ~ the calm steps' ||G_i|| / ||W_i||
    }[mode]
    if mode == "quantile":
        formula = _expected_autoclip(norms, 0.3, 5)
    elif mode == "zscore":
        formula = _expected_zclip(norms, 0.8, 2.0, 3)
    else:
        formula = [math.inf] * len(norms)
    n_clipped = 0
    for grads, norm, rule_threshold in zip(steps, norms, formula):
        params = _params(weights, grads)
        threshold, clipped = clip_with_rule_(rule, params, norm, max_norm=max_norm)
        expected_threshold = rule_threshold if max_norm is None else min(rule_threshold, max_norm)
        assert threshold == pytest.approx(expected_threshold, rel=1e-12)
        # The gradients, from the formulas: AGC's unit loop first, then the global norm scaled to the threshold.
        expected = [_agc_reference(w, g, 2.0, 1e-3) for w, g in zip(weights, grads)] if mode == "agc" else grads
        total = float(torch.cat([e.reshape(-1) for e in expected]).norm())
        if total > expected_threshold:
            expected = [e * (expected_threshold / total) for e in expected]
        changed = any(not torch.allclose(e, g, rtol=1e-6, atol=0) for e, g in zip(expected, grads))
        assert clipped == changed
        n_clipped += int(clipped)
        for p, e in zip(params, expected):
            torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-7)
    assert 0 < n_clipped < len(NORMS)


def test_clip_with_rule_passes_rule_parameters_to_the_per_parameter_clip():
    weights = [torch.ones(4, 3), torch.ones(2, 3)]
    grads = [torch.full((4, 3), 5.0), torch.full((2, 3), 5.0)]
    params = _params(weights, grads)
    norm = float(grad_norm([p.grad for p in params]))
    clip_with_rule_(UnitwiseClipRule(0.01), params, norm, rule_parameters=params[:1])
    torch.testing.assert_close(params[0].grad, _agc_reference(weights[0], grads[0], 0.01, 1e-3))
    torch.testing.assert_close(params[1].grad, grads[1])  # left out of the unit-wise clip


def test_a_user_rule_is_one_subclass():
    class MeanRule(ClipRule):
        def __init__(self, factor: float) -> None:
            self.factor, self.total, self.count = factor, 0.0, 0

        def step(self, norm: float) -> float:
            self.total, self.count = self.total + norm, self.count + 1
            return self.factor * self.total / self.count

        def state_dict(self):
            return {"total": self.total, "count": self.count}

        def load_state_dict(self, state):
            self.total, self.count = state.get("total", 0.0), state.get("count", 0)

    steps = _grad_sequence(len(NORMS))
    norms = [float(grad_norm(g)) for g in steps]
    rule = MeanRule(1.5)
    for i, (grads, norm) in enumerate(zip(steps, norms)):
        params = _params([torch.zeros_like(g) for g in grads], grads)
        threshold, clipped = clip_with_rule_(rule, params, norm)
        assert threshold == pytest.approx(1.5 * sum(norms[: i + 1]) / (i + 1), rel=1e-12)
        assert clipped == (norm > threshold)
        assert float(grad_norm([p.grad for p in params])) == pytest.approx(min(norm, threshold), rel=1e-5)
    other = MeanRule(1.5)
    other.load_state_dict(rule.state_dict())
    assert other.step(2.0) == rule.step(2.0)


def test_clip_rule_defaults_and_abstract_step():
    with pytest.raises(TypeError, match="abstract"):
        ClipRule()  # type: ignore[abstract]

    class Constant(ClipRule):
        def step(self, norm: float) -> float:
            return 1.0

    rule = Constant()
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    assert rule.clip_([p]) is False
    torch.testing.assert_close(p.grad, torch.full((3,), 2.0))
    assert rule.state_dict() == {}
    rule.load_state_dict({"anything": 1})
    assert repr(rule) == "Constant()"
    assert repr(QuantileClipRule(0.2, 7)) == "QuantileClipRule(quantile=0.2, window=7)"
    assert repr(QuantileClipRule(0.2, 7)) != repr(QuantileClipRule(0.3, 7))


@pytest.mark.parametrize("bad", [math.nan, -1.0])
def test_clip_with_rule_refuses_a_bad_threshold(bad):
    class Bad(ClipRule):
        def step(self, norm: float) -> float:
            return bad

    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    with pytest.raises(ValueError, match=r"Expected Bad\(\)\.step to return a threshold >= 0"):
        clip_with_rule_(Bad(), [p], 1.0)


@pytest.mark.parametrize(("kwargs", "match"), [({"clip_factor": 0.0}, "clip_factor"), ({"eps": -1.0}, "eps")])
def test_unitwise_rule_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UnitwiseClipRule(**kwargs)
