"""Per-step recurrences of one RNN / LSTM / GRU direction: Gal's mask on h_{t-1} and zoneout.

``RNNStack`` runs these for ``recurrent_dropout_mode="state"`` (Gal & Ghahramani 2016: one mask per
sequence on h_{t-1} in the recurrent product, the same at every step) and for ``zoneout`` (Krueger et al.
2016: every unit keeps its previous value with probability p at every step). The input projection
x @ W_ih^T (+ biases) of the whole sequence is computed outside, in one matmul; only the recurrent part
runs step by step.

- :func:`lstm_recurrence` — LSTM on a padded (L, N, 4H) projection: a hand-written ``autograd.Function``.
  Autograd through a Python step loop records ~15 nodes per step and computes the ``weight_hh`` gradient
  as L small products; this runs the loop without recording, keeps what the backward needs in
  preallocated (L, N, *) buffers and computes the weight gradient as ONE (4H, L*N) @ (L*N, H) product.
  Their backward is not differentiable: a double backward (``create_graph=True``) raises.
- :func:`gru_recurrence` — the same for GRU.
- :func:`step_loop` — every cell, padded or packed rows, through ordinary autograd (slower, but any order
  of derivatives): the tanh RNN and ``RNNStack(second_order=True)`` use it.

Zoneout with keep-previous weights z_t (N, H) (Bernoulli(p) draws in training, the constant p in eval):
h_t = h̃_t + z_t ⊙ (h_{t-1} − h̃_t), and for LSTM c_t likewise with its own weights, where h̃_t, c̃_t are
the cell's ordinary update (h̃_t = o_t ⊙ tanh(c̃_t)).

Mixed precision: under ``torch.autocast`` both recurrences run every operation in autocast's dtype
(bf16 / fp16; float64 stays float64, as autocast leaves it) with autocast itself switched off inside, so
forward and backward see one dtype; the callers cast the returned state to the dtype they document.

Symbols: L steps, N batch, H hidden size, G gates (LSTM i, f, g, o; GRU r, z, n), torch's gate order.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Zoneout", "autocast_dtype", "gru_recurrence", "lstm_recurrence", "step_loop"]

#: Zoneout weights of one direction: per-step (L, N, H) keep-previous draws, a constant p (eval), or None.
Zoneout = Tensor | float | None

_DOUBLE_BACKWARD = (
    "Double backward (create_graph=True) through RNNStack's per-step LSTM recurrence "
    "(recurrent_dropout_mode='state' or zoneout) is not supported: its backward is hand-written. Construct "
    "the RNNStack with second_order=True (or set rnn.second_order = True) to run it through autograd, or use "
    "recurrent_dropout_mode='weight' and zoneout=0"
)


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """Autocast's lower-precision dtype if autocast is enabled for ``device_type`` here, else None."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device_type argument
        enabled = torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
    if not enabled:
        return None
    if hasattr(torch, "get_autocast_dtype"):
        return torch.get_autocast_dtype(device_type)
    return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()


