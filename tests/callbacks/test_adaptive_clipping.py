"""AdaptiveGradientClipping inside real Trainer.fit runs (automatic, manual, AMP, NaN, resume, DDP)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_rnn.callbacks import AdaptiveGradientClipping, NonFiniteGradientError
from lightning_rnn.functional import ClipRule, QuantileClipRule, UnitwiseClipRule, ZScoreClipRule

from .._cpu_features import cpu_bf16_lstm_supported

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


# ----------------------------------------------------------------------------- helpers
def _flat_norm(grads: list[torch.Tensor]) -> float:
    # Independent of the library: the 2-norm of all gradient entries concatenated, in float64.
    if not grads:
        return 0.0
    return float(torch.cat([g.detach().double().reshape(-1) for g in grads]).norm())


class Probe(pl.Callback):
    """Records the gradients the optimizer is about to use (placed before or after the clipping callback)."""

    def __init__(self) -> None:
        self.norms: list[float] = []
        self.grads: list[list[torch.Tensor | None]] = []
        self.params: list[list[torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        ps = [p for g in optimizer.param_groups for p in g["params"]]
        self.grads.append([None if p.grad is None else p.grad.detach().clone() for p in ps])
        self.params.append([p.detach().clone() for p in ps])
        self.norms.append(_flat_norm([p.grad for p in ps if p.grad is not None]))


class AfterStep(pl.Callback):
    """Parameters after each training batch (automatic optimization: one step per batch)."""

    def __init__(self) -> None:
        self.params: list[list[torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.params.append([p.detach().clone() for p in pl_module.parameters()])


class LSTMRegressor(pl.LightningModule):
    def __init__(
        self, lr: float = 0.05, optimizer: str = "sgd", nan_batches: tuple[int, ...] = (), scale=30.0
    ):
        super().__init__()
        self.rnn = nn.LSTM(3, 8, batch_first=True)
        self.head = nn.Linear(8, 1)
        self.lr, self.opt_name, self.nan_batches, self.scale = lr, optimizer, set(nan_batches), scale

    def loss(self, x, y):
        h, _ = self.rnn(x)  # (N, L, H)
        return ((self.head(h[:, -1]) - y) ** 2).mean() * self.scale

    def training_step(self, batch, batch_idx):
        loss = self.loss(*batch)
        if batch_idx in self.nan_batches:
            loss = loss * float("nan")
        return loss

    def configure_optimizers(self):
        if self.opt_name == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.lr)
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class ManualLSTM(LSTMRegressor):
    """Manual optimization with two optimizer steps per batch, like TBPTT chunks."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        x, y = batch
        for chunk in (x[:, :3], x[:, 3:]):  # (N, 3, 3) each
            loss = self.loss(chunk, y)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()


