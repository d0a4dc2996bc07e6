"""RNNStack under torch.autocast (bf16 / fp16 on CPU): every path trains and evaluates with carried state.

The contract: the returned state is always in the parameters' dtype (float32 here), an incoming state of
any floating dtype is accepted, and gradients under autocast are finite and close to the float32 ones
computed with the same dropout draws. Where this CPU's oneDNN has no bf16 LSTM kernel
(``tests/_cpu_features.py``) RNNStack runs its fused LSTM call in float32 by itself; the same tests run
on both kinds of CPU, and a subprocess test forces the kernel-less kind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lightning_rnn.nn import RNNStack
from lightning_rnn.nn.rnn import _cpu_lowp_lstm_ok
from tests._cpu_features import cpu_bf16_lstm_supported

N, L, F, H = 3, 5, 4, 6
MODES = {
    "none": {},
    "locked": {"input_dropout": 0.2, "layer_dropout": 0.2, "output_dropout": 0.2},
    "weight": {"recurrent_dropout": 0.3, "recurrent_dropout_mode": "weight"},
    "state": {"recurrent_dropout": 0.3, "recurrent_dropout_mode": "state"},
    "zoneout": {"zoneout": 0.2},
    "state+zoneout+residual": {"recurrent_dropout": 0.3, "recurrent_dropout_mode": "state", "zoneout": 0.2,
                               "residual": True},
}


def _parts(state):
    return list(state) if isinstance(state, tuple) else [state]


def _two_chunks(m, x, lengths, amp_dtype, seed=0):
    """Two calls with the state carried from the first into the second (truncated BPTT), one loss."""
    torch.manual_seed(seed)
    x1, x2 = x[:, :3], x[:, 3:]
    l1 = None if lengths is None else lengths.clamp(max=3)
    l2 = None if lengths is None else (lengths - 3).clamp(min=1)
    with torch.autocast("cpu", dtype=amp_dtype, enabled=amp_dtype is not None):
        out1, s1 = m(x1, lengths=l1)
        out2, s2 = m(x2, s1, lengths=l2)
        loss = out1.float().square().mean() + out2.float().square().mean() + sum(s.float().sum() for s in _parts(s2))
    grads = torch.autograd.grad(loss, list(m.parameters()))
    return (out1, out2), (s1, s2), torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize(("bidirectional", "packed"), [(False, False), (True, True)])
def test_bf16_autocast_trains_with_carried_state_close_to_fp32(cell, mode, bidirectional, packed):
    torch.manual_seed(0)
    m = RNNStack(cell, F, H, 2, bidirectional=bidirectional, **MODES[mode])
    x = torch.randn(N, L, F)
    lengths = torch.tensor([L, 4, 5]) if packed else None
    outs, states, g16 = _two_chunks(m, x, lengths, torch.bfloat16)
    for s in states:
        assert all(t.dtype == torch.float32 for t in _parts(s))  # one documented dtype, every chunk
    assert bool(torch.isfinite(g16).all()) and bool(g16.abs().sum() > 0)
    _, states32, g32 = _two_chunks(m, x, lengths, None)  # same seed: the same dropout draws
    rel = float((g16 - g32).norm() / g32.norm())
    assert rel < 0.06, rel
    for a, b in zip(_parts(states[1]), _parts(states32[1])):
        torch.testing.assert_close(a, b, atol=0.05, rtol=0.05)
    m.eval()  # evaluation under autocast, carried state
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        _, s = m(x, lengths=lengths)
        out, s = m(x, s, lengths=lengths)
    assert all(t.dtype == torch.float32 for t in _parts(s)) and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("mode", ["none", "weight", "state", "zoneout"])
def test_fp16_autocast_on_cpu_returns_float32_state(mode):
    """fp16 autocast (the dtype cuDNN's fused RNN returns its state in): same contract."""
    torch.manual_seed(0)
    m = RNNStack("lstm", F, H, 2, **MODES[mode])
    x = torch.randn(N, L, F)
    outs, states, g = _two_chunks(m, x, None, torch.float16)
    assert all(t.dtype == torch.float32 for s in states for t in _parts(s))
    assert bool(torch.isfinite(g).all())


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("state_dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_incoming_state_of_another_float_dtype_is_cast(cell, state_dtype):
    m = RNNStack(cell, F, H, 2, recurrent_dropout=0.3, recurrent_dropout_mode="state")
    m.eval()
    x = torch.randn(N, L, F)
    h = m.init_state(N)
    state = tuple(torch.randn_like(t) for t in h) if cell == "lstm" else torch.randn_like(h)
    low = tuple(t.to(state_dtype) for t in _parts(state)) if cell == "lstm" else state.to(state_dtype)
    ref = tuple(t.float() for t in _parts(low)) if cell == "lstm" else low.float()
    out, s = m(x, low)
    out_ref, s_ref = m(x, ref)
    torch.testing.assert_close(out, out_ref, atol=0, rtol=0)
    assert all(t.dtype == torch.float32 for t in _parts(s))


def test_state_mode_recurrence_runs_in_autocast_dtype_and_matches_autograd_loop():
    """The hand-written LSTM recurrence under autocast: bf16 throughout, equal to the autograd step loop."""
    from lightning_rnn.nn._recurrence import lstm_recurrence, step_loop

    torch.manual_seed(0)
    xp = torch.randn(L, N, 4 * H, requires_grad=True)
    h0, c0 = torch.randn(N, H, requires_grad=True), torch.randn(N, H, requires_grad=True)
    w = torch.randn(4 * H, H, requires_grad=True)
    mask = (torch.rand(N, H) > 0.3).float() / 0.7
    zh, zc = (torch.rand(L, N, H) < 0.2).float(), (torch.rand(L, N, H) < 0.2).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, hn, cn = lstm_recurrence(xp, h0, c0, w, mask, zh, zc)
        ref_steps, ref_h, ref_c = step_loop("lstm", list(xp.unbind(0)), h0, c0, w, None, mask, False, zh, zc)
    ref = torch.stack(ref_steps)
    assert out.dtype == hn.dtype == cn.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)
    inputs = (xp, h0, c0, w)
    g = torch.autograd.grad((out.float() ** 2).sum() + cn.float().sum(), inputs)
    g_ref = torch.autograd.grad((ref.float() ** 2).sum() + ref_c.float().sum(), inputs)
    for a, b in zip(g, g_ref):
        assert a.dtype == torch.float32  # gradients come back in the inputs' dtype
        assert float((a - b).norm() / b.norm()) < 0.03


def test_fallback_matches_the_cpu_feature_probe():
    assert _cpu_lowp_lstm_ok(torch.bfloat16) == cpu_bf16_lstm_supported()


def test_without_a_bf16_lstm_kernel_the_fused_call_runs_in_float32():
    """A CPU whose oneDNN lacks the bf16 LSTM primitive (forced with ONEDNN_MAX_CPU_ISA=AVX2)."""
    code = textwrap.dedent(
        """
        import torch
        from lightning_rnn.nn import RNNStack
        from lightning_rnn.nn.rnn import _cpu_lowp_lstm_ok
        m = RNNStack("lstm", 4, 6, 2, bidirectional=True)
        x = torch.randn(3, 5, 4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, s = m(x)
            out, s = m(x, s)
        out.float().sum().backward()
        assert s[0].dtype == s[1].dtype == torch.float32
        assert all(bool(torch.isfinite(p.grad).all()) for p in m.parameters())
        print("lowp-kernel", _cpu_lowp_lstm_ok(torch.bfloat16), out.dtype)
        """
    )
    root = str(Path(__file__).resolve().parents[2])  # the repository: import this checkout's lightning_rnn
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "PYTHONPATH": root}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    if "lowp-kernel False" in res.stdout:  # (a oneDNN build may ignore ONEDNN_MAX_CPU_ISA)
        assert "torch.float32" in res.stdout  # the fused call ran in float32 instead of failing


@pytest.mark.parametrize("batch_first", [True, False])
def test_step_tied_masks_keep_the_activations_dtype(batch_first):
    """A float32 mask drawn for a bf16 activation does not promote it to float32 (an autocast run keeps
    its dtype through input / layer / output dropout), and the values are the bf16 product."""
    from lightning_rnn.nn.dropout import _apply_row_mask

    x = torch.randn(N, L, F).to(torch.bfloat16)
    mask = torch.bernoulli(torch.full((N, F), 0.7)) / 0.7
    out = _apply_row_mask(x if batch_first else x.transpose(0, 1), mask, batch_first=batch_first)
    assert out.dtype == torch.bfloat16
    expected = x * mask.to(torch.bfloat16).unsqueeze(1)
    torch.testing.assert_close(out if batch_first else out.transpose(0, 1), expected, rtol=0, atol=0)


def test_locked_dropout_under_bf16_autocast_returns_autocast_dtype():
    m = RNNStack("gru", F, H, 2, recurrent_dropout=0.3, recurrent_dropout_mode="state", output_dropout=0.3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, state = m(torch.randn(N, L, F))
    assert out.dtype == torch.bfloat16 and state.dtype == torch.float32
