"""RNNStack's weight layout for cuDNN: flattened parameters and one-chunk weights for the other calls.

On CUDA the flattening itself is ``torch._cudnn_rnn_flatten_weight`` (as ``torch.nn.LSTM``); here on CPU
the pieces that decide what the kernel gets are checked: the one-buffer packing (at torch's concatenated
offsets, and at offsets with gaps as cuDNN's layout has) is exact in value and gradient, and
``flatten_parameters`` / ``.to()`` keep the parameters what they were.
"""

from __future__ import annotations

import pytest
import torch
from torch import _VF

from lightning_rnn.nn import RNNStack
from lightning_rnn.nn.rnn import _pack


def _is_one_chunk(weights: list[torch.Tensor]) -> bool:
    """Whether ``weights`` are consecutive contiguous views from the start of one storage."""
    ptr, offset = weights[0].untyped_storage().data_ptr(), 0
    for w in weights:
        if w.untyped_storage().data_ptr() != ptr or w.storage_offset() != offset or not w.is_contiguous():
            return False
        offset += w.numel()
    return True


def _one_chunk(weights: list[torch.Tensor], gap: int = 0) -> list[torch.Tensor]:
    """``_pack`` at torch's order, with ``gap`` unused elements before every weight (0: concatenated)."""
    offsets, cursor = [], 0
    for w in weights:
        offsets.append(cursor + gap)
        cursor += gap + w.numel()
    return _pack(weights, offsets, cursor + gap)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_one_chunk_weights_are_exact_in_value_and_gradient(cell):
    m = RNNStack(cell, 4, 5, 2, bidirectional=True, recurrent_dropout=0.5)
    weights = m._flat_weights()
    assert not _is_one_chunk(weights)  # separate parameters on CPU
    packed = _one_chunk(weights)
    assert _is_one_chunk(packed) and all(torch.equal(a, b) for a, b in zip(packed, weights))
    _assert_same_kernel_output_and_gradient(cell, m, weights, packed)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_packing_with_gaps_and_a_cast_is_exact(cell):
    """cuDNN's layout leaves gaps between the weights: they are zero-filled and never read; a cast to another
    dtype happens once for the whole buffer and is autograd-connected like the weights' own ``.to()``."""
    m = RNNStack(cell, 4, 5, 2, bidirectional=True, recurrent_dropout=0.5)
    weights = m._flat_weights()
    packed = _one_chunk(weights, gap=3)
    assert len({p.untyped_storage().data_ptr() for p in packed}) == 1
    assert all(torch.equal(a, b) for a, b in zip(packed, weights))
    _assert_same_kernel_output_and_gradient(cell, m, weights, packed)
    cast = _pack(weights, [p.storage_offset() for p in packed], packed[0].untyped_storage().nbytes() // 4,
                 dtype=torch.float64)
    assert all(c.dtype == torch.float64 and torch.equal(c, w.double()) for c, w in zip(cast, weights))
    grads = torch.autograd.grad(sum(c.square().sum() for c in cast), weights)
    for g, w in zip(grads, weights):
        torch.testing.assert_close(g, 2 * w.detach(), rtol=0, atol=0)


def _assert_same_kernel_output_and_gradient(cell, m, weights, packed):
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