class MLP(LSTMRegressor):
    """fp16 autocast on CPU has no LSTM kernel: a Linear-only model for the GradScaler test."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rnn = nn.Sequential(nn.Flatten(), nn.Linear(18, 8), nn.Tanh())

    def loss(self, x, y):
        return ((self.head(self.rnn(x)) - y) ** 2).mean() * self.scale


def _data(n: int = 64, batch_size: int = 8, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, 3, generator=g)  # (N, L, 3)
    y = torch.randn(n, 1, generator=g) * 3
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def _trainer(callbacks, **kwargs) -> pl.Trainer:
    kw = dict(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    kw.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **kw)


def _fit(cb, model=None, probes=True, extra=(), **kwargs):
    torch.manual_seed(0)
    model = model if model is not None else LSTMRegressor()
    pre, post, after = Probe(), Probe(), AfterStep()
    callbacks = [pre, cb, *extra, post, after] if probes else [cb, *extra]
    trainer = _trainer(callbacks, **kwargs)
    trainer.fit(model, _data())
    return trainer, model, pre, post, after


def _expected_autoclip(norms: list[float], q: float) -> list[float]:
    return [float(np.percentile(norms[: i + 1], 100 * q)) for i in range(len(norms))]


# ----------------------------------------------------------------------------- construction
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"mode": "median"}, ValueError, r"one of \('quantile', 'zscore', 'agc'\)"),
        ({"quantile": 0.0}, ValueError, r"Expected quantile to be a float in \(0, 1\]"),
        ({"quantile": 1.01}, ValueError, r"Expected quantile to be a float in \(0, 1\]"),
        ({"window": 0}, ValueError, "window"),
        ({"warmup_steps": -1}, ValueError, "warmup_steps"),
        ({"alpha": 1.0}, ValueError, "alpha"),
        ({"alpha": 0.0}, ValueError, "alpha"),
        ({"z_threshold": 0.0}, ValueError, "z_threshold"),
        ({"agc_lambda": 0.0}, ValueError, "agc_lambda"),
        ({"agc_lambda": -1.0}, ValueError, "agc_lambda"),
        ({"agc_eps": 0.0}, ValueError, "agc_eps"),
        ({"agc_exclude": "head"}, TypeError, "agc_exclude"),
        ({"max_norm": 0.0}, ValueError, "max_norm"),
        ({"norm_type": 0.0}, ValueError, "norm_type"),
        ({"max_nonfinite_steps": 0}, ValueError, "max_nonfinite_steps"),
        ({"log_every_n_steps": 0}, ValueError, "log_every_n_steps"),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        AdaptiveGradientClipping(**kwargs)


def test_state_keys_distinguish_instances():
    keys = {
        AdaptiveGradientClipping("quantile").state_key,
        AdaptiveGradientClipping("quantile", quantile=0.2).state_key,
        AdaptiveGradientClipping("zscore").state_key,
        AdaptiveGradientClipping("agc").state_key,
    }
    assert len(keys) == 4
    # The key is where checkpoints keep the state: it stays what earlier versions wrote, so they still load.
    assert AdaptiveGradientClipping("zscore", max_norm=5.0).state_key == (
        "AdaptiveGradientClipping{'mode': 'zscore', 'z_threshold': 2.5, 'alpha': 0.97, 'warmup_steps': 25, "
        "'max_norm': 5.0}"
    )
    assert AdaptiveGradientClipping("agc").state_key == (
        "AdaptiveGradientClipping{'mode': 'agc', 'agc_lambda': 0.01, 'agc_eps': 0.001, 'max_norm': None}"
    )


# ----------------------------------------------------------------------------- rules: names and objects
class Decisions(pl.Callback):
    """The clipping callback's decision at every optimizer step (placed after it)."""

    def __init__(self, clip: AdaptiveGradientClipping) -> None:
        self.clip = clip
        self.norms: list[float] = []
        self.thresholds: list[float | None] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.norms.append(self.clip.last_norm)
        self.thresholds.append(self.clip.last_threshold)


class MeanRule(ClipRule):
    """A user's rule: ``factor`` times the running mean of the norms, the current one included."""

    def __init__(self, factor: float = 1.2) -> None:
        self.factor, self.total, self.count = factor, 0.0, 0

    def step(self, norm: float) -> float:
        self.total, self.count = self.total + norm, self.count + 1
        return self.factor * self.total / self.count

    def state_dict(self):
        return {"total": self.total, "count": self.count}

    def load_state_dict(self, state):
        self.total, self.count = float(state.get("total", 0.0)), int(state.get("count", 0))

    def __repr__(self) -> str:
        return f"MeanRule(factor={self.factor})"


def _decisions(clip: AdaptiveGradientClipping, model=None, **kwargs):
    rec = Decisions(clip)
    _, model, pre, post, after = _fit(clip, model=model, extra=[rec], **kwargs)
    return rec, model, pre, post


