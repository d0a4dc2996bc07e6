"""Nested recurrent-state helpers (lightning_rnn.nn.state)."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_rnn.nn.state import (
    detach_state,
    map_state,
    reset_state_rows,
    select_state_rows,
    zeros_like_state,
    zeros_state,
)

Pair = namedtuple("Pair", "h c")


def _nested(n=3):
    return {"rnn": (torch.randn(2, n, 4), torch.randn(2, n, 4)), "extra": [torch.randn(1, n, 5), None]}


def test_detach_keeps_structure_and_values():
    h = torch.randn(2, 3, 4, requires_grad=True)
    state = Pair(h * 2, [h + 1])
    out = detach_state(state)
    assert isinstance(out, Pair) and isinstance(out.c, list)
    assert not out.h.requires_grad and not out.c[0].requires_grad
    torch.testing.assert_close(out.h, state.h.detach())
    assert detach_state(None) is None


def test_zeros_like_state():
    state = _nested()
    z = zeros_like_state(state)
    assert z["extra"][1] is None
    for a, b in zip((z["rnn"][0], z["rnn"][1], z["extra"][0]), (state["rnn"][0], state["rnn"][1], state["extra"][0])):
        assert a.shape == b.shape and a.dtype == b.dtype and not a.any()


def test_reset_state_rows_out_of_place_and_gradient():
    h = torch.randn(2, 3, 4, requires_grad=True)
    state = (h * 1.0, h * 2.0)
    mask = torch.tensor([False, True, False])
    out = reset_state_rows(state, mask)
    for o, s in zip(out, state):
        assert bool((o[:, 1] == 0).all())
        torch.testing.assert_close(o[:, [0, 2]], s[:, [0, 2]])
        assert bool((s[:, 1] != 0).all())  # input untouched
    out[0].sum().backward()
    assert bool((h.grad[:, 1] == 0).all()) and bool((h.grad[:, 0] == 1).all())


def test_reset_and_select_other_dim():
    t = torch.arange(12.0).view(3, 4)  # batch at dim 0
    out = reset_state_rows({"x": t}, torch.tensor([True, False, False]), dim=0)
    assert bool((out["x"][0] == 0).all()) and torch.equal(out["x"][1:], t[1:])
    sel = select_state_rows([t], torch.tensor([2, 2, 0]), dim=0)
    assert torch.equal(sel[0], t[[2, 2, 0]])


def test_select_state_rows_beam_reorder():
    state = _nested(4)
    index = torch.tensor([3, 0, 0, 1, 2])
    out = select_state_rows(state, index)
    torch.testing.assert_close(out["rnn"][1], state["rnn"][1][:, index])
    assert out["extra"][0].shape == (1, 5, 5)


def test_map_state_and_zeros_state():
    out = map_state(lambda t: t + 1, (torch.zeros(1, 2, 3),))
    assert torch.equal(out[0], torch.ones(1, 2, 3))
    h, c = zeros_state("lstm", 4, 2, 3, dtype=torch.float64)
    assert h.shape == c.shape == (4, 2, 3) and h.dtype == torch.float64 and not h.any()
    assert zeros_state("gru", 1, 5, 2).shape == (1, 5, 2)


def test_bad_input():
    with pytest.raises(TypeError, match="Expected a Tensor, None or a nested tuple/list/dict of Tensors as state, got int"):
        detach_state((torch.zeros(1), 3))
    with pytest.raises(TypeError, match="Expected mask to be a torch.bool tensor"):
        reset_state_rows(torch.zeros(1, 3, 2), torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="Expected mask of length 3"):
        reset_state_rows(torch.zeros(1, 3, 2), torch.tensor([True, False]))
    with pytest.raises(ValueError, match="Expected mask to be 1-D"):
        reset_state_rows(torch.zeros(1, 3, 2), torch.ones(3, 1, dtype=torch.bool))
    with pytest.raises(TypeError, match="Expected index to be a torch.long"):
        select_state_rows(torch.zeros(1, 3, 2), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="Expected dim in"):
        select_state_rows(torch.zeros(3, 2), torch.tensor([0]), dim=2)
    with pytest.raises(ValueError, match=r"Expected cell to be one of \['rnn', 'lstm', 'gru'\], got 'cnn'"):
        zeros_state("cnn", 1, 1, 1)
    with pytest.raises(ValueError, match="Expected batch_size to be an int >= 1, got 0"):
        zeros_state("rnn", 1, 0, 1)


@settings(max_examples=25, deadline=None)
@given(
    layers=st.integers(1, 4),
    n=st.integers(1, 6),
    hidden=st.integers(1, 5),
    lstm=st.booleans(),
    data=st.data(),
)
def test_helpers_preserve_shapes(layers, n, hidden, lstm, data):
    state = zeros_state("lstm" if lstm else "gru", layers, n, hidden)
    state = map_state(lambda t: torch.randn_like(t), state)
    mask = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    index = torch.tensor(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=8)))
    leaves = state if lstm else (state,)
    for fn in (detach_state, zeros_like_state, lambda s: reset_state_rows(s, mask)):
        out = fn(state)
        out = out if lstm else (out,)
        assert [o.shape for o in out] == [s.shape for s in leaves]
    reset = reset_state_rows(state, mask)
    reset = reset if lstm else (reset,)
    for r, s in zip(reset, leaves):
        assert bool((r[:, mask] == 0).all()) and torch.equal(r[:, ~mask], s[:, ~mask])
    sel = select_state_rows(state, index)
    sel = sel if lstm else (sel,)
    for r, s in zip(sel, leaves):
        assert r.shape == (layers, len(index), hidden) and torch.equal(r, s[:, index])