def _compute_dtype(device_type: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype a recurrence runs in: autocast's where autocast would cast ``dtype``, else ``dtype``."""
    amp = autocast_dtype(device_type)
    return amp if amp is not None and dtype != torch.float64 else dtype


def _cast(t: Tensor | float | None, dtype: torch.dtype) -> Tensor | float | None:
    return t.to(dtype) if isinstance(t, Tensor) else t


def _at(z: Zoneout, t: int) -> Tensor | float:
    return z[t] if isinstance(z, Tensor) else z  # type: ignore[return-value]


class _LSTMRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xp, h0, c0, w_hh, mask, zh, zc):  # type: ignore[override]
        # xp (L, N, 4H) = x @ W_ih^T + b_ih + b_hh; h0, c0, mask (N, H); w_hh (4H, H); zh, zc: Zoneout
        length, n, four_h = xp.shape
        hid = four_h // 4
        w_t = w_hh.t()
        act = torch.empty_like(xp)  # activated gates (L, N, 4H)
        cs = xp.new_empty(length + 1, n, hid)  # c_{-1} .. c_{L-1} (after zoneout)
        tanh_c = xp.new_empty(length, n, hid)  # tanh(c̃_t) of the ordinary update
        out = xp.new_empty(length, n, hid)  # h_0 .. h_{L-1} (after zoneout)
        cs[0] = c0
        h = h0
        for t in range(length):
            a = act[t]
            torch.addmm(xp[t], h if mask is None else h * mask, w_t, out=a)
            a[:, : 2 * hid].sigmoid_()
            a[:, 2 * hid : 3 * hid].tanh_()
            a[:, 3 * hid :].sigmoid_()
            c = cs[t + 1]
            torch.mul(a[:, hid : 2 * hid], cs[t], out=c)
            c.addcmul_(a[:, :hid], a[:, 2 * hid : 3 * hid])  # c̃_t
            torch.tanh(c, out=tanh_c[t])
            torch.mul(a[:, 3 * hid :], tanh_c[t], out=out[t])  # h̃_t
            if zc is not None:
                c.lerp_(cs[t], _at(zc, t))  # c_t = c̃_t + z (c_{t-1} - c̃_t)
            if zh is not None:
                out[t].lerp_(h, _at(zh, t))
            h = out[t]
        ctx.zoneout = (zh if not isinstance(zh, Tensor) else None, zc if not isinstance(zc, Tensor) else None)
        ctx.save_for_backward(
            act, cs, tanh_c, out, h0, w_hh, mask,
            zh if isinstance(zh, Tensor) else None, zc if isinstance(zc, Tensor) else None,
        )
        return out, out[-1].clone(), cs[-1].clone()

    @staticmethod
    def backward(ctx, d_out, d_hn, d_cn):  # type: ignore[override]
        if torch.is_grad_enabled():
            raise RuntimeError(_DOUBLE_BACKWARD)
        act, cs, tanh_c, out, h0, w_hh, mask, zh_t, zc_t = ctx.saved_tensors
        zh = zh_t if zh_t is not None else ctx.zoneout[0]
        zc = zc_t if zc_t is not None else ctx.zoneout[1]
        with torch.autocast(act.device.type, enabled=False):
            length, n, four_h = act.shape
            hid = four_h // 4
            # local derivatives of the activations, vectorised over all steps
            dact = act * (1 - act)  # sigmoid' for i, f, o
            g = act[..., 2 * hid : 3 * hid]
            dact[..., 2 * hid : 3 * hid] = 1 - g * g  # tanh' for g
            k = act[..., 3 * hid :] * (1 - tanh_c * tanh_c)  # dc̃_t/dh̃_t through h̃ = o * tanh(c̃)
            d_gates = torch.empty_like(act)
            dh = d_hn.clone()
            dc = d_cn.clone()
            for t in range(length - 1, -1, -1):
                dh.add_(d_out[t])  # dL/dh_t
                a = act[t]
                dh_keep = dc_keep = None
                if zh is not None:  # h_t = h̃_t + z (h_{t-1} - h̃_t)
                    z = _at(zh, t)
                    dh_keep = dh * z
                    dh.mul_(1 - z)  # dL/dh̃_t
                if zc is not None:
                    z = _at(zc, t)
                    dc_keep = dc * z
                    dc.mul_(1 - z)
                dc.addcmul_(dh, k[t])  # dL/dc̃_t
                u = d_gates[t]
                torch.mul(dc, a[:, 2 * hid : 3 * hid], out=u[:, :hid])  # d i
                torch.mul(dc, cs[t], out=u[:, hid : 2 * hid])  # d f
                torch.mul(dc, a[:, :hid], out=u[:, 2 * hid : 3 * hid])  # d g
                torch.mul(dh, tanh_c[t], out=u[:, 3 * hid :])  # d o
                u.mul_(dact[t])  # through the activations: d pre-activation gates
                dc.mul_(a[:, hid : 2 * hid])  # dc_{t-1}
                if dc_keep is not None:
                    dc.add_(dc_keep)
                dh = torch.mm(u, w_hh)  # dh_{t-1}
                if mask is not None:
                    dh.mul_(mask)
                if dh_keep is not None:
                    dh.add_(dh_keep)
            d_w = None
            if ctx.needs_input_grad[3]:
                h_prev = torch.cat([h0.unsqueeze(0), out[:-1]])  # (L, N, H): the recurrent product's input
                if mask is not None:
                    h_prev = h_prev * mask
                d_w = torch.mm(d_gates.view(-1, four_h).t(), h_prev.view(-1, hid))  # (4H, H), one product
        return d_gates, dh, dc, d_w, None, None, None