@pytest.mark.parametrize(
    ("mode", "kwargs", "rule"),
    [
        ("quantile", {"quantile": 0.3, "window": 5}, QuantileClipRule(quantile=0.3, window=5)),
        ("zscore", {"warmup_steps": 3, "z_threshold": 1.0, "alpha": 0.9},
         ZScoreClipRule(alpha=0.9, z_threshold=1.0, warmup_steps=3)),
        ("agc", {"agc_lambda": 0.01}, UnitwiseClipRule(clip_factor=0.01)),
    ],
)
def test_each_named_mode_equals_its_rule_object_and_the_functional_rule(mode, kwargs, rule):
    """A mode name and the same rule passed as an object train bit for bit alike, and the thresholds are the
    functional rule's on the same norms (AutoClip's also np.percentile's)."""
    by_name, m_name, pre, post = _decisions(AdaptiveGradientClipping(mode, max_norm=40.0, **kwargs))
    by_object, m_object, _, _ = _decisions(AdaptiveGradientClipping(rule, max_norm=40.0))
    assert by_name.norms == by_object.norms and by_name.thresholds == by_object.thresholds
    for a, b in zip(m_name.parameters(), m_object.parameters()):
        assert torch.equal(a, b)
    norms = by_name.norms
    if mode == "agc":
        reference = [math.inf] * len(norms)
        assert any(not torch.equal(a, b) for a, b in zip(pre.grads[0], post.grads[0]))  # AGC did clip
    else:
        fresh = {"quantile": QuantileClipRule(0.3, 5), "zscore": ZScoreClipRule(0.9, 1.0, 3)}[mode]
        reference = [fresh.step(n) for n in norms]
    expected = [min(t, 40.0) for t in reference]
    assert by_name.thresholds == [t if math.isfinite(t) else None for t in expected]
    if mode == "quantile":
        np.testing.assert_allclose(reference, _expected_windowed_autoclip(norms, 0.3, 5), rtol=1e-12)
    assert any(a > t * (1 + 1e-6) for a, t in zip(pre.norms, expected))  # some step was clipped


def _expected_windowed_autoclip(norms: list[float], q: float, window: int) -> list[float]:
    return [float(np.percentile(norms[max(0, i + 1 - window) : i + 1], 100 * q)) for i in range(len(norms))]


def test_a_user_rule_object_end_to_end(tmp_path):
    """A user's ClipRule: its thresholds clip the gradients, it is logged, and its state goes through a checkpoint
    so a resumed run continues like the uninterrupted one."""
    rule = MeanRule(1.2)
    clip = AdaptiveGradientClipping(rule)
    assert clip.mode == "MeanRule"
    rec, _, pre, post = _decisions(clip, model=LSTMRegressor(scale=100.0))
    assert rule.count == len(pre.norms) == 8  # the object itself is the first optimizer's rule
    n_clipped = 0
    for i, (a, b) in enumerate(zip(pre.norms, post.norms)):
        threshold = 1.2 * sum(rec.norms[: i + 1]) / (i + 1)
        assert rec.thresholds[i] == pytest.approx(threshold, rel=1e-12)
        assert b == pytest.approx(min(a, threshold), rel=1e-5)
        n_clipped += int(a > threshold * (1 + 1e-6))
    assert 0 < n_clipped < 8
    assert clip.state_dict()["optimizers"][0]["rule"] == {"total": rule.total, "count": 8}
    # Checkpoint and resume: the same state as an uninterrupted two-epoch run.
    full = AdaptiveGradientClipping(MeanRule(1.2))
    torch.manual_seed(0)
    _trainer([full], max_epochs=2).fit(LSTMRegressor(scale=100.0), _data())
    first = AdaptiveGradientClipping(MeanRule(1.2))
    torch.manual_seed(0)
    t1 = _trainer([first], max_epochs=1)
    t1.fit(LSTMRegressor(scale=100.0), _data())
    t1.save_checkpoint(tmp_path / "rule.ckpt")
    resumed_rule = MeanRule(1.2)
    resumed = AdaptiveGradientClipping(resumed_rule)
    _trainer([resumed], max_epochs=2).fit(LSTMRegressor(scale=100.0), _data(), ckpt_path=tmp_path / "rule.ckpt")
    assert resumed_rule.count == 16
    a, b = resumed.state_dict()["optimizers"][0], full.state_dict()["optimizers"][0]
    assert a["rule"]["count"] == b["rule"]["count"] and a["rule"]["total"] == pytest.approx(b["rule"]["total"])
    assert (a["steps"], a["clipped_steps"]) == (b["steps"], b["clipped_steps"])
    # The state key tells rule objects apart (repr), as it does named modes.
    keys = {AdaptiveGradientClipping(r).state_key for r in (MeanRule(1.2), MeanRule(2.0), QuantileClipRule())}
    assert len(keys) == 3


class ElementClipRule(ClipRule):
    """A per-parameter rule: no global threshold, every gradient entry clamped to [-c, c]."""

    def __init__(self, c: float) -> None:
        self.c = c

    def step(self, norm: float) -> float:
        return math.inf

    def clip_(self, parameters, norm_type=2.0) -> bool:
        changed = False
        for p in parameters:
            changed |= bool((p.grad.abs() > self.c).any())
            p.grad.clamp_(-self.c, self.c)
        return changed


