"""RNNStack zoneout (Krueger et al. 2016) against an unrolled autograd reference, and double backward.

Ground truth: a textbook per-step loop over the same parameters, fed the draws one forward makes
(``_draw_masks`` under the same RNG seed): h_t = z_t * h_{t-1} + (1 - z_t) * h̃_t (and c_t likewise for
LSTM), z_t ~ Bernoulli(p) per sequence, unit and step in training, z_t = p in eval.
"""

from __future__ import annotations

import pytest
import torch

from lightning_rnn.nn import RNNStack

N, L, F, H = 4, 6, 5, 6


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def _masks(m, seed, n, length, like):
    torch.manual_seed(seed)
    return m._draw_masks(n, length, like)


def _naive(m, x, masks, rows=slice(None), state=None):
    """Unrolled reference with state masks and zoneout draws; ``rows`` selects the batch rows of the draws."""
    d, lstm = m.num_directions, m.cell == "lstm"
    inp, finals = x, []
    for layer in range(m.num_layers):
        dir_outs = []
        for direction in range(d):
            k = layer * d + direction
            sfx = f"_l{layer}" + ("_reverse" if direction else "")
            w_ih, w_hh = getattr(m, "weight_ih" + sfx), getattr(m, "weight_hh" + sfx)
            b_ih, b_hh = getattr(m, "bias_ih" + sfx), getattr(m, "bias_hh" + sfx)
            mask = masks.state[k][rows] if masks.state[k] is not None else 1.0

            def zone(z, t):
                return z if not isinstance(z, torch.Tensor) else z[t, rows]

            if state is None:
                h = x.new_zeros(x.shape[0], m.hidden_size)
                c = torch.zeros_like(h)
            else:
                h = (state[0] if lstm else state)[k]
                c = state[1][k] if lstm else None
            outs = [None] * inp.shape[1]
            for t in range(inp.shape[1] - 1, -1, -1) if direction else range(inp.shape[1]):
                gi = inp[:, t] @ w_ih.T + b_ih
                gh = (h * mask) @ w_hh.T + b_hh
                if lstm:
                    i, f, g, o = (gi + gh).chunk(4, 1)
                    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h_new = torch.sigmoid(o) * torch.tanh(c_new)
                    zc = zone(masks.zoneout_c[k], t)
                    c = zc * c + (1 - zc) * c_new
                elif m.cell == "gru":
                    ir, iz, in_ = gi.chunk(3, 1)
                    hr, hz, hn = gh.chunk(3, 1)
                    r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
                    n = torch.tanh(in_ + r * hn)
                    h_new = (1 - z) * n + z * h
                else:
                    h_new = torch.tanh(gi + gh)
                zh = zone(masks.zoneout_h[k], t)
                h = zh * h + (1 - zh) * h_new
                outs[t] = h
            finals.append((h, c))
            dir_outs.append(torch.stack(outs, 1))
        inp = torch.cat(dir_outs, -1)
    h_n = torch.stack([f[0] for f in finals])
    return inp, ((h_n, torch.stack([f[1] for f in finals])) if lstm else h_n)