def lstm_recurrence(
    xp: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_hh: Tensor,
    mask: Tensor | None = None,
    zoneout_h: Zoneout = None,
    zoneout_c: Zoneout = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """LSTM recurrence with h_{t-1} multiplied by ``mask`` in the recurrent product, and zoneout.

    Inputs:
        xp: (L, N, 4H) input projections x_t @ W_ih^T + b_ih + b_hh.
        h0, c0: (N, H) initial state.
        w_hh: (4H, H) hidden-to-hidden weight.
        mask: (N, H) per-sequence mask on h_{t-1} (already scaled by 1/(1-p)), or None; no gradient.
        zoneout_h, zoneout_c: keep-previous weights of h and c, see :data:`Zoneout`; no gradient.

    Outputs:
        out (L, N, H), h_n (N, H), c_n (N, H), in the compute dtype (see the module docstring).
    """
    dt = _compute_dtype(xp.device.type, w_hh.dtype)
    args = [_cast(t, dt) for t in (xp, h0, c0, w_hh, mask, zoneout_h, zoneout_c)]
    with torch.autocast(xp.device.type, enabled=False):
        return _LSTMRecurrence.apply(args[0].contiguous(), *args[1:])


class _GRURecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xp, h0, w_hh, b_hh, mask, zh):  # type: ignore[override]
        # xp (L, N, 3H) = x @ W_ih^T + b_ih; h0, mask (N, H); w_hh (3H, H); b_hh (3H,) or None; zh: Zoneout
        length, n, three_h = xp.shape
        hid = three_h // 3
        w_t = w_hh.t()
        act = torch.empty_like(xp)  # r, z, n (L, N, 3H)
        gh = torch.empty_like(xp)  # (h_{t-1} * mask) @ W_hh^T + b_hh (L, N, 3H); its n part is needed back
        out = xp.new_empty(length, n, hid)  # h_0 .. h_{L-1} (after zoneout)
        h = h0
        for t in range(length):
            a, g = act[t], gh[t]
            hm = h if mask is None else h * mask
            if b_hh is None:
                torch.mm(hm, w_t, out=g)
            else:
                torch.addmm(b_hh, hm, w_t, out=g)
            torch.add(xp[t, :, : 2 * hid], g[:, : 2 * hid], out=a[:, : 2 * hid]).sigmoid_()  # r, z
            nt = a[:, 2 * hid :]
            torch.addcmul(xp[t, :, 2 * hid :], a[:, :hid], g[:, 2 * hid :], out=nt).tanh_()  # n
            o = out[t]
            torch.sub(h, nt, out=o)
            o.mul_(a[:, hid : 2 * hid]).add_(nt)  # h̃ = n + z (h_{t-1} - n)
            if zh is not None:
                o.lerp_(h, _at(zh, t))
            h = o
        ctx.zoneout = zh if not isinstance(zh, Tensor) else None
        ctx.has_bias = b_hh is not None
        ctx.save_for_backward(act, gh, out, h0, w_hh, mask, zh if isinstance(zh, Tensor) else None)
        return out, out[-1].clone()

    @staticmethod
    def backward(ctx, d_out, d_hn):  # type: ignore[override]
        if torch.is_grad_enabled():
            raise RuntimeError(_DOUBLE_BACKWARD.replace("LSTM", "GRU"))
        act, gh, out, h0, w_hh, mask, zh_t = ctx.saved_tensors
        zh = zh_t if zh_t is not None else ctx.zoneout
        with torch.autocast(act.device.type, enabled=False):
            length, n, three_h = act.shape
            hid = three_h // 3
            rz = act[..., : 2 * hid]
            d_rz = rz * (1 - rz)  # sigmoid' of r and z, all steps
            n_all = act[..., 2 * hid :]
            d_n = 1 - n_all * n_all  # tanh' of n
            one_minus_z = 1 - act[..., hid : 2 * hid]
            h_prev = torch.cat([h0.unsqueeze(0), out[:-1]])  # (L, N, H)
            d_xp = torch.empty_like(act)
            d_gh = torch.empty_like(act)
            dh = d_hn.clone()
            for t in range(length - 1, -1, -1):
                dh.add_(d_out[t])  # dL/dh_t
                keep = None
                if zh is not None:
                    z_keep = _at(zh, t)
                    keep = dh * z_keep
                    dh.mul_(1 - z_keep)  # dL/dh̃_t
                a, dx, dg = act[t], d_xp[t], d_gh[t]
                dxr, dxz, dxn = dx[:, :hid], dx[:, hid : 2 * hid], dx[:, 2 * hid :]
                torch.mul(dh, one_minus_z[t], out=dxn).mul_(d_n[t])  # d pre-activation of n
                torch.sub(h_prev[t], a[:, 2 * hid :], out=dxz).mul_(dh).mul_(d_rz[t, :, hid:])  # d pre z
                torch.mul(dxn, gh[t, :, 2 * hid :], out=dxr).mul_(d_rz[t, :, :hid])  # d pre r
                dg[:, : 2 * hid].copy_(dx[:, : 2 * hid])
                torch.mul(dxn, a[:, :hid], out=dg[:, 2 * hid :])  # d (W_hn h + b_hn)
                dh_new = torch.mm(dg, w_hh)  # through the recurrent product
                if mask is not None:
                    dh_new.mul_(mask)
                dh_new.addcmul_(dh, a[:, hid : 2 * hid])  # through z * h_{t-1}
                if keep is not None:
                    dh_new.add_(keep)
                dh = dh_new
            d_w = d_b = None
            if ctx.needs_input_grad[2]:
                hm = h_prev if mask is None else h_prev * mask
                d_w = torch.mm(d_gh.view(-1, three_h).t(), hm.view(-1, hid))  # (3H, H), one product
            if ctx.has_bias and ctx.needs_input_grad[3]:
                d_b = d_gh.sum((0, 1))
        return d_xp, dh, d_w, d_b, None, None