def test_a_user_per_parameter_rule_leaves_the_output_layer_alone_like_agc():
    clip = AdaptiveGradientClipping(ElementClipRule(0.05), max_norm=1e6)
    rec, model, pre, post = _decisions(clip)
    assert rec.thresholds == [1e6] * 8
    names = [n for n, _ in model.named_parameters()]
    for i in range(len(pre.grads)):
        for name, g0, g1 in zip(names, pre.grads[i], post.grads[i]):
            expected = g0 if name.startswith("head.") else g0.clamp(-0.05, 0.05)
            torch.testing.assert_close(g1, expected, rtol=0, atol=0)
    assert any(not torch.equal(g0, g1) for g0, g1 in zip(pre.grads[0], post.grads[0]))


def test_each_optimizer_gets_its_own_copy_of_a_rule_object():
    class TwoOptimizers(LSTMRegressor):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            for opt in self.optimizers():
                opt.zero_grad()
            self.manual_backward(self.loss(*batch))
            for opt in self.optimizers():
                opt.step()

        def configure_optimizers(self):
            return [torch.optim.SGD(self.rnn.parameters(), lr=0.05), torch.optim.SGD(self.head.parameters(), lr=0.05)]

    rule = MeanRule(1.2)
    clip = AdaptiveGradientClipping(rule)
    trainer, *_ = _fit(clip, model=TwoOptimizers(), probes=False)
    states = clip.state_dict()["optimizers"]
    assert sorted(states) == [0, 1]
    assert states[0]["rule"]["count"] == states[1]["rule"]["count"] == 8 == rule.count
    assert states[0]["rule"]["total"] == rule.total != states[1]["rule"]["total"]  # separate histories
    assert {"grad_clip/norm/opt0", "grad_clip/norm/opt1"} <= set(trainer.callback_metrics)


@pytest.mark.parametrize("mode", [QuantileClipRule, "auto", None])
def test_mode_must_name_a_rule_or_be_a_rule_object(mode):
    with pytest.raises(ValueError, match=r"Expected mode to be one of \('quantile', 'zscore', 'agc'\) or a ClipRule"):
        AdaptiveGradientClipping(mode)


# ----------------------------------------------------------------------------- automatic optimization
def test_automatic_clips_once_to_autoclip_threshold():
    cb = AdaptiveGradientClipping("quantile", quantile=0.5, log_every_n_steps=4)
    trainer, model, pre, post, after = _fit(cb)
    n = len(pre.norms)
    assert n == 8
    thresholds = _expected_autoclip(pre.norms, 0.5)
    clipped = 0
    for i in range(n):
        if pre.norms[i] > thresholds[i] * (1 + 1e-6):
            clipped += 1
            assert post.norms[i] == pytest.approx(thresholds[i], rel=1e-5)
            for g0, g1 in zip(pre.grads[i], post.grads[i]):  # same direction, scaled
                torch.testing.assert_close(g1, g0 * (thresholds[i] / pre.norms[i]), rtol=1e-5, atol=1e-7)
        else:
            assert post.norms[i] == pytest.approx(pre.norms[i], rel=1e-6)
    assert clipped >= 2
    # Clipping happens once: SGD moved every parameter by exactly -lr * (the callback's clipped gradient).
    for i in range(n):
        for p0, g, p1 in zip(post.params[i], post.grads[i], after.params[i]):
            torch.testing.assert_close(p1, p0 - model.lr * g, rtol=1e-5, atol=1e-6)
    # Logged values: the last step's norm / threshold, the clipped fraction over the last 4 steps.
    metrics = trainer.callback_metrics
    assert float(metrics["grad_clip/norm"]) == pytest.approx(pre.norms[-1], rel=1e-5)
    assert float(metrics["grad_clip/threshold"]) == pytest.approx(thresholds[-1], rel=1e-5)
    last4 = [pre.norms[i] > thresholds[i] * (1 + 1e-6) for i in range(n - 4, n)]
    assert float(metrics["grad_clip/clipped"]) == pytest.approx(sum(last4) / 4)
    assert float(metrics["grad_clip/nonfinite_steps"]) == 0.0
    assert cb.state_dict()["optimizers"][0]["clipped_steps"] == clipped


