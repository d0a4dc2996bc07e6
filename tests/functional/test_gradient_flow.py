"""Per-lag gradient norms against closed forms and an independent retain_grad computation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_rnn.functional.gradient_flow import (
    gradient_horizon,
    per_lag_gradient_norms,
    select_target_positions,
)
from lightning_rnn.nn.rnn import RNNStack


def _linear_rnn(w: torch.Tensor, length: int, n: int = 3, seed: int = 0):
    """Explicit loop h_t = W h_{t-1} + U x_t; returns the list of states (N, H)."""
    g = torch.Generator().manual_seed(seed)
    h_size = w.shape[0]
    u = torch.randn(h_size, 2, generator=g, dtype=w.dtype, requires_grad=True)
    x = torch.randn(length, n, 2, generator=g, dtype=w.dtype)
    h = torch.zeros(n, h_size, dtype=w.dtype)
    states = []
    for t in range(length):
        h = h @ w.T + x[t] @ u.T
        states.append(h)
    return states


def test_linear_rnn_matches_closed_form():
    torch.manual_seed(0)
    h_size, length = 5, 9
    w = torch.randn(h_size, h_size, dtype=torch.float64) * 0.6
    g = torch.randn(h_size, dtype=torch.float64)
    states = _linear_rnn(w, length)
    losses = torch.full((3, length), math.nan, dtype=torch.float64)
    losses = torch.stack([s @ g if t == length - 1 else losses[:, t] for t, s in enumerate(states)], 1)
    res = per_lag_gradient_norms(states, losses, max_lag=length - 1, num_targets=None)
    expected = torch.stack([torch.linalg.matrix_power(w.T, k) @ g for k in range(length)]).norm(dim=1)
    torch.testing.assert_close(res.curve.double(), expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(res.normalized.double(), expected / expected[0], rtol=1e-5, atol=0)
    assert res.target_positions == (length - 1,)  # only positions that have a target are used
    assert res.counts.tolist() == [3] * length


def test_contracting_linear_rnn_has_short_horizon_and_orthogonal_has_none():
    h_size, length = 6, 20
    q, _ = torch.linalg.qr(torch.randn(h_size, h_size, dtype=torch.float64))
    for scale, horizon in ((0.5, 7), (1.0, None)):  # 0.5**7 < 1e-2 < 0.5**6
        states = _linear_rnn(scale * q, length)
        losses = torch.stack([s.sum(-1) for s in states], 1)  # g = ones at every position
        res = per_lag_gradient_norms(states, losses, max_lag=length - 1, num_targets=4)
        k = torch.arange(length, dtype=torch.float64)
        torch.testing.assert_close(res.normalized.double(), scale**k, rtol=1e-5, atol=0)
        assert res.horizon == horizon


def test_tanh_rnnstack_with_norm_half_vanishes_within_a_few_steps():
    rnn = RNNStack("rnn", 4, 8, num_layers=1)
    q, _ = torch.linalg.qr(torch.randn(8, 8))
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(0.5 * q)
    _, states = rnn.forward_steps(torch.randn(5, 30, 4))
    losses = torch.stack([s[0].pow(2).sum(-1) + s[0].sum(-1) for s in states], 1)
    res = per_lag_gradient_norms(states, losses, max_lag=20, num_targets=8)
    assert res.horizon is not None and 1 <= res.horizon <= 7
    assert bool((res.normalized[1:] <= 0.5 ** torch.arange(1, 21) * (1 + 1e-4)).all())


def _cell_reference(kind: str, stack: RNNStack, x: torch.Tensor, readout: torch.Tensor, mask: torch.Tensor):
    """Independent table ‖∂L_{t,r}/∂S_{s,r}‖² per layer (t, s, layer, r) from an explicit cell loop.

    S_s is the state carried into step s+1 (every layer's h, and c): each layer's carry is its own tensor
    (a clone; ``retain_grad`` on it), the layer above reads the fresh output within the step, and the loss
    at t is a function of S_t (the top layer's carried h) — the Markov-state derivative that
    ``per_lag_gradient_norms`` documents.
    """
    n, length, _ = x.shape
    layers, hid = stack.num_layers, stack.hidden_size
    cls = {"rnn": nn.RNNCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}[kind]
    cells = []
    for layer in range(layers):
        cell = cls(x.shape[2] if layer == 0 else hid, hid).double()
        for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, p).data.copy_(getattr(stack, f"{p}_l{layer}").detach().double())
        cells.append(cell)
    hs = [torch.zeros(n, hid, dtype=torch.float64) for _ in range(layers)]
    cs = [torch.zeros(n, hid, dtype=torch.float64) for _ in range(layers)]
    retained, losses = [], []
    for t in range(length):
        inp = x[:, t].double()
        step = []
        for layer, cell in enumerate(cells):
            if kind == "lstm":
                fresh, c_new = cell(inp, (hs[layer], cs[layer]))
                hs[layer], cs[layer] = fresh.clone(), c_new.clone()
                parts = [hs[layer], cs[layer]]
            else:
                fresh = cell(inp, hs[layer])
                hs[layer] = fresh.clone()
                parts = [hs[layer]]
            for p in parts:
                p.retain_grad()
            step.append(parts)
            inp = fresh  # vertical path inside the step
        retained.append(step)
        losses.append(torch.tanh(hs[-1] @ readout.double()).pow(2).sum(-1))  # (N,), from S_t
    table = torch.zeros(length, length, layers, n, dtype=torch.float64)
    flat = [p for step in retained for parts in step for p in parts]
    for t in range(length):
        for p in flat:
            p.grad = None
        losses[t].sum().backward(retain_graph=True)
        for s in range(t + 1):
            for layer in range(layers):
                sq = sum(p.grad.pow(2).sum(-1) if p.grad is not None else 0 for p in retained[s][layer])
                table[t, s, layer] = sq
    return table  # squared norms per layer


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_matches_retain_grad_reference_on_cell_loop(kind):
    n, length, hid, max_lag = 3, 7, 5, 4
    stack = RNNStack(kind, 4, hid, num_layers=2).double()
    x = torch.randn(n, length, 4, dtype=torch.float64)
    readout = torch.randn(hid, 3, dtype=torch.float64)
    mask = torch.ones(n, length, dtype=torch.bool)
    mask[0, -2:] = False  # padding: no target for row 0 at the last two positions
    _, states = stack.forward_steps(x)
    losses = torch.stack([torch.tanh(s[0][-1] @ readout if kind == "lstm" else s[-1] @ readout).pow(2).sum(-1)
                          for s in states], 1)
    losses = losses.masked_fill(~mask, math.nan)
    res = per_lag_gradient_norms(states, losses, max_lag=max_lag, num_targets=None, per_layer=True)

    table = _cell_reference(kind, stack, x, readout, mask)  # (t, s, layer, r) squared
    curve = torch.zeros(max_lag + 1, dtype=torch.float64)
    per_layer = torch.zeros(2, max_lag + 1, dtype=torch.float64)
    count = torch.zeros(max_lag + 1, dtype=torch.float64)
    for t in range(length):
        for k in range(min(t, max_lag) + 1):
            for r in range(n):
                if mask[r, t]:
                    curve[k] += table[t, t - k, :, r].sum().sqrt()
                    per_layer[:, k] += table[t, t - k, :, r].sqrt()
                    count[k] += 1
    torch.testing.assert_close(res.curve.double(), curve / count, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(res.per_layer.double(), per_layer / count, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(res.per_layer_normalized.double(), (per_layer / count) / (curve[0] / count[0]), rtol=1e-5, atol=1e-12)
    assert res.counts.tolist() == count.long().tolist()
    assert float(res.per_layer[0, 0]) == 0.0  # the loss at t reads S_t through the top layer only
    # one backward pass, rows dealt round-robin to the targets: the mean over those (target, row) pairs
    targets = [2, 4, 6]
    for passes in (1, 2):
        dealt = per_lag_gradient_norms(states, losses, max_lag=max_lag, target_positions=targets,
                                       backward_passes=passes, per_layer=True)
        pairs = [(targets[(r + j) % 3], r) for j in range(passes) for r in range(n)]
        pairs = [(t, r) for t, r in pairs if mask[r, t]]
        exp = torch.zeros(max_lag + 1, dtype=torch.float64)
        exp_layer = torch.zeros(2, max_lag + 1, dtype=torch.float64)
        cnt = torch.zeros(max_lag + 1, dtype=torch.float64)
        for t, r in pairs:
            for k in range(min(t, max_lag) + 1):
                exp[k] += table[t, t - k, :, r].sum().sqrt()
                exp_layer[:, k] += table[t, t - k, :, r].sqrt()
                cnt[k] += 1
        torch.testing.assert_close(dealt.curve.double(), exp / cnt, rtol=1e-5, atol=1e-12)
        torch.testing.assert_close(dealt.per_layer.double(), exp_layer / cnt, rtol=1e-5, atol=1e-12)
        assert dealt.counts.tolist() == cnt.long().tolist()
    # a subset of targets averages only those targets
    sub = per_lag_gradient_norms(states, losses, max_lag=max_lag, target_positions=[6])
    expected = table[6, 6 - torch.arange(max_lag + 1)].sum(1).sqrt()[:, 1:].mean(-1)  # row 0 has no target
    torch.testing.assert_close(sub.curve.double(), expected, rtol=1e-5, atol=1e-12)


def test_probe_leaves_parameter_grads_untouched():
    stack = RNNStack("lstm", 3, 4)
    _, states = stack.forward_steps(torch.randn(2, 6, 3))
    losses = torch.stack([s[0].sum((0, 2)) for s in states], 1)
    per_lag_gradient_norms(states, losses, max_lag=3)
    assert all(p.grad is None for p in stack.parameters())


def test_select_target_positions():
    assert select_target_positions(10, 3, None) == list(range(10))
    assert select_target_positions(10, 3, 4) == [3, 5, 7, 9]
    assert select_target_positions(10, 9, 1) == [9]
    assert select_target_positions(10, 8, 3) == [7, 8, 9]
    assert select_target_positions(10, 8, 4) == [0, 7, 8, 9]
    assert select_target_positions(4, 1, 10) == [0, 1, 2, 3]


def test_horizon():
    assert gradient_horizon(torch.tensor([1.0, 0.02, 0.009, 0.5]), 0.01) == 2
    assert gradient_horizon(torch.tensor([1.0, math.nan, 0.2]), 0.01) is None


def test_bad_input():
    states = _linear_rnn(torch.eye(3, dtype=torch.float64), 5)
    losses = torch.stack([s.sum(-1) for s in states], 1)
    with pytest.raises(ValueError, match="max_lag"):
        per_lag_gradient_norms(states, losses, max_lag=0)
    with pytest.raises(ValueError, match="max_lag"):
        per_lag_gradient_norms(states, losses, max_lag=5)
    for eps in (0.0, 1.0, -1e-3):
        with pytest.raises(ValueError, match="eps"):
            per_lag_gradient_norms(states, losses, max_lag=2, eps=eps)
    with pytest.raises(ValueError, match="step states"):
        per_lag_gradient_norms(states[:-1], losses, max_lag=2)
    with pytest.raises(ValueError, match=r"\(N, L\)"):
        per_lag_gradient_norms(states, losses[None], max_lag=2)
    with pytest.raises(ValueError, match="autograd"):
        per_lag_gradient_norms([s.detach() for s in states], losses, max_lag=2)
    with pytest.raises(ValueError, match="backward_passes"):
        per_lag_gradient_norms(states, losses, max_lag=2, backward_passes=0)
    with pytest.raises(TypeError, match="Tensor"):
        per_lag_gradient_norms(["h"] * 5, losses, max_lag=2)
