"""RNNStack.forward_steps: the unrolled per-step forward equals the fused one and exposes every state."""

from __future__ import annotations

import pytest
import torch

from lightning_rnn.nn import RNNStack

TORCH_RNN = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
N, L, F, H = 3, 6, 5, 4


def _h(state):
    return state[0] if isinstance(state, tuple) else state


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_forward_steps_equals_forward_and_torch(cell, num_layers):
    m = RNNStack(cell, F, H, num_layers)
    ref = TORCH_RNN[cell](F, H, num_layers, batch_first=True)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(N, L, F)
    out, final = m(x)
    out_s, steps = m.forward_steps(x)
    assert len(steps) == L
    torch.testing.assert_close(out_s, out, atol=1e-5, rtol=0)
    for t in (0, L // 2, L - 1):  # every step's state = torch's final state on the prefix x[:, :t+1]
        _, st_ref = ref(x[:, : t + 1])
        if cell == "lstm":
            assert isinstance(steps[t], tuple) and steps[t][0].shape == (num_layers, N, H)
            torch.testing.assert_close(steps[t][1], st_ref[1], atol=1e-5, rtol=0)
        torch.testing.assert_close(_h(steps[t]), _h(st_ref), atol=1e-5, rtol=0)
    torch.testing.assert_close(_h(steps[-1]), _h(final), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input_dropout": 0.3, "layer_dropout": 0.3, "output_dropout": 0.3},
        {"recurrent_dropout": 0.4},
        {"recurrent_dropout": 0.4, "recurrent_dropout_mode": "state"},
        {"residual": True, "layer_dropout": 0.2},
    ],
)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_forward_steps_same_dropout_semantics_in_training(cell, kwargs):
    m = RNNStack(cell, H, H, 2, batch_first=False, **kwargs)
    x = torch.randn(L, N, H)
    torch.manual_seed(3)
    out, final = m(x)
    torch.manual_seed(3)
    out_s, steps = m.forward_steps(x)
    torch.testing.assert_close(out_s, out, atol=1e-5, rtol=0)
    torch.testing.assert_close(_h(steps[-1]), _h(final), atol=1e-5, rtol=0)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_step_states_are_graph_connected(cell):
    m = RNNStack(cell, F, H, 2)
    x = torch.randn(N, L, F)
    state = m.init_state(N)
    out, steps = m.forward_steps(x, state)
    loss = out[:, -1].square().sum()
    grads = torch.autograd.grad(loss, [_h(s) for s in steps[:-1]], retain_graph=True)
    assert all(float(g.abs().sum()) > 0 for g in grads)  # gradient reaches every earlier step's state
    # the tensor in step_states[t] is the one fed into step t+1
    g_next = torch.autograd.grad(_h(steps[3]).sum(), _h(steps[2]))[0]
    assert float(g_next.abs().sum()) > 0
    g_fut = torch.autograd.grad(_h(steps[2]).sum(), _h(steps[3]), allow_unused=True)[0]
    assert g_fut is None


def test_forward_steps_rejects_bidirectional():
    m = RNNStack("lstm", F, H, bidirectional=True)
    with pytest.raises(ValueError, match="Expected a unidirectional RNNStack for forward_steps, got bidirectional=True"):
        m.forward_steps(torch.randn(N, L, F))