def test_zscore_mode_in_trainer_and_max_norm_ceiling():
    cb = AdaptiveGradientClipping("zscore", warmup_steps=3, z_threshold=1.0, alpha=0.9, max_norm=50.0)
    _, _, pre, post, _ = _fit(cb, model=LSTMRegressor(scale=100.0))
    # Warm-up: only the ceiling applies.
    for i in range(3):
        assert post.norms[i] == pytest.approx(min(pre.norms[i], 50.0), rel=1e-5)
    assert max(post.norms) <= 50.0 * (1 + 1e-5)
    assert any(p > 50.0 for p in pre.norms)


def test_agc_mode_leaves_output_layer_alone_and_clips_unitwise():
    cb = AdaptiveGradientClipping("agc", agc_lambda=0.01)
    _, model, pre, post, _ = _fit(cb)
    names = [n for n, _ in model.named_parameters()]
    n_clipped_units = 0
    for i in range(len(pre.grads)):
        for name, w, g0, g1 in zip(names, pre.params[i], pre.grads[i], post.grads[i]):
            if name.startswith("head."):
                torch.testing.assert_close(g1, g0)  # output layer excluded by default
                continue
            # Reference, one output unit (row) at a time.
            rows_w = w.reshape(w.shape[0], -1) if w.ndim > 1 else w.reshape(1, -1)
            rows_g = g0.reshape(rows_w.shape)
            rows_out = g1.reshape(rows_w.shape)
            for rw, rg, ro in zip(rows_w, rows_g, rows_out):
                limit = 0.01 * max(float(rw.norm()), 1e-3)
                if float(rg.norm()) > limit:
                    n_clipped_units += 1
                    torch.testing.assert_close(ro, rg * (limit / float(rg.norm())), rtol=1e-5, atol=1e-8)
                else:
                    torch.testing.assert_close(ro, rg)
    assert n_clipped_units > 0


def test_agc_exclude_prefixes():
    cb = AdaptiveGradientClipping("agc", agc_lambda=0.01, agc_exclude=["rnn.weight_hh"])
    _, model, pre, post, _ = _fit(cb)
    names = [n for n, _ in model.named_parameters()]
    changed = {
        n: any(not torch.equal(pre.grads[i][k], post.grads[i][k]) for i in range(len(pre.grads)))
        for k, n in enumerate(names)
    }
    assert not changed["rnn.weight_hh_l0"]
    assert changed["head.weight"]


# ----------------------------------------------------------------------------- manual optimization
def test_manual_optimization_clips_every_step():
    cb = AdaptiveGradientClipping("quantile", quantile=0.3)
    trainer, _, pre, post, _ = _fit(cb, model=ManualLSTM())
    assert len(pre.norms) == 16  # two optimizer steps per batch, all seen by the callback
    assert trainer.global_step == 16
    thresholds = _expected_autoclip(pre.norms, 0.3)
    n_clipped = 0
    for a, b, t in zip(pre.norms, post.norms, thresholds):
        if a > t * (1 + 1e-6):
            n_clipped += 1
            assert b == pytest.approx(t, rel=1e-5)
        else:
            assert b == pytest.approx(a, rel=1e-6)
    assert n_clipped >= 4
    assert "grad_clip/threshold" in trainer.callback_metrics  # logging works from inside opt.step()


def _with_own_metric(cls):
    """The module also logs a metric of its own every step: Lightning's own schedule, to compare with."""

    class OwnMetric(cls):
        def training_step(self, batch, batch_idx):
            self.log("own/batch_idx", float(batch_idx), on_step=True, on_epoch=False, batch_size=1)
            return super().training_step(batch, batch_idx)

    return OwnMetric


