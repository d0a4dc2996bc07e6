"""The gradient-flow probe: default (from tbptt_step) vs the language model's own vs an independent autograd
loop; training mode with dropout off; nothing global or stateful disturbed."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from lightning_rnn import RNNConfig, RNNLanguageModel, TBPTTModule
from lightning_rnn.functional import measure_gradient_flow
from lightning_rnn.nn import RNNStack
from lightning_rnn.nn.state import detach_state
from tests.callbacks._contract_models import DictStateRegressor, case
from tests.modules._tbptt_models import make_data


def _reference_curve(states: list[tuple[torch.Tensor, ...]], losses: torch.Tensor, max_lag: int) -> torch.Tensor:
    """G(k) = mean over (t, r) with a target of ‖∂L_{t,r}/∂S_{t−k,r}‖, one autograd call per (t, r).

    ``states[t]`` is a tuple of tensors with the batch at dim -2 (``(layers, N, H)`` or ``(N, H)``);
    ``losses`` (N, L), NaN where there is no target.
    """
    n, length = losses.shape
    sums = torch.zeros(max_lag + 1, dtype=torch.float64)
    counts = torch.zeros(max_lag + 1, dtype=torch.float64)
    for t in range(length):
        for r in range(n):
            if torch.isnan(losses[r, t]):
                continue
            back = [states[t - k] for k in range(min(t, max_lag) + 1)]
            flat = [c for s in back for c in s]
            grads = torch.autograd.grad(losses[r, t], flat, retain_graph=True, allow_unused=True)
            per = len(back[0])
            for k in range(len(back)):
                sq = sum(
                    float(g[..., r, :].double().pow(2).sum()) for g in grads[k * per : (k + 1) * per] if g is not None
                )
                sums[k] += sq**0.5
                counts[k] += 1
    return (sums / counts).float()


def _lm_reference(lm: RNNLanguageModel, x: torch.Tensor, y: torch.Tensor, max_lag: int) -> torch.Tensor:
    """The LM's G(k) from a torch.nn.LSTM with the same weights, stepped by hand, loss read from h."""
    lstm = nn.LSTM(lm.rnn.input_size, lm.rnn.hidden_size, lm.rnn.num_layers, batch_first=True)
    lstm.load_state_dict(lm.rnn.state_dict())
    emb = F.embedding(x, lm.embedding.weight)  # (N, L, E): no embedding dropout
    state, states, losses = None, [], []
    for t in range(x.shape[1]):
        _, state = lstm(emb[:, t : t + 1], state)  # ((layers, N, H), (layers, N, H))
        states.append(state)
        logits = lm.decoder(state[0][-1])  # (N, V), from the state itself
        loss = F.cross_entropy(logits, y[:, t], reduction="none", ignore_index=lm.pad_id)
        losses.append(loss.masked_fill(y[:, t] == lm.pad_id, float("nan")))
    return _reference_curve(states, torch.stack(losses, 1), max_lag)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_lm_default_probe_and_its_own_probe_agree_with_an_autograd_loop(num_layers):
    torch.manual_seed(0)
    lm = RNNLanguageModel(20, 6, encoder=RNNConfig(hidden_size=8, num_layers=num_layers, layer_dropout=0.3, recurrent_dropout=0.3, output_dropout=0.2), tbptt_steps=4, embedding_dropout=0.2, pad_id=0)
    x = torch.randint(1, 20, (3, 9))
    y = torch.randint(1, 20, (3, 9))
    y[1, 2] = y[2, 5] = 0  # padding: no target there
    k = 8  # every lag of a 9-step probe
    own = measure_gradient_flow(lm, (x, y), max_lag=k, num_targets=None, backward_passes=None)
    default = measure_gradient_flow(lm, (x, y), probe=lambda b, m: TBPTTModule.gradient_flow_probe(lm, b, m),
                                    max_lag=k, num_targets=None)
    reference = _lm_reference(lm, x, y, k)
    torch.testing.assert_close(own.curve, reference, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(default.curve, reference, rtol=1e-4, atol=1e-7)
    expected = [int((y[:, lag:] != 0).sum()) for lag in range(k + 1)]  # (t, r) with a target and t >= k
    assert own.counts.tolist() == default.counts.tolist() == expected and expected[0] == 27 - 2
    # the callbacks' default (8 targets, one backward pass for the whole probe) is a sample of the same curve
    sampled = measure_gradient_flow(lm, (x, y), max_lag=4)
    assert sampled.max_lag == 4 and float(sampled.normalized[0]) == pytest.approx(1.0)


def test_user_module_dict_state_default_probe_against_an_autograd_loop():
    torch.manual_seed(0)
    model = DictStateRegressor()
    x, y = make_data(n=3, length=7)
    res = measure_gradient_flow(model, (x, y), max_lag=6, num_targets=None)
    # the same model stepped by hand (its dropout off), the loss of each row at each step read from (h, m)
    cell = model.cell
    h = m = torch.zeros(3, cell.hidden)
    states, losses = [], []
    for t in range(7):
        h = torch.tanh(h @ cell.W.T + cell.U(x[:, t]))
        m = 0.8 * m + 0.2 * h
        states.append((h, m))
        losses.append((model.head(h + m) - y[:, t]).pow(2).squeeze(-1))
    reference = _reference_curve(states, torch.stack(losses, 1), 6)
    torch.testing.assert_close(res.curve, reference, rtol=1e-4, atol=1e-8)
    assert res.counts.tolist() == [21, 18, 15, 12, 9, 6, 3]


def test_probe_runs_the_recurrent_forward_in_training_mode_without_dropout(monkeypatch):
    """Spy on RNNStack.forward: training mode, every dropout 0, outputs = the eval forward, no global flag."""
    seen: list[tuple[Any, ...]] = []
    inside = [False]

    def spying(name):
        original = getattr(RNNStack, name)

        def spy(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            if inside[0]:
                return out
            inside[0] = True
            try:
                dropouts = (self.input_dropout, self.layer_dropout, self.output_dropout, self.recurrent_dropout)
                seen.append((name, self.training, dropouts, torch.backends.mkldnn.enabled,
                             isinstance(args[0], PackedSequence)))
                ref = copy.deepcopy(self).eval()  # the deterministic (eval-mode) forward, with the dropouts back
                with torch.no_grad():
                    expected = original(ref, *detach_state(list(args)), **detach_state(kwargs))
                data = [getattr(o, "data", o) for o in (out[0], expected[0])]  # one step runs packed on CPU
                torch.testing.assert_close(data[0].detach(), data[1])
            finally:
                inside[0] = False
            return out

        monkeypatch.setattr(RNNStack, name, spy)

    spying("forward")
    mkldnn = torch.backends.mkldnn.enabled
    for module in ("lm", "tagger", "classifier"):
        model, train = case(module)
        batch = next(iter(train))
        model.train()
        before = [(m.training, getattr(m, "p", None)) for m in model.modules()]
        res = measure_gradient_flow(model, batch, max_lag=None if module == "classifier" else 3, num_targets=2)
        assert res is not None and float(res.curve[0]) > 0
        assert [(m.training, getattr(m, "p", None)) for m in model.modules()] == before
        assert model.rnn.layer_dropout == (0.2 if module != "tagger" else 0.0)
    assert len(seen) > 3 * 3  # one call per step, in the LM's own probe and in the others' default probe
    assert all(training and dropouts == (0.0, 0.0, 0.0, 0.0) and flag == mkldnn
               for _, training, dropouts, flag, _ in seen)
    assert all(packed for *_, packed in seen)  # on CPU each one-step call runs torch's native kernel
    assert torch.backends.mkldnn.enabled == mkldnn


def test_probe_leaves_rng_grads_metrics_modes_and_running_stats_untouched():
    model, train = case("tagger")
    batch = next(iter(train))
    model.train()
    model.head.eval()  # a submodule deliberately in eval mode stays so
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    metric = model.train_metrics["acc"]
    count = metric.update_count
    rng = torch.get_rng_state()
    res = measure_gradient_flow(model, batch, max_lag=3, num_targets=2)
    assert res is not None
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(p.grad, torch.full_like(p, 3.0)) for p in model.parameters())
    assert metric.update_count == count  # the probe's tbptt_step calls are not training steps
    assert model.training and model.rnn.training and not model.head.training

    class Normed(nn.Module):  # batch norm in training mode would update its running statistics
        def __init__(self):
            super().__init__()
            self.rnn = RNNStack("gru", 3, 4)
            self.norm = nn.BatchNorm1d(3)

        def gradient_flow_probe(self, batch, max_steps=None):
            x = self.norm(batch.transpose(1, 2)).transpose(1, 2)  # (N, L, 3)
            _, states = self.rnn.forward_steps(x)
            return states, torch.stack([s[-1].sum(-1) for s in states], 1)

    normed = Normed().eval()
    stats = {k: v.clone() for k, v in normed.norm.state_dict().items()}
    assert measure_gradient_flow(normed, torch.randn(4, 6, 3) * 5 + 2, max_lag=3) is not None
    assert all(torch.equal(v, normed.norm.state_dict()[k]) for k, v in stats.items())
    assert not normed.training and not normed.norm.training


def test_probe_with_no_target_in_the_window_is_skipped_with_a_warning():
    from lightning_rnn.callbacks import GradientFlowMonitor

    model, train = case("classifier")  # a many-to-one loss: none in the first 3 steps of these sequences
    batch = next(iter(train))
    mon = GradientFlowMonitor(max_lag=1, num_targets=1)
    with pytest.warns(UserWarning, match="no step with a target"):
        assert mon.probe(model, batch) is None


def test_default_probe_of_a_module_built_on_torch_lstm_against_an_autograd_loop():
    from tests.modules._tbptt_models import SeqRegressor

    torch.manual_seed(0)
    model = SeqRegressor(tbptt_steps=4)  # nn.LSTM; mean loss over rows, TBPTTStep.weight not set
    x, y = make_data(n=3, length=6)
    res = measure_gradient_flow(model, (x, y), max_lag=5, num_targets=None)
    state, states, losses = None, [], []
    for t in range(6):
        _, state = model.lstm(x[:, t : t + 1], state)
        states.append(state)
        losses.append((model.head(state[0][-1]) - y[:, t]).pow(2).squeeze(-1))  # (N,)
    reference = _reference_curve(states, torch.stack(losses, 1), 5)
    # the step's loss is the mean over its 3 rows (weight None counts 1 target): G scales by 1/3
    torch.testing.assert_close(res.curve * 3, reference, rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(res.normalized, reference / reference[0], rtol=1e-4, atol=1e-7)


def test_per_layer_curves_with_a_state_that_mixes_layered_and_pooled_tensors():
    # RNNClassifier(summary="mean") carries {"rnn": (layers, N, H), "pool": running sums (N, H) and counts}
    model, train = case("classifier", summary="mean")
    batch = next(iter(train))
    res = measure_gradient_flow(model, batch, max_lag=None, num_targets=3, per_layer=True)
    assert res is not None and res.per_layer is not None and res.per_layer.shape == (2, res.max_lag + 1)
    # per lag, the full-state norm is at least each layer's own (it adds the other layers and the pool)
    measured = res.counts > 0
    assert bool((res.curve[measured] >= res.per_layer[:, measured].max(0).values * (1 - 1e-5)).all())
    assert float(res.per_layer[1, 1]) > 0 and float(res.per_layer[0, 1]) > 0
