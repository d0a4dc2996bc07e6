"""Hand-written forward/backward of one LSTM direction with a per-sequence mask on h_{t-1}.

Used by ``RNNStack`` for ``recurrent_dropout_mode="state"`` (Gal & Ghahramani 2016). Autograd through a
Python step loop records ~15 nodes per step and computes the ``weight_hh`` gradient as L small matrix
products; this ``autograd.Function`` runs the loop without recording, keeps what the backward needs in
preallocated (L, N, *) buffers, and computes the weight gradient as ONE (4H, L*N) @ (L*N, H) product
after the reverse loop. The input projection x @ W_ih^T + b is computed outside (one matmul for the
whole sequence) and its gradient flows back through ordinary autograd.

Symbols: L steps, N batch, H hidden size; gates in torch's order i, f, g, o.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


class _LSTMMaskedRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xp: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, mask: Tensor):  # type: ignore[override]
        # xp (L, N, 4H) = x @ W_ih^T + b_ih + b_hh; h0, c0, mask (N, H); w_hh (4H, H)
        length, n, four_h = xp.shape
        hid = four_h // 4
        w_t = w_hh.t()
        act = torch.empty_like(xp)  # activated gates (L, N, 4H)
        cs = xp.new_empty(length + 1, n, hid)  # c_{-1} .. c_{L-1}
        tanh_c = xp.new_empty(length, n, hid)
        out = xp.new_empty(length, n, hid)
        hm = xp.new_empty(length, n, hid)  # masked h_{t-1}, the recurrent product's input
        cs[0] = c0
        torch.mul(h0, mask, out=hm[0])
        for t in range(length):
            a = act[t]
            torch.addmm(xp[t], hm[t], w_t, out=a)
            a[:, : 2 * hid].sigmoid_()
            a[:, 2 * hid : 3 * hid].tanh_()
            a[:, 3 * hid :].sigmoid_()
            c = cs[t + 1]
            torch.mul(a[:, hid : 2 * hid], cs[t], out=c)
            c.addcmul_(a[:, :hid], a[:, 2 * hid : 3 * hid])
            torch.tanh(c, out=tanh_c[t])
            torch.mul(a[:, 3 * hid :], tanh_c[t], out=out[t])
            if t + 1 < length:
                torch.mul(out[t], mask, out=hm[t + 1])
        ctx.save_for_backward(act, cs, tanh_c, hm, w_hh, mask)
        return out, out[-1].clone(), cs[-1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out: Tensor, d_hn: Tensor, d_cn: Tensor):  # type: ignore[override]
        act, cs, tanh_c, hm, w_hh, mask = ctx.saved_tensors
        length, n, four_h = act.shape
        hid = four_h // 4
        # local derivatives of the activations, vectorised over all steps
        dact = act * (1 - act)  # sigmoid' for i, f, o
        g = act[..., 2 * hid : 3 * hid]
        dact[..., 2 * hid : 3 * hid] = 1 - g * g  # tanh' for g
        k = act[..., 3 * hid :] * (1 - tanh_c * tanh_c)  # dc_t/dh_t through h = o * tanh(c)
        d_gates = torch.empty_like(act)
        dh = d_hn.clone()
        dc = d_cn.clone()
        for t in range(length - 1, -1, -1):
            dh.add_(d_out[t])
            a = act[t]
            dc.addcmul_(dh, k[t])
            u = d_gates[t]
            torch.mul(dc, a[:, 2 * hid : 3 * hid], out=u[:, :hid])  # d i
            torch.mul(dc, cs[t], out=u[:, hid : 2 * hid])  # d f
            torch.mul(dc, a[:, :hid], out=u[:, 2 * hid : 3 * hid])  # d g
            torch.mul(dh, tanh_c[t], out=u[:, 3 * hid :])  # d o
            u.mul_(dact[t])  # through the activations: d pre-activation gates
            dc.mul_(a[:, hid : 2 * hid])  # dc_{t-1}
            dh = torch.mm(u, w_hh).mul_(mask)  # dh_{t-1}
        d_w = torch.mm(d_gates.view(-1, four_h).t(), hm.view(-1, hid))  # (4H, H), one product
        return d_gates, dh, dc, d_w, None


def lstm_masked_recurrence(
    xp: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """LSTM recurrence with h_{t-1} multiplied by ``mask`` in the recurrent product (c is not masked).

    Inputs:
        xp: (L, N, 4H) input projections x_t @ W_ih^T + b_ih + b_hh.
        h0, c0: (N, H) initial state.
        w_hh: (4H, H) hidden-to-hidden weight.
        mask: (N, H) per-sequence mask (already scaled by 1/(1-p)); no gradient.

    Outputs:
        out (L, N, H), h_n (N, H), c_n (N, H).
    """
    return _LSTMMaskedRecurrence.apply(xp.contiguous(), h0, c0, w_hh, mask)
