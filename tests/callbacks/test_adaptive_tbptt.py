"""AdaptiveTBPTT in real Trainer.fit runs on recurrent models whose memory is known by construction."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_rnn.callbacks import AdaptiveTBPTT
from lightning_rnn.functional import choose_truncation, per_lag_gradient_norms
from tests.callbacks._diagnostics_models import FixedMemoryRNN, TinyLSTMLM, quiet_trainer
from tests.modules._tbptt_models import SeqRegressor, loader, make_data

pytestmark = pytest.mark.filterwarnings("ignore:.*does not have many workers")


def _data(n: int = 8, length: int = 48, batch_size: int = 4) -> DataLoader:
    x, y = make_data(n=n, length=length)
    return loader(x, y, batch_size)


def _fit(model, cb, epochs=1, n=8, length=48, **kw):
    trainer = quiet_trainer(max_epochs=epochs, callbacks=[cb], num_sanity_val_steps=0, **kw)
    trainer.fit(model, _data(n=n, length=length))
    return trainer


def test_short_memory_shrinks_k_to_min():
    seed_everything(0)
    model = FixedMemoryRNN("tanh", 0.3, tbptt_steps=24)
    cb = AdaptiveTBPTT(every_n_steps=1, bias_bound=0.1, min_steps=2, max_steps=40, probe_steps=30, num_targets=4)
    trainer = _fit(model, cb, epochs=3)
    ks = [h["steps"] for h in cb.history]
    assert all(h["target"] == 2 for h in cb.history)  # the chosen K is min_steps at every probe
    assert all(b <= a for a, b in zip(ks, ks[1:]))  # monotone, no thrashing
    assert ks[0] == 13 and model.tbptt_steps == 2  # EMA 0.5 from 24 towards 2: 13, then down to min
    assert all(h["rate"] < 0.3 + 1e-3 for h in cb.history)  # ‖J‖ <= 0.3
    assert float(trainer.callback_metrics["tbptt/steps"]) == model.tbptt_steps
    assert float(trainer.callback_metrics["tbptt/bias_estimate"]) < 0.1


def test_long_memory_grows_k_to_max():
    seed_everything(0)
    model = FixedMemoryRNN("linear", 1.0, tbptt_steps=5, gradient_clip_val=1.0)
    cb = AdaptiveTBPTT(every_n_steps=1, bias_bound=0.1, min_steps=2, max_steps=40, probe_steps=30, num_targets=4,
                       smoothing=1.0)
    trainer = _fit(model, cb, epochs=3)
    ks = [h["steps"] for h in cb.history]
    assert all(h["target"] == 40 for h in cb.history)
    assert ks[:3] == [10, 20, 40]  # at most a factor max_change=2 per probe
    assert model.tbptt_steps == 40
    assert cb.history[-1]["rate"] == pytest.approx(1.0, abs=1e-3)  # orthogonal, linear: G(k) flat
    assert float(trainer.callback_metrics["tbptt/bias_estimate"]) > 0.1  # the bound cannot be met


def test_decision_equals_choose_truncation_on_the_probe_curve():
    # lr=0 keeps the model fixed, a fixed probe batch makes the measured curve reproducible by hand
    seed_everything(0)
    model = FixedMemoryRNN("tanh", 0.9, lr=0.0, tbptt_steps=10)
    probe = tuple(t[:4] for t in make_data(n=4, length=48, seed=3))
    cb = AdaptiveTBPTT(every_n_steps=1, bias_bound=0.05, min_steps=1, max_steps=60, probe_steps=20,
                       num_targets=4, backward_passes=None, smoothing=1.0, max_change=100.0, tolerance=0.0,
                       probe_batch=probe)
    _fit(model, cb)
    states, losses = model.gradient_flow_probe(probe, max_steps=24)
    curve = per_lag_gradient_norms(states, losses, 20, num_targets=4).curve
    expected = choose_truncation(curve, 0.05, 1, 60)
    assert 1 < expected.steps < 60
    assert [h["target"] for h in cb.history] == [expected.steps] * len(cb.history)
    assert model.tbptt_steps == expected.steps  # smoothing=1: jump straight to K
    assert cb.history[0]["rate"] == pytest.approx(expected.tail.rate, rel=1e-5)


def test_update_rule_hand_computed():
    cb = AdaptiveTBPTT(min_steps=2, max_steps=100, smoothing=0.5, max_change=2.0, tolerance=0.1)
    assert cb.update(None, 30) == 30  # no k yet: take K
    cb._k_ema = None
    assert cb.update(10, 100) == 20  # ema 55, capped at 2 x 10
    assert cb.update(20, 100) == 40  # ema (20 -> 0.5*20 + 50 = 60) capped at 40
    assert cb.update(40, 42) == 40  # |42 - 40| <= 0.1*40: dead band (the EMA still moves, to 41)
    assert cb._k_ema == pytest.approx(41.0)
    assert cb.update(40, 1) == 21  # ema 21 (41 + 1) / 2, min clamp not hit (>= 40/2 = 20)


def test_backprop_steps_raised_with_k_and_restored():
    seed_everything(0)
    model = FixedMemoryRNN("linear", 1.0, tbptt_steps=4, tbptt_backprop_steps=8, gradient_clip_val=1.0)
    cb = AdaptiveTBPTT(every_n_steps=1, bias_bound=0.1, min_steps=2, max_steps=40, probe_steps=30, num_targets=4,
                       smoothing=1.0)
    _fit(model, cb)  # 2 batches: k 4 -> 8 -> 16 (max_change 2), k2 8 -> 8 -> 16
    assert [h["steps"] for h in cb.history] == [8, 16]
    assert model.tbptt_steps == 16 and model.tbptt_backprop_steps == 16
    cb._apply(model, 5)  # shrinking: k2 goes back to the user's 8
    assert model.tbptt_steps == 5 and model.tbptt_backprop_steps == 8
    cb._apply(model, 3)
    assert (model.tbptt_steps, model.tbptt_backprop_steps) == (3, 8)


def test_state_dict_round_trip_and_resume(tmp_path):
    seed_everything(0)
    model = FixedMemoryRNN("linear", 1.0, tbptt_steps=4, tbptt_backprop_steps=6, gradient_clip_val=1.0)
    cb = AdaptiveTBPTT(every_n_steps=1, bias_bound=0.1, min_steps=2, max_steps=40, probe_steps=30, num_targets=4)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = quiet_trainer(max_epochs=1, callbacks=[cb, ckpt], enable_checkpointing=True)
    trainer.fit(model, _data())
    state = cb.state_dict()
    fresh = AdaptiveTBPTT(every_n_steps=1, bias_bound=0.1, min_steps=2, max_steps=40, probe_steps=30, num_targets=4)
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state
    assert fresh.state_key == cb.state_key
    assert state["steps"] == model.tbptt_steps > 6 and state["base_k2"] == 6
    # resume into a module built with the original k1/k2: k, k2 and the callback's history come back
    seed_everything(0)
    resumed_model = FixedMemoryRNN("linear", 1.0, tbptt_steps=4, tbptt_backprop_steps=6, gradient_clip_val=1.0)
    resumed = AdaptiveTBPTT(every_n_steps=1, bias_bound=0.1, min_steps=2, max_steps=40, probe_steps=30,
                            num_targets=4)
    seen: list[tuple[int | None, int | None]] = []

    class Spy(ModelCheckpoint):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.append((pl_module.tbptt_steps, pl_module.tbptt_backprop_steps))

    t2 = quiet_trainer(max_epochs=2, callbacks=[resumed, Spy(dirpath=tmp_path / "b")], enable_checkpointing=True)
    t2.fit(resumed_model, _data(), ckpt_path=str(tmp_path / "last.ckpt"))
    assert seen[0] == (state["steps"], state["steps"])
    assert resumed.history[: len(cb.history)] == cb.history
    # the EMA carries on: 4 -> 8 -> 16 (capped at x2) -> 28 = (16 + 40) / 2 -> 34 = (28 + 40) / 2
    assert [h["steps"] for h in resumed.history] == [8, 16, 28, 34]
    assert resumed_model.tbptt_steps == resumed_model.tbptt_backprop_steps == 34


def test_short_batches_warn_once():
    seed_everything(0)
    model = FixedMemoryRNN("linear", 1.0, tbptt_steps=10, gradient_clip_val=1.0)
    cb = AdaptiveTBPTT(every_n_steps=1, bias_bound=0.1, min_steps=2, max_steps=40, probe_steps=8, num_targets=2,
                       smoothing=1.0, max_change=10.0)
    with pytest.warns(UserWarning, match="longer than the training batches") as rec:
        _fit(model, cb, length=12)
    assert sum("longer than the training batches" in str(w.message) for w in rec) == 1
    assert model.tbptt_steps == 40  # set anyway; the module then uses whole batches


def test_setup_refuses_a_module_without_truncation_length():
    with pytest.raises(TypeError, match="TinyLSTMLM is not one"):
        quiet_trainer(max_steps=1, callbacks=[AdaptiveTBPTT()]).fit(
            TinyLSTMLM(), DataLoader(TensorDataset(torch.zeros(2, 4, dtype=torch.long),
                                                   torch.zeros(2, 4, dtype=torch.long)), batch_size=2))


def test_tbptt_module_without_own_probe_uses_the_default_probe():
    # SeqRegressor (an nn.LSTM in a TBPTTModule) writes no gradient_flow_probe: tbptt_step gives it one
    seed_everything(0)
    x, y = make_data(n=4, length=24)
    model = SeqRegressor(tbptt_steps=5)
    cb = AdaptiveTBPTT(every_n_steps=1, min_steps=2, max_steps=12, probe_steps=8, num_targets=2)
    quiet_trainer(max_steps=10, callbacks=[cb]).fit(model, loader(x, y, 2))
    assert cb.history and all(2 <= h["steps"] <= 12 for h in cb.history)
    assert model.tbptt_steps == cb.history[-1]["steps"]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(min_steps=10, max_steps=5), "min_steps <= max_steps"),
        (dict(bias_bound=0.0), "bias_bound"),
        (dict(bias_bound=1.0), "bias_bound"),
        (dict(bias_bound=-0.5), "bias_bound"),
        (dict(every_n_steps=0), "every_n_steps"),
        (dict(min_steps=0), "min_steps"),
        (dict(max_steps=2.5), "max_steps"),
        (dict(probe_steps=0), "probe_steps"),
        (dict(smoothing=0.0), "smoothing"),
        (dict(max_change=0.5), "max_change"),
        (dict(tolerance=1.0), "tolerance"),
        (dict(num_targets=0), "num_targets"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveTBPTT(**kwargs)


def test_probe_does_not_change_training():
    # same seed, with and without the callback (k pinned: min = max = 6): identical parameters after fit
    def run(with_cb: bool):
        seed_everything(0)
        model = FixedMemoryRNN("tanh", 0.9, tbptt_steps=6)
        cbs = [AdaptiveTBPTT(every_n_steps=1, min_steps=6, max_steps=6, probe_steps=10, num_targets=2)] if with_cb \
            else []
        quiet_trainer(max_epochs=1, callbacks=cbs).fit(model, _data())
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    torch.testing.assert_close(run(True), run(False), rtol=0, atol=0)
    assert math.isfinite(float(run(True).sum()))