def gru_recurrence(
    xp: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    b_hh: Tensor | None,
    mask: Tensor | None = None,
    zoneout_h: Zoneout = None,
) -> tuple[Tensor, Tensor]:
    """GRU recurrence with h_{t-1} multiplied by ``mask`` in the recurrent product, and zoneout.

    torch's GRU: r, z = σ(x W_ir,z + b_ir,z + (h m) W_hr,z + b_hr,z); n = tanh(x W_in + b_in +
    r ⊙ ((h m) W_hn + b_hn)); h̃ = (1 - z) ⊙ n + z ⊙ h_{t-1} (the unmasked h).

    Inputs:
        xp: (L, N, 3H) input projections x_t @ W_ih^T + b_ih (b_hh is NOT included: it sits inside r * (.)).
        h0: (N, H) initial state.
        w_hh: (3H, H) hidden-to-hidden weight; b_hh: (3H,) or None.
        mask: (N, H) per-sequence mask on h_{t-1}, or None; zoneout_h: see :data:`Zoneout`. No gradient.

    Outputs:
        out (L, N, H), h_n (N, H), in the compute dtype (see the module docstring).
    """
    dt = _compute_dtype(xp.device.type, w_hh.dtype)
    args = [_cast(t, dt) for t in (xp, h0, w_hh, b_hh, mask, zoneout_h)]
    with torch.autocast(xp.device.type, enabled=False):
        return _GRURecurrence.apply(args[0].contiguous(), *args[1:])