def _h(state):
    return state[0] if isinstance(state, tuple) else state


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("state_dropout", [0.0, 0.4])
def test_zoneout_training_equals_unrolled_reference(float64, cell, bidirectional, state_dropout):
    kw = {"recurrent_dropout": state_dropout, "recurrent_dropout_mode": "state"} if state_dropout else {}
    m = RNNStack(cell, F, H, 2, bidirectional=bidirectional, zoneout=0.3, **kw)
    x = torch.randn(N, L, F, requires_grad=True)
    state = m.init_state(N)
    state = tuple(torch.randn_like(s) for s in state) if cell == "lstm" else torch.randn_like(state)
    masks = _masks(m, 5, N, L, x)
    zh = masks.zoneout_h[0]
    assert zh.shape == (L, N, H) and 0.15 < float(zh.mean()) < 0.45  # Bernoulli(p) keep-previous draws
    assert (masks.zoneout_c[0] is not None) == (cell == "lstm")
    torch.manual_seed(5)
    out, s = m(x, state)
    ref, s_ref = _naive(m, x, masks, state=state)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(_h(s), _h(s_ref), atol=1e-10, rtol=0)
    if cell == "lstm":
        torch.testing.assert_close(s[1], s_ref[1], atol=1e-10, rtol=0)
    params = [x, *m.parameters()]
    loss = out.square().sum() + sum(t.sum() for t in (s if cell == "lstm" else [s]))
    loss_ref = ref.square().sum() + sum(t.sum() for t in (s_ref if cell == "lstm" else [s_ref]))
    for g, g_ref in zip(torch.autograd.grad(loss, params), torch.autograd.grad(loss_ref, params)):
        torch.testing.assert_close(g, g_ref, atol=1e-9, rtol=0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_zoneout_eval_is_the_expectation_and_chunks_compose(float64, cell):
    m = RNNStack(cell, F, H, 2, zoneout=0.25, layer_dropout=0.3, output_dropout=0.3)
    m.eval()
    x = torch.randn(N, L, F)
    out, s = m(x)
    ref, _ = _naive(m, x, m._draw_masks(N, L, x))  # eval masks: the constant p
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
    assert m._draw_masks(N, L, x).zoneout_h[0] == 0.25
    out1, s1 = m(x[:, :2])  # truncated BPTT: carried state, same result as one call
    out2, s2 = m(x[:, 2:], s1)
    torch.testing.assert_close(torch.cat([out1, out2], 1), out, atol=1e-10, rtol=0)
    torch.testing.assert_close(_h(s2), _h(s), atol=1e-10, rtol=0)
    m.mc_dropout = True
    assert not torch.equal(m(x)[0], m(x)[0])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_zoneout_with_lengths_matches_per_row_reference(float64, cell):
    m = RNNStack(cell, F, H, 1, bidirectional=True, zoneout=0.3, recurrent_dropout=0.3,
                 recurrent_dropout_mode="state")
    x = torch.randn(N, L, F)
    lengths = torch.tensor([3, L, 1, 5])
    masks = _masks(m, 9, N, L, x)  # drawn per sorted row (decreasing length)
    torch.manual_seed(9)
    out, _ = m(x, lengths=lengths)
    for j, row in enumerate(torch.sort(lengths, descending=True).indices.tolist()):
        n = int(lengths[row])
        ref, _ = _naive(m, x[row : row + 1, :n], masks, rows=slice(j, j + 1))
        torch.testing.assert_close(out[row : row + 1, :n], ref, atol=1e-10, rtol=0)


def test_zoneout_training_with_carried_state_and_forward_steps():
    m = RNNStack("lstm", F, H, 2, batch_first=False, zoneout=0.2, input_dropout=0.2, recurrent_dropout=0.3)
    x = torch.randn(L, N, F)
    torch.manual_seed(1)
    out, final = m(x)
    torch.manual_seed(1)
    out_s, steps = m.forward_steps(x)  # the same draws, sliced per step
    torch.testing.assert_close(out_s, out, atol=1e-5, rtol=0)
    torch.testing.assert_close(steps[-1][1], final[1], atol=1e-5, rtol=0)
    _, s1 = m(x[:3])  # state carried into the next chunk keeps the graph: gradient reaches chunk 1
    out2, _ = m(x[3:], s1)
    g = torch.autograd.grad(out2.sum(), m.weight_ih_l0)[0]
    assert bool(torch.isfinite(g).all()) and g.abs().sum() > 0


def test_zoneout_rejects_bad_probability():
    with pytest.raises(ValueError, match=r"Expected zoneout to be a float in \[0, 1\), got 1.0"):
        RNNStack("lstm", F, H, zoneout=1.0)
    assert "zoneout=0.1" in repr(RNNStack("gru", F, H, zoneout=0.1))


@pytest.mark.parametrize("kwargs", [{"recurrent_dropout": 0.3, "recurrent_dropout_mode": "state"},
                                    {"zoneout": 0.2}])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_hand_written_recurrence_refuses_double_backward_clearly(cell, kwargs):
    """Second-order gradients through the hand-written LSTM / GRU backward raise instead of coming back None."""
    m = RNNStack(cell, F, H, **kwargs)
    out, _ = m(torch.randn(N, L, F))
    with pytest.raises(RuntimeError, match=rf"Double backward \(create_graph=True\) through RNNStack's per-step "
                       rf"{cell.upper()}"):
        torch.autograd.grad(out.square().sum(), m.weight_hh_l0, create_graph=True, retain_graph=True)
    (g,) = torch.autograd.grad(out.square().sum(), m.weight_hh_l0)  # first order is fine
    assert g.abs().sum() > 0


@pytest.mark.parametrize(
    ("cell", "lengths", "second_order"),
    [("rnn", None, False), ("rnn", [3, 2], False), ("gru", [3, 2], True), ("lstm", [3, 2], True),
     ("lstm", None, True), ("gru", None, True)],
)
def test_autograd_step_loop_supports_double_backward(float64, cell, lengths, second_order):
    """The tanh RNN and ``second_order=True`` run the autograd step loop: any order of derivatives."""
    m = RNNStack(cell, 3, 3, zoneout=0.2, recurrent_dropout=0.3, recurrent_dropout_mode="state",
                 second_order=second_order)
    m.mc_dropout = True  # masks drawn in eval too; the seed fixes them
    m.eval()
    x = torch.randn(2, 3, 3, requires_grad=True)
    w = m.weight_hh_l0
    lengths = None if lengths is None else torch.tensor(lengths)

    def fn(x, w):
        torch.manual_seed(0)
        return torch.func.functional_call(m, {"weight_hh_l0": w}, (x,), {"lengths": lengths})[0]

    assert torch.autograd.gradgradcheck(fn, (x, w))
    if second_order:  # the same function as the default hand-written recurrence
        with torch.no_grad():
            out_autograd = fn(x, w)
            m.second_order = False
            torch.testing.assert_close(fn(x, w), out_autograd, atol=1e-12, rtol=0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_packed_rows_through_the_hand_written_recurrence_equal_the_autograd_loop(float64, cell):
    """With lengths, LSTM/GRU pad the rows and freeze the steps past each row's end: the same function (values
    and gradients, final states at each row's last step) as the packed autograd step loop."""
    kw = {"zoneout": 0.2, "recurrent_dropout": 0.3, "recurrent_dropout_mode": "state", "bidirectional": True}
    m = RNNStack(cell, F, H, 2, **kw)
    ref = RNNStack(cell, F, H, 2, second_order=True, **kw)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(N, L, F, requires_grad=True)
    lengths = torch.tensor([3, L, 1, 5])
    results = []
    for model in (m, ref):
        torch.manual_seed(4)
        out, s = model(x, lengths=lengths)
        parts = list(s) if cell == "lstm" else [s]
        loss = out.square().sum() + sum((p * torch.arange(p.numel()).view_as(p)).sum() for p in parts)
        results.append([out, *parts, *torch.autograd.grad(loss, [x, *model.parameters()])])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
