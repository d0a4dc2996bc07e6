"""Every documented bad input of RNNStack raises its error, and shapes hold for random configurations."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_rnn.nn import RNNStack


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"cell": "cnn"}, ValueError, r"Expected cell to be one of \['rnn', 'lstm', 'gru'\], got 'cnn'"),
        ({"input_size": 0}, ValueError, "Expected input_size to be an int >= 1, got 0"),
        ({"hidden_size": -3}, ValueError, "Expected hidden_size to be an int >= 1, got -3"),
        ({"num_layers": 0}, ValueError, "Expected num_layers to be an int >= 1, got 0"),
        ({"input_dropout": 1.0}, ValueError, r"Expected input_dropout to be a float in \[0, 1\), got 1.0"),
        ({"layer_dropout": -0.1}, ValueError, r"Expected layer_dropout to be a float in \[0, 1\)"),
        ({"output_dropout": 2}, ValueError, r"Expected output_dropout to be a float in \[0, 1\)"),
        ({"recurrent_dropout": 1.5}, ValueError, r"Expected recurrent_dropout to be a float in \[0, 1\)"),
        (
            {"recurrent_dropout_mode": "gate"},
            ValueError,
            r"Expected recurrent_dropout_mode to be one of \['weight', 'state'\], got 'gate'",
        ),
        ({"residual": True, "num_layers": 1}, ValueError, "Expected num_layers >= 2 for residual=True"),
        ({"residual": "all"}, ValueError, r"Expected input_size == num_directions \* hidden_size \(= 20\)"),
        ({"residual": "some"}, ValueError, "Expected residual to be False, True or 'all', got 'some'"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    args = {"cell": "lstm", "input_size": 10, "hidden_size": 20, "num_layers": 2} | kwargs
    with pytest.raises(error, match=match):
        RNNStack(**args)


def test_residual_all_accepts_matching_sizes():
    assert RNNStack("gru", 8, 4, bidirectional=True, residual="all").residual == "all"


@pytest.fixture
def lstm():
    return RNNStack("lstm", 10, 20, 2)


def test_bad_input_shapes(lstm):
    with pytest.raises(ValueError, match=r"Expected a 3-D input \(N, L, F\), got a 2-D tensor of shape \[3, 10\]"):
        lstm(torch.randn(3, 10))
    with pytest.raises(ValueError, match="Expected input feature size \\(last dim\\) 10, got 7"):
        lstm(torch.randn(3, 5, 7))
    with pytest.raises(TypeError, match="Expected input to be a Tensor or PackedSequence, got list"):
        lstm([1, 2, 3])
    with pytest.raises(ValueError, match="Expected a non-empty input"):
        lstm(torch.randn(3, 0, 10))


def test_bad_state(lstm):
    x = torch.randn(3, 5, 10)
    h = torch.zeros(2, 3, 20)
    with pytest.raises(ValueError, match=r"Expected hidden\[0\] size \(2, 3, 20\), got \[2, 4, 20\]"):
        lstm(x, (torch.zeros(2, 4, 20), h))
    with pytest.raises(ValueError, match=r"Expected hidden\[1\] size \(2, 3, 20\), got \[1, 3, 20\]"):
        lstm(x, (h, torch.zeros(1, 3, 20)))
    with pytest.raises(TypeError, match="Expected state to be a tuple \\(h, c\\) of Tensors for cell='lstm'"):
        lstm(x, h)
    with pytest.raises(ValueError, match="Expected hidden\\[0\\] to be a floating-point tensor, got torch.int64"):
        lstm(x, (h.long(), h))
    with pytest.raises(ValueError, match=r"Expected input dtype torch.float32 \(the parameters'; other dtypes only "
                       r"under torch.autocast\), got torch.float64"):
        lstm(x.double())
    gru = RNNStack("gru", 10, 20, 2, bidirectional=True)
    with pytest.raises(ValueError, match=r"Expected hidden size \(4, 3, 20\), got \[2, 3, 20\]"):
        gru(x, h)
    with pytest.raises(TypeError, match="Expected state to be a Tensor h for cell='gru'"):
        gru(x, (h, h))


def test_bad_lengths(lstm):
    x = torch.randn(3, 5, 10)
    with pytest.raises(ValueError, match=r"Expected every entry of lengths in \[1, 5\] \(L of the input\), got min 1, max 6"):
        lstm(x, lengths=torch.tensor([6, 1, 2]))
    with pytest.raises(ValueError, match=r"Expected every entry of lengths in \[1, 5\]"):
        lstm(x, lengths=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"Expected lengths of shape \(3,\) \(one per batch row\), got \[2\]"):
        lstm(x, lengths=torch.tensor([2, 2]))
    with pytest.raises(TypeError, match="Expected lengths to be an integer tensor, got torch.float32"):
        lstm(x, lengths=torch.tensor([2.0, 2.0, 2.0]))
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 3, 2]), batch_first=True)
    with pytest.raises(ValueError, match="Expected lengths=None with a PackedSequence input"):
        lstm(packed, lengths=torch.tensor([5, 3, 2]))
    with pytest.raises(ValueError, match="Expected batch_size to be an int >= 1, got 0"):
        lstm.init_state(0)


@settings(max_examples=25, deadline=None)
@given(
    cell=st.sampled_from(["rnn", "lstm", "gru"]),
    num_layers=st.integers(1, 3),
    bidirectional=st.booleans(),
    batch_first=st.booleans(),
    n=st.integers(1, 4),
    length=st.integers(1, 5),
    input_size=st.integers(1, 6),
    hidden=st.integers(1, 6),
    mode=st.sampled_from(["weight", "state"]),
    with_lengths=st.booleans(),
    data=st.data(),
)
def test_shapes_property(cell, num_layers, bidirectional, batch_first, n, length, input_size, hidden, mode,
                         with_lengths, data):
    m = RNNStack(cell, input_size, hidden, num_layers, bidirectional=bidirectional, batch_first=batch_first,
                 input_dropout=0.2, layer_dropout=0.2, output_dropout=0.2, recurrent_dropout=0.2,
                 recurrent_dropout_mode=mode)
    d = 2 if bidirectional else 1
    x = torch.randn(n, length, input_size) if batch_first else torch.randn(length, n, input_size)
    lengths = None
    if with_lengths:
        lengths = torch.tensor(data.draw(st.lists(st.integers(1, length), min_size=n, max_size=n)))
    out, state = m(x, lengths=lengths)
    assert out.shape == ((n, length, d * hidden) if batch_first else (length, n, d * hidden))
    assert m.output_size == d * hidden
    states = state if cell == "lstm" else (state,)
    assert len(states) == (2 if cell == "lstm" else 1)
    assert all(s.shape == (d * num_layers, n, hidden) for s in states)
    if lengths is not None:
        out_bf = out if batch_first else out.transpose(0, 1)
        for row, k in enumerate(lengths.tolist()):
            assert bool((out_bf[row, k:] == 0).all())
    if not bidirectional:
        out_s, steps = m.forward_steps(x, state)
        assert out_s.shape == out.shape and len(steps) == length


def test_torch_constructor_keywords():
    """The keywords torch users bring from nn.LSTM / nn.RNN: honoured, or refused naming RNNStack's option."""
    m = RNNStack("lstm", 4, 5, 2, dtype=torch.float64, device="cpu", dropout=0.0, proj_size=0)
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in m.parameters())
    out, (h, c) = m(torch.randn(2, 3, 4, dtype=torch.float64))
    assert out.dtype == h.dtype == c.dtype == torch.float64
    assert m.init_state(2)[0].dtype == torch.float64
    ref = torch.nn.LSTM(4, 5, 2, batch_first=True, dtype=torch.float64)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(m(x)[0], ref(x)[0])
    assert RNNStack("rnn", 4, 5, nonlinearity="tanh").cell == "rnn"
    with pytest.raises(ValueError, match="Expected dropout=0 .*layer_dropout"):
        RNNStack("lstm", 4, 5, 2, dropout=0.3)
    with pytest.raises(ValueError, match="Expected nonlinearity='tanh' .*got 'relu'"):
        RNNStack("rnn", 4, 5, nonlinearity="relu")
    with pytest.raises(ValueError, match="Expected nonlinearity=None for cell='gru'"):
        RNNStack("gru", 4, 5, nonlinearity="tanh")
    with pytest.raises(ValueError, match="Expected proj_size=0"):
        RNNStack("lstm", 4, 5, proj_size=2)
    with pytest.raises(ValueError, match="Expected dtype to be a floating-point torch.dtype, got torch.int64"):
        RNNStack("lstm", 4, 5, dtype=torch.int64)