@pytest.mark.parametrize(("manual", "every"), [(False, 3), (True, 3), (False, 1)])
def test_logger_rows_follow_lightnings_schedule_with_each_batchs_last_step(tmp_path, manual, every):
    """The callback logs every step and lets Lightning decide what reaches the loggers: its rows are exactly the
    rows of a metric the module logs itself, and each holds the pre-clip norm of that batch's last optimizer step."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    cb = AdaptiveGradientClipping("quantile", quantile=0.5)
    model = _with_own_metric(ManualLSTM if manual else LSTMRegressor)()
    steps_per_batch = 2 if manual else 1
    pre = Probe()
    trainer = _trainer([pre, cb], logger=CSVLogger(tmp_path, name="csv"), log_every_n_steps=every)
    torch.manual_seed(0)
    trainer.fit(model, _data(n=80, batch_size=8))  # 10 batches
    assert len(pre.norms) == 10 * steps_per_batch
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    own = [int(r["step"]) for r in rows if r.get("own/batch_idx")]
    clip_rows = [r for r in rows if r.get("grad_clip/norm")]
    assert [int(r["step"]) for r in clip_rows] == own
    assert len(own) == (10 if every == 1 else 10 // every)  # Lightning dropped the others at every > 1
    for r in clip_rows:
        last_step = (int(float(r["own/batch_idx"])) + 1) * steps_per_batch - 1
        assert float(r["grad_clip/norm"]) == pytest.approx(pre.norms[last_step], rel=1e-5)
    assert float(trainer.callback_metrics["grad_clip/norm"]) == pytest.approx(pre.norms[-1], rel=1e-5)


def test_a_stop_between_logging_steps_still_writes_that_steps_values(tmp_path):
    """Lightning writes the step metrics of the batch in which training stops: that row is the stopping step's
    norm, not an earlier one."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    class StopAt(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 4:
                trainer.should_stop = True

    cb = AdaptiveGradientClipping("quantile", quantile=0.5)
    pre = Probe()
    trainer = _trainer([pre, StopAt(), cb], logger=CSVLogger(tmp_path, name="csv"), log_every_n_steps=3)
    torch.manual_seed(0)
    trainer.fit(LSTMRegressor(), _data(n=80, batch_size=8))
    assert len(pre.norms) == 5
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        rows = {int(r["step"]): float(r["grad_clip/norm"]) for r in csv.DictReader(f) if r.get("grad_clip/norm")}
    assert sorted(rows) == [2, 4]
    assert rows[4] == pytest.approx(pre.norms[4], rel=1e-5)  # not batch 2's value again
    assert rows[2] == pytest.approx(pre.norms[2], rel=1e-5)


# ----------------------------------------------------------------------------- precision
def test_bf16_mixed_autocast():
    cb = AdaptiveGradientClipping("quantile", quantile=0.5)
    model = None if cpu_bf16_lstm_supported() else MLP(scale=1.0)  # no bf16 LSTM kernel without AVX-512
    _, _, pre, post, _ = _fit(cb, model=model, precision="bf16-mixed")
    thresholds = _expected_autoclip(pre.norms, 0.5)
    assert all(math.isfinite(x) for x in pre.norms)
    for a, b, t in zip(pre.norms, post.norms, thresholds):
        assert b == pytest.approx(min(a, t), rel=1e-4)


def test_fp16_grad_scaler_gradients_are_unscaled_before_the_callback():
    # 16-mixed with a GradScaler on CPU: Lightning turns precision="16-mixed" into bf16 on CPU, so pass the plugin.
    cb32 = AdaptiveGradientClipping("quantile", quantile=0.5)
    torch.manual_seed(0)
    _fit(cb32, model=MLP(scale=1.0), probes=False)
    cb16 = AdaptiveGradientClipping("quantile", quantile=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    torch.manual_seed(0)
    _, _, pre, post, _ = _fit(
        cb16, model=MLP(scale=1.0), plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)]
    )
    h32 = cb32.state_dict()["optimizers"][0]["rule"]["history"]
    h16 = cb16.state_dict()["optimizers"][0]["rule"]["history"]
    assert len(h16) == len(h32) == 8
    # Unscaled: fp16 norms match fp32 to fp16 precision, not 4096x larger.
    np.testing.assert_allclose(h16, h32, rtol=2e-2)
    for a, b, t in zip(pre.norms, post.norms, _expected_autoclip(pre.norms, 0.5)):
        assert b == pytest.approx(min(a, t), rel=1e-4)


