"""RNNStack step-tied dropout: input / layer / output (locked), recurrent weight and state modes.

Ground truth: the masks one forward draws (``_draw_masks`` under the same RNG seed, the same draw forward
uses) applied by hand around ``torch.nn`` layers / a naive step loop.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from lightning_rnn.nn import RNNStack

TORCH_RNN = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
N, L, F, H = 4, 7, 6, 6


def _masks(m, seed, n, like):
    torch.manual_seed(seed)
    return m._draw_masks(n, like.shape[1], like)


def _torch_layer(m, layer, w_hh=None):
    """A one-layer torch RNN holding layer ``layer`` of ``m`` (optionally another weight_hh)."""
    ref = TORCH_RNN[m.cell](m.input_size if layer == 0 else m.output_size, m.hidden_size, batch_first=True)
    sd = {k.replace(f"_l{layer}", "_l0"): v for k, v in m.state_dict().items() if f"_l{layer}" in k}
    if w_hh is not None:
        sd["weight_hh_l0"] = w_hh
    ref.load_state_dict(sd)
    return ref


def test_eval_is_deterministic_and_dropout_free():
    m = RNNStack("lstm", F, H, 2, input_dropout=0.5, layer_dropout=0.5, output_dropout=0.5, recurrent_dropout=0.5)
    ref = torch.nn.LSTM(F, H, 2, batch_first=True)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(N, L, F)
    m.eval()
    torch.testing.assert_close(m(x)[0], ref(x)[0])
    torch.testing.assert_close(m(x)[0], m(x)[0])
    m.mc_dropout = True  # Monte-Carlo dropout: still stochastic in eval
    assert not torch.equal(m(x)[0], m(x)[0])


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_locked_input_layer_output_dropout_match_manual(cell):
    m = RNNStack(cell, F, H, 2, input_dropout=0.3, layer_dropout=0.4, output_dropout=0.5)
    x = torch.randn(N, L, F)
    masks = _masks(m, 7, N, x)
    assert masks.input.shape == (N, F) and masks.layer[1].shape == (N, H) and masks.output.shape == (N, H)
    torch.manual_seed(7)
    out, _ = m(x)
    y0, _ = _torch_layer(m, 0)(x * masks.input[:, None])
    y1, _ = _torch_layer(m, 1)(y0 * masks.layer[1][:, None])  # one mask per sequence, every step
    torch.testing.assert_close(out, y1 * masks.output[:, None], atol=1e-6, rtol=0)


def test_locked_masks_step_tied_in_output_and_input_gradient():
    m = RNNStack("gru", F, H, 1, input_dropout=0.5, output_dropout=0.5)
    x = torch.randn(N, L, F, requires_grad=True)
    out, _ = m(x)
    zero = out == 0
    assert zero.any() and bool((zero == zero[:, :1]).all())  # same zeroed outputs at every step
    out.sum().backward()
    gzero = x.grad == 0  # dropped input features receive no gradient at any step
    assert gzero.any() and bool((gzero == gzero[:, :1]).all())
    assert not bool((gzero[0, 0] == gzero[1, 0]).all() and (gzero[1, 0] == gzero[2, 0]).all())


def test_masks_are_scaled_bernoulli_and_preserve_expectation():
    m = RNNStack("lstm", F, 64, 2, layer_dropout=0.3, recurrent_dropout=0.3, recurrent_dropout_mode="state")
    like = torch.zeros(1)
    torch.manual_seed(0)
    draws = [m._draw_masks(256, 1, like) for _ in range(10)]
    layer = torch.stack([d.layer[1] for d in draws])
    state = torch.stack([d.state[0] for d in draws])
    for t in (layer, state):
        assert set(t.unique().tolist()) <= {0.0, torch.tensor(1 / 0.7).item()}
        assert abs(float(t.mean()) - 1.0) < 0.02  # E[mask] = 1
        assert abs(float((t == 0).float().mean()) - 0.3) < 0.02


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_weight_mode_equals_torch_with_dropped_weight(cell):
    m = RNNStack(cell, F, H, 2, recurrent_dropout=0.5)
    x = torch.randn(N, L, F)
    masks = _masks(m, 3, N, x)
    torch.manual_seed(3)
    out, _ = m(x)
    y0, _ = _torch_layer(m, 0, masks.w_hh[0].detach())(x)
    y1, _ = _torch_layer(m, 1, masks.w_hh[1].detach())(y0)
    torch.testing.assert_close(out, y1, atol=1e-6, rtol=0)
    raw = m.weight_hh_l0.detach()
    dropped = masks.w_hh[0].detach()
    keep = dropped != 0
    assert (~keep).any() and keep.any()
    torch.testing.assert_close(dropped[keep], 2 * raw[keep])  # scaled by 1/(1-p)
    # one mask per forward: a new forward draws another
    assert not torch.equal(_masks(m, 4, N, x).w_hh[0], masks.w_hh[0])


def test_weight_mode_gradients_no_warnings_weights_come_back():
    m = RNNStack("lstm", F, H, 2, recurrent_dropout=0.5)
    raw = {k: v.detach().clone() for k, v in m.named_parameters()}
    x = torch.randn(N, L, F)
    masks = _masks(m, 5, N, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.manual_seed(5)
        out, _ = m(x)
        out.square().sum().backward()
    for name in ("weight_hh_l0", "weight_hh_l1"):
        grad = getattr(m, name).grad
        assert isinstance(getattr(m, name), torch.nn.Parameter) and grad is not None
        dropped = masks.w_hh[int(name[-1])].detach() == 0
        assert bool((grad[dropped] == 0).all()) and bool((grad[~dropped] != 0).any())
    for k, v in m.named_parameters():
        torch.testing.assert_close(v.detach(), raw[k])  # never overwritten in place
    ref = torch.nn.LSTM(F, H, 2, batch_first=True)
    ref.load_state_dict(m.state_dict())
    m.eval()
    torch.testing.assert_close(m(x)[0], ref(x)[0])  # dropped weights are back


def test_weight_mode_keeps_the_fused_multilayer_kernel():
    m = RNNStack("lstm", F, H, 3, recurrent_dropout=0.5, input_dropout=0.2, output_dropout=0.2)
    with torch.profiler.profile() as prof:
        m(torch.randn(N, L, F))[0].sum().backward()
    calls = {e.key: e.count for e in prof.key_averages()}
    assert calls.get("aten::lstm") == 1  # one fused call for all three layers


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_state_mode_equals_naive_masked_loop(cell, bidirectional):
    torch.set_default_dtype(torch.float64)
    try:
        m = RNNStack(cell, F, H, 2, bidirectional=bidirectional, recurrent_dropout=0.5, recurrent_dropout_mode="state")
        x = torch.randn(N, L, F, requires_grad=True)
        masks = _masks(m, 11, N, x)
        torch.manual_seed(11)
        out, _ = m(x)
        ref = _naive_state_dropout(m, x, masks.state)
        torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
        g1, = torch.autograd.grad(out.square().sum(), x)
        g2, = torch.autograd.grad(ref.square().sum(), x)
        torch.testing.assert_close(g1, g2, atol=1e-10, rtol=0)
        wg = torch.autograd.grad(m(x)[0].sum(), m.weight_hh_l0)[0]
        assert wg.abs().sum() > 0
        # masks differ between sequences; the step loop reuses them at every step by construction
        assert not torch.equal(masks.state[0][0], masks.state[0][1])
    finally:
        torch.set_default_dtype(torch.float32)


def test_state_mode_with_lengths_matches_per_row_runs():
    m = RNNStack("lstm", F, H, 1, bidirectional=True, recurrent_dropout=0.5, recurrent_dropout_mode="state")
    m.eval()
    m.mc_dropout = True
    x = torch.randn(N, L, F)
    lengths = torch.tensor([3, L, 1, 5])
    torch.manual_seed(2)
    out, (h, _) = m(x, lengths=lengths)
    for row, n in enumerate(lengths.tolist()):
        assert bool((out[row, n:] == 0).all())
    m.mc_dropout = False  # without dropout the lengths path equals running each row alone
    out, (h, _) = m(x, lengths=lengths)
    for row, n in enumerate(lengths.tolist()):
        o_row, (h_row, _) = m(x[row : row + 1, :n])
        torch.testing.assert_close(out[row : row + 1, :n], o_row, atol=1e-6, rtol=0)
        torch.testing.assert_close(h[:, row : row + 1], h_row, atol=1e-6, rtol=0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_state_mode_packed_loop_matches_naive_per_row(cell):
    """With lengths, the masked step loop on packed rows (both directions) equals a naive run per row."""
    torch.set_default_dtype(torch.float64)
    try:
        m = RNNStack(cell, F, H, 2, bidirectional=True, recurrent_dropout=0.5, recurrent_dropout_mode="state")
        x = torch.randn(N, L, F)
        lengths = torch.tensor([3, L, 1, 5])
        masks = _masks(m, 13, N, x)  # drawn per sorted row (decreasing length)
        torch.manual_seed(13)
        out, _ = m(x, lengths=lengths)
        sorted_rows = torch.sort(lengths, descending=True).indices.tolist()
        for j, row in enumerate(sorted_rows):
            n = int(lengths[row])
            ref = _naive_state_dropout(m, x[row : row + 1, :n], [s[j : j + 1] for s in masks.state])
            torch.testing.assert_close(out[row : row + 1, :n], ref, atol=1e-10, rtol=0)
    finally:
        torch.set_default_dtype(torch.float32)


def test_residual_adds_layer_input():
    m = RNNStack("gru", F, F, 3, residual=True)
    x = torch.randn(N, L, F)
    y = x
    outs = []
    for layer in range(3):
        o, _ = _torch_layer(m, layer)(y)
        y = o + y if layer > 0 else o
        outs.append(y)
    torch.testing.assert_close(m(x)[0], outs[-1], atol=1e-6, rtol=0)
    m_all = RNNStack("gru", F, F // 2, 1, bidirectional=True, residual="all")
    ref = torch.nn.GRU(F, F // 2, bidirectional=True, batch_first=True)
    ref.load_state_dict(m_all.state_dict())
    torch.testing.assert_close(m_all(x)[0], ref(x)[0] + x, atol=1e-6, rtol=0)


def _naive_state_dropout(m, x, state_masks):
    """Textbook Gal recurrent dropout: h_{t-1} * mask (per sequence, same every step) in W_hh h only."""
    d = m.num_directions
    inp = x
    for layer in range(m.num_layers):
        dir_outs = []
        for direction in range(d):
            sfx = f"_l{layer}" + ("_reverse" if direction else "")
            w_ih, w_hh = getattr(m, "weight_ih" + sfx), getattr(m, "weight_hh" + sfx)
            b_ih, b_hh = getattr(m, "bias_ih" + sfx), getattr(m, "bias_hh" + sfx)
            mask = state_masks[layer * d + direction]
            h = x.new_zeros(x.shape[0], m.hidden_size)
            c = torch.zeros_like(h)
            outs = [None] * inp.shape[1]
            steps = range(inp.shape[1] - 1, -1, -1) if direction else range(inp.shape[1])
            for t in steps:
                gi = inp[:, t] @ w_ih.T + b_ih
                gh = (h * mask) @ w_hh.T + b_hh
                if m.cell == "lstm":
                    i, f, g, o = (gi + gh).chunk(4, 1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(c)
                elif m.cell == "gru":
                    ir, iz, in_ = gi.chunk(3, 1)
                    hr, hz, hn = gh.chunk(3, 1)
                    r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
                    n = torch.tanh(in_ + r * hn)
                    h = (1 - z) * n + z * h
                else:
                    h = torch.tanh(gi + gh)
                outs[t] = h
            dir_outs.append(torch.stack(outs, 1))
        inp = torch.cat(dir_outs, -1)
    return inp
