"""RNNStack without dropout equals torch.nn.RNN / LSTM / GRU (ground truth) with the same weights."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lightning_rnn.nn import RNNStack

TORCH_RNN = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
N, L, F, H = 3, 6, 5, 7


def _pair(cell, num_layers, bidirectional, batch_first, bias=True):
    ref = TORCH_RNN[cell](F, H, num_layers, bias=bias, bidirectional=bidirectional, batch_first=batch_first)
    ours = RNNStack(cell, F, H, num_layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _close(a, b, atol=1e-6):
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, atol=atol, rtol=0)
    else:
        torch.testing.assert_close(a, b, atol=atol, rtol=0)


CONFIGS = list(itertools.product(["rnn", "lstm", "gru"], [1, 2, 3], [False, True], [False, True]))


@pytest.mark.parametrize(("cell", "num_layers", "bidirectional", "batch_first"), CONFIGS)
def test_equals_torch(cell, num_layers, bidirectional, batch_first):
    ref, ours = _pair(cell, num_layers, bidirectional, batch_first)
    x = torch.randn(N, L, F) if batch_first else torch.randn(L, N, F)
    state = ours.init_state(N)
    state = tuple(torch.randn_like(s) for s in state) if cell == "lstm" else torch.randn_like(state)
    for s in (None, state):
        out_ref, st_ref = ref(x, s)
        out, st = ours(x, s)
        assert out.shape == ((N, L, ours.output_size) if batch_first else (L, N, ours.output_size))
        _close(out, out_ref)
        _close(st, st_ref)


@pytest.mark.parametrize(("cell", "num_layers", "bidirectional", "batch_first"), CONFIGS)
def test_lengths_equal_packed_torch(cell, num_layers, bidirectional, batch_first):
    ref, ours = _pair(cell, num_layers, bidirectional, batch_first)
    x = torch.randn(N, L, F) if batch_first else torch.randn(L, N, F)
    lengths = torch.tensor([2, L, 4])  # unsorted, one full-length row
    packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    out_ref, st_ref = ref(packed)
    out_ref, _ = pad_packed_sequence(out_ref, batch_first=batch_first, total_length=L)
    out, st = ours(x, lengths=lengths)
    _close(out, out_ref)
    _close(st, st_ref)
    # outputs past each row's length are exactly zero
    out_bf = out if batch_first else out.transpose(0, 1)
    for row, n in enumerate(lengths.tolist()):
        assert bool((out_bf[row, n:] == 0).all())


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_lengths_final_state_at_true_last_step(cell):
    """The final state of a padded row equals running that row alone, unpadded (never taken at a pad)."""
    ours = RNNStack(cell, F, H, 2, bidirectional=True)
    x = torch.randn(N, L, F)
    lengths = torch.tensor([3, L, 1])
    _, st = ours(x, lengths=lengths)
    for row, n in enumerate(lengths.tolist()):
        _, st_row = ours(x[row : row + 1, :n])
        got = st if cell != "lstm" else st[0]
        want = st_row if cell != "lstm" else st_row[0]
        torch.testing.assert_close(got[:, row : row + 1], want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_packed_input_with_state(cell):
    ref, ours = _pair(cell, 2, True, True)
    x = torch.randn(N, L, F)
    packed = pack_padded_sequence(x, torch.tensor([4, 2, L]), batch_first=True, enforce_sorted=False)
    state = ours.init_state(N)
    state = tuple(torch.randn_like(s) for s in state) if cell == "lstm" else torch.randn_like(state)
    out_ref, st_ref = ref(packed, state)
    out, st = ours(packed, state)
    assert isinstance(out, torch.nn.utils.rnn.PackedSequence)
    _close(out.data, out_ref.data)
    torch.testing.assert_close(out.batch_sizes, out_ref.batch_sizes)
    _close(st, st_ref)


def test_no_bias_and_lengths_on_other_int_dtype():
    ref, ours = _pair("gru", 2, False, True, bias=False)
    assert not any("bias" in name for name, _ in ours.named_parameters())
    x = torch.randn(N, L, F)
    _close(ours(x)[0], ref(x)[0])
    out, _ = ours(x, lengths=torch.tensor([1, 2, 3], dtype=torch.int32))
    assert out.shape == (N, L, H)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_state_dict_round_trip_both_ways(cell, bidirectional):
    ours = RNNStack(cell, F, H, 2, bidirectional=bidirectional)
    ref = TORCH_RNN[cell](F, H, 2, bidirectional=bidirectional, batch_first=True)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ref.load_state_dict(ours.state_dict())  # ours -> torch
    x = torch.randn(N, L, F)
    _close(ours(x)[0], ref(x)[0])
    other = RNNStack(cell, F, H, 2, bidirectional=bidirectional)
    other.load_state_dict(ref.state_dict())  # torch -> ours
    _close(other(x)[0], ref(x)[0])


def test_parameter_shapes_and_init_match_torch():
    ours = RNNStack("lstm", F, H, 2, bidirectional=True)
    ref = torch.nn.LSTM(F, H, 2, bidirectional=True)
    for (n1, p1), (n2, p2) in zip(ours.named_parameters(), ref.named_parameters()):
        assert n1 == n2 and p1.shape == p2.shape
        assert float(p1.detach().abs().max()) <= 1 / H**0.5
    assert set(ours.recurrent_weights()) == {"weight_hh_l0", "weight_hh_l0_reverse", "weight_hh_l1", "weight_hh_l1_reverse"}


def test_public_attributes_and_init_state():
    m = RNNStack("gru", 4, 6, 3, bidirectional=True, batch_first=False)
    assert (m.cell, m.input_size, m.hidden_size, m.num_layers) == ("gru", 4, 6, 3)
    assert (m.bidirectional, m.num_directions, m.batch_first, m.output_size) == (True, 2, False, 12)
    h = m.init_state(5, dtype=torch.float64)
    assert h.shape == (6, 5, 6) and h.dtype == torch.float64 and not h.any()
    h, c = RNNStack("lstm", 4, 6).init_state(2)
    assert h.shape == c.shape == (1, 2, 6)


def test_gradients_match_torch():
    ref, ours = _pair("lstm", 2, True, True)
    x = torch.randn(N, L, F)
    ref(x)[0].square().sum().backward()
    ours(x)[0].square().sum().backward()
    for (name, p1), p2 in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, atol=1e-5, rtol=0, msg=name)