# ----------------------------------------------------------------------------- non-finite gradients
def test_nan_step_is_skipped_and_history_unchanged():
    cb = AdaptiveGradientClipping("quantile", quantile=0.5)
    _, model, pre, post, after = _fit(cb, model=LSTMRegressor(optimizer="adam", lr=0.01, nan_batches=(3,)))
    assert math.isnan(pre.norms[3])
    assert all(g is None for g in post.grads[3])  # grads dropped: Adam skips them (no momentum step)
    for p0, p1 in zip(after.params[2], after.params[3]):
        assert torch.equal(p0, p1)
    for p0, p1 in zip(after.params[3], after.params[4]):
        assert not torch.equal(p0, p1)
    state = cb.state_dict()["optimizers"][0]
    finite = [x for i, x in enumerate(pre.norms) if i != 3]
    np.testing.assert_allclose(state["rule"]["history"], finite, rtol=1e-5)
    assert state["nonfinite_steps"] == 1
    assert state["consecutive_nonfinite"] == 0
    assert state["steps"] == 7


def test_consecutive_nonfinite_steps_stop_training():
    cb = AdaptiveGradientClipping("quantile", max_nonfinite_steps=3)
    torch.manual_seed(0)
    trainer = _trainer([cb])
    with pytest.raises(NonFiniteGradientError, match=r"non-finite \(nan\) for 3 consecutive") as info:
        trainer.fit(LSTMRegressor(nan_batches=(2, 3, 4)), _data())
    assert info.value.count == 3
    # Skipped steps still count as optimizer steps for Lightning: it raised at the 5th (index 4), batch 4.
    assert info.value.step == 4
    assert math.isnan(info.value.norm)
    assert isinstance(info.value, RuntimeError)


def test_non_consecutive_nonfinite_steps_do_not_stop_training():
    cb = AdaptiveGradientClipping("zscore", warmup_steps=2, max_nonfinite_steps=2)
    trainer, *_ = _fit(cb, model=LSTMRegressor(nan_batches=(1, 3, 5)), probes=False)
    assert trainer.global_step == 8  # ran to the end; skipped steps count as optimizer steps for Lightning
    state = cb.state_dict()["optimizers"][0]
    assert (state["steps"], state["nonfinite_steps"]) == (5, 3)


# ----------------------------------------------------------------------------- conflicts
def test_refuses_trainer_gradient_clip_val():
    with pytest.raises(ValueError, match=r"Trainer\(gradient_clip_val=1.0\).*clipped twice"):
        _trainer([AdaptiveGradientClipping()], gradient_clip_val=1.0).fit(LSTMRegressor(), _data())


def test_refuses_module_level_fixed_clip():
    model = LSTMRegressor()
    model.gradient_clip_val = 0.5
    with pytest.raises(ValueError, match=r"gradient_clip_val=0.5.*clipped twice"):
        _trainer([AdaptiveGradientClipping()]).fit(model, _data())


# ----------------------------------------------------------------------------- checkpointing
@pytest.mark.parametrize("mode", ["quantile", "zscore"])
def test_checkpoint_resume_restores_state_exactly(tmp_path, mode):
    kwargs = {"warmup_steps": 3} if mode == "zscore" else {"quantile": 0.3, "window": 5}
    # Uninterrupted: 2 epochs.
    full = AdaptiveGradientClipping(mode, **kwargs)
    torch.manual_seed(0)
    _trainer([full], max_epochs=2).fit(LSTMRegressor(), _data())
    # Interrupted: 1 epoch, checkpoint, resume to 2 epochs with a fresh callback.
    first = AdaptiveGradientClipping(mode, **kwargs)
    torch.manual_seed(0)
    t1 = _trainer([first], max_epochs=1)
    t1.fit(LSTMRegressor(), _data())
    ckpt = tmp_path / "clip.ckpt"
    t1.save_checkpoint(ckpt)
    # Loading alone restores the state exactly.
    loaded = AdaptiveGradientClipping(mode, **kwargs)
    _trainer([loaded], max_epochs=1).fit(LSTMRegressor(), _data(), ckpt_path=ckpt)
    assert loaded.state_dict() == first.state_dict()
    # Resuming continues exactly like the uninterrupted run.
    resumed = AdaptiveGradientClipping(mode, **kwargs)
    _trainer([resumed], max_epochs=2).fit(LSTMRegressor(), _data(), ckpt_path=ckpt)
    a, b = resumed.state_dict(), full.state_dict()
    assert a.keys() == b.keys()
    sa, sb = a["optimizers"][0], b["optimizers"][0]
    for key in ("steps", "clipped_steps", "nonfinite_steps", "recent_clipped"):
        assert sa[key] == sb[key]
    for key, value in sb["rule"].items():
        np.testing.assert_allclose(
            np.asarray(sa["rule"][key], dtype=float), np.asarray(value, dtype=float), rtol=1e-6
        )


