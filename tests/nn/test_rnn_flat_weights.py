"""RNNStack's weight layout for cuDNN: flattened parameters and one-chunk weights for the other calls.

On CUDA the flattening itself is ``torch._cudnn_rnn_flatten_weight`` (as ``torch.nn.LSTM``); here on CPU
the pieces that decide what the kernel gets are checked: the one-chunk packing is exact in value and
gradient, and ``flatten_parameters`` / ``.to()`` keep the parameters what they were.
"""

from __future__ import annotations

import pytest
import torch
from torch import _VF

from lightning_rnn.nn import RNNStack
from lightning_rnn.nn.rnn import _is_one_chunk, _one_chunk


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_one_chunk_weights_are_exact_in_value_and_gradient(cell):
    m = RNNStack(cell, 4, 5, 2, bidirectional=True, recurrent_dropout=0.5)
    weights = m._flat_weights()
    assert not _is_one_chunk(weights)  # separate parameters on CPU
    packed = _one_chunk(weights)
    assert _is_one_chunk(packed) and all(torch.equal(a, b) for a, b in zip(packed, weights))
    x = torch.randn(6, 3, 4)
    h = m.init_state(3)
    kernel = {"rnn": _VF.rnn_tanh, "lstm": _VF.lstm, "gru": _VF.gru}[cell]
    outs = [kernel(x, h, w, True, 2, 0.0, True, True, False)[0] for w in (weights, packed)]
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)
    g = [torch.autograd.grad(o.square().sum(), weights) for o in outs]
    for a, b in zip(*g):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_flatten_and_to_keep_parameters():
    m = RNNStack("lstm", 4, 5, 2)
    names = [n for n, _ in m.named_parameters()]
    params = list(m.parameters())
    m.flatten_parameters()  # no-op on CPU
    assert all(a is b for a, b in zip(params, m.parameters()))
    m = m.double()
    assert [n for n, _ in m.named_parameters()] == names
    assert all(isinstance(p, torch.nn.Parameter) and p.dtype == torch.float64 for p in m.parameters())
    out, (h, c) = m(torch.randn(2, 3, 4, dtype=torch.float64))
    assert h.dtype == torch.float64