def step_loop(
    cell: str,
    steps: list[Tensor],
    h: Tensor,
    c: Tensor | None,
    w_hh: Tensor,
    b_hh: Tensor | None,
    mask: Tensor | None,
    reverse: bool,
    zoneout_h: Zoneout = None,
    zoneout_c: Zoneout = None,
) -> tuple[list[Tensor], Tensor, Tensor | None]:
    """One direction of one layer step by step through autograd, with a mask on h_{t-1} and zoneout.

    ``steps[t]`` is the precomputed input projection (n_t, G*H) of step t (for LSTM and RNN it includes
    b_hh; for GRU it does not, b_hh sits inside r * (W_hn h + b_hn)). ``n_t`` rows: in a packed sequence
    the active rows are a prefix, sorted by decreasing length; the others keep their state. ``mask``
    (N, H) multiplies h_{t-1} in the recurrent product only (LSTM's c and GRU's z*h use the unmasked h).
    Zoneout weights (L, N, H) are indexed by the step's time index t and its active rows.

    Returns the per-step outputs (in time order), the final h (N, H) and c (LSTM, else None), in the
    compute dtype (see the module docstring).
    """
    dt = _compute_dtype(h.device.type, w_hh.dtype)
    with torch.autocast(h.device.type, enabled=False):
        steps = [s.to(dt) for s in steps]
        h, c, w_hh_t, b_hh, mask = (_cast(v, dt) for v in (h, c, w_hh.t(), b_hh, mask))
        zoneout_h, zoneout_c = _cast(zoneout_h, dt), _cast(zoneout_c, dt)
        return _step_loop(cell, steps, h, c, w_hh_t, b_hh, mask, reverse, zoneout_h, zoneout_c)


def _step_loop(cell, steps, h, c, w_hh_t, b_hh, mask, reverse, zh, zc):
    n, hidden = h.shape
    outs: list[Tensor] = [h] * len(steps)
    for t in range(len(steps) - 1, -1, -1) if reverse else range(len(steps)):
        xt = steps[t]
        bs = xt.shape[0]
        full = bs == n
        hp = h if full else h[:bs]
        hm = hp if mask is None else hp * (mask if full else mask[:bs])
        if cell == "lstm":
            cp = c if full else c[:bs]
            gates = torch.addmm(xt, hm, w_hh_t)  # (bs, 4H): i, f, g, o
            sig = torch.sigmoid(gates)
            i, f, _, o = sig.chunk(4, 1)
            g = torch.tanh(gates[:, 2 * hidden : 3 * hidden])
            c_new = torch.addcmul(f * cp, i, g)
            h_new = o * torch.tanh(c_new)
            if zc is not None:
                c_new = torch.lerp(c_new, cp, _rows(_at(zc, t), bs))
            c = c_new if full else torch.cat([c_new, c[bs:]])
        elif cell == "gru":
            gh = torch.mm(hm, w_hh_t) if b_hh is None else torch.addmm(b_hh, hm, w_hh_t)  # (bs, 3H): r, z, n
            rz = torch.sigmoid(xt[:, : 2 * hidden] + gh[:, : 2 * hidden])
            r, z = rz.chunk(2, 1)
            n_gate = torch.tanh(torch.addcmul(xt[:, 2 * hidden :], r, gh[:, 2 * hidden :]))
            h_new = torch.addcmul(n_gate, z, hp - n_gate)
        else:
            h_new = torch.tanh(torch.addmm(xt, hm, w_hh_t))
        if zh is not None:
            h_new = torch.lerp(h_new, hp, _rows(_at(zh, t), bs))
        outs[t] = h_new
        h = h_new if full else torch.cat([h_new, h[bs:]])
    return outs, h, c


def _rows(z: Tensor | float, bs: int) -> Tensor | float:
    return z[:bs] if isinstance(z, Tensor) else z