def test_load_state_dict_tolerates_missing_keys_and_rejects_other_mode():
    cb = AdaptiveGradientClipping("zscore")
    cb.load_state_dict({"optimizers": {0: {}}})
    assert cb.state_dict()["optimizers"][0]["steps"] == 0
    with pytest.raises(ValueError, match="mode 'zscore'"):
        AdaptiveGradientClipping("quantile").load_state_dict(cb.state_dict())


# ----------------------------------------------------------------------------- DDP
def _run_ddp(tmp_path: Path, steps: int) -> list[dict]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(
        [sys.executable, str(HERE / "_ddp_clip_script.py"), str(tmp_path), str(steps)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_ddp_two_processes_same_thresholds_and_params(tmp_path):
    r0, r1 = _run_ddp(tmp_path, steps=6)
    assert len(r0["thresholds"]) == len(r1["thresholds"]) == 6
    assert r0["thresholds"] == r1["thresholds"]  # bit for bit, every step
    assert r0["norms"] == r1["norms"]
    assert r0["state"] == r1["state"]
    assert r0["params"] == r1["params"]
    assert any(r0["clipped"])
    # Each rank saw different data before the all-reduce (otherwise the test proves nothing).
    assert r0["local_loss"] != r1["local_loss"]


# ----------------------------------------------------------------------------- TBPTT modules
def _tbptt_model(**kwargs):
    from lightning_rnn import TBPTTModule, TBPTTStep

    class ChunkRegressor(TBPTTModule):
        def __init__(self):
            super().__init__(tbptt_steps=5, **kwargs)
            self.rnn = nn.LSTM(3, 8, batch_first=True)
            self.head = nn.Linear(8, 1)

        def tbptt_step(self, chunk, state):
            x, y = chunk  # (N, 5, 3), (N, 5, 1)
            out, state = self.rnn(x, state)  # (N, 5, 8)
            return TBPTTStep(nn.functional.mse_loss(self.head(out), y) * 30.0, state)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    return ChunkRegressor()


def _tbptt_data() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 20, 3, generator=g)  # (N, L, 3)
    return DataLoader(TensorDataset(x, x.cumsum(1)[..., :1]), batch_size=8)


def test_tbptt_module_every_chunk_step_is_clipped():
    cb = AdaptiveGradientClipping("quantile", quantile=0.5)
    pre, post = Probe(), Probe()
    torch.manual_seed(0)
    trainer = _trainer([pre, cb, post])
    trainer.fit(_tbptt_model(), _tbptt_data())
    assert len(pre.norms) == 8  # 2 batches x 4 chunks of 5 steps
    for a, b, t in zip(pre.norms, post.norms, _expected_autoclip(pre.norms, 0.5)):
        assert b == pytest.approx(min(a, t), rel=1e-5)
    assert any(a > b * (1 + 1e-5) for a, b in zip(pre.norms, post.norms))


def test_tbptt_module_with_trainer_clip_is_refused():
    # The TBPTT engine refuses Trainer(gradient_clip_val) itself (it never rewrites the Trainer).
    with pytest.raises(ValueError, match=r"Trainer\(gradient_clip_val=None\)"):
        _trainer([AdaptiveGradientClipping()], gradient_clip_val=1.0).fit(_tbptt_model(), _tbptt_data())


def test_fp16_scaler_initial_overflows_are_tolerated_but_counted():
    # GradScaler starts at 2**16 and halves per overflow: before the first finite step those skipped steps are
    # its search for a scale, not a failure, even with max_nonfinite_steps=2.
    cb = AdaptiveGradientClipping("quantile", max_nonfinite_steps=2)
    torch.manual_seed(0)
    model = MLP(scale=100.0, lr=1e-4)  # a stable run: only the scaler's initial overflows
    trainer = _trainer([cb], plugins=[MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))])
    trainer.fit(model, _data(n=160))
    state = cb.state_dict()["optimizers"][0]
    assert state["nonfinite_steps"] >= 3
    assert state["steps"] >= 1
    assert state["steps"] + state["nonfinite_steps"] == 20
