"""The TBPTT engine where it meets the rest of Lightning: step accounting, schedulers, cadences, hooks."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_rnn import RNNClassifier, RNNConfig, RNNLanguageModel

from ._tbptt_models import SeqRegressor, loader, make_data, trainer

# 8 rows of length 12 in batches of 2 with tbptt_steps=4: 4 batches x 3 chunks = 12 optimizer steps per epoch


def _with_scheduler(model: SeqRegressor, make) -> None:
    def configure():
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": make(opt, model.trainer), "interval": "step"}}

    model.configure_optimizers = configure


def _one_cycle(opt, t):
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=t.estimated_stepping_batches)


def _warmup(opt, t):
    total = t.estimated_stepping_batches
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / total))


@pytest.mark.parametrize("make", [_one_cycle, _warmup])
def test_estimated_stepping_batches_schedule_runs_to_its_last_step_in_a_max_epochs_run(make):
    """max_epochs (and a max_steps that does not bind): "auto" steps per batch, what the estimate counts."""
    x, y = make_data(n=8, length=12)
    model = SeqRegressor(tbptt_steps=4)
    _with_scheduler(model, make)
    t = trainer(max_epochs=2, max_steps=1000)
    t.fit(model, loader(x, y, 2))
    assert t.global_step == 24  # optimizer steps
    sched = t.lr_scheduler_configs[0].scheduler
    assert sched.last_epoch == t.estimated_stepping_batches == 8  # one scheduler step per batch: the last one
    if make is _warmup:
        assert model.optimizers().param_groups[0]["lr"] == pytest.approx(0.1)


@pytest.mark.parametrize("unit", ["auto", "optimizer_step"])
@pytest.mark.parametrize("make", [_one_cycle, _warmup])
def test_estimated_stepping_batches_schedule_runs_to_its_last_step_in_a_max_steps_run(make, unit):
    x, y = make_data(n=8, length=12)
    model = SeqRegressor(tbptt_steps=4, lr_scheduler_step=unit)  # "auto" (the default) follows the estimate
    _with_scheduler(model, make)
    t = trainer(max_epochs=-1, max_steps=7)
    t.fit(model, loader(x, y, 2))
    assert t.global_step == 7  # exactly, although 7 is not a multiple of the 3 chunks per batch
    assert t.lr_scheduler_configs[0].scheduler.last_epoch == t.estimated_stepping_batches == 7


def test_max_steps_stops_at_exactly_n_optimizer_steps_and_the_batch_schedule_never_overruns():
    x, y = make_data(n=8, length=12)
    model = SeqRegressor(tbptt_steps=4, record=True, lr_scheduler_step="batch")
    _with_scheduler(model, _one_cycle)  # per batch: 3 scheduler steps of 7 here, never more than sized for
    t = trainer(max_epochs=-1, max_steps=7)
    t.fit(model, loader(x, y, 2))
    assert t.global_step == 7
    assert model.chunk_lengths == [4] * 7  # the 8th and 9th chunks of batch 3 never ran
    assert t.lr_scheduler_configs[0].scheduler.last_epoch == 3


def test_model_checkpoint_every_n_train_steps_saves_after_the_batch_that_reaches_each_multiple(tmp_path):
    x, y = make_data(n=8, length=12)
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1, filename="{step}")
    t = trainer(enable_checkpointing=True, callbacks=[ckpt])
    t.fit(SeqRegressor(tbptt_steps=4), loader(x, y, 2))  # steps after each batch: 3, 6, 9, 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step=12.ckpt", "step=6.ckpt", "step=9.ckpt"]
    # a multiple reached exactly at a batch end is saved once, by ModelCheckpoint itself
    ckpt2 = ModelCheckpoint(dirpath=tmp_path / "b", every_n_train_steps=3, save_top_k=-1, filename="{step}")
    trainer(enable_checkpointing=True, callbacks=[ckpt2]).fit(SeqRegressor(tbptt_steps=4), loader(x, y, 2))
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [f"step={s}.ckpt" for s in (12, 3, 6, 9)]


class _ValCount(pl.Callback):
    def __init__(self) -> None:
        self.at: list[int] = []

    def on_validation_start(self, trainer, pl_module):
        self.at.append(trainer.global_step)


def test_val_check_interval_counts_batches_as_documented():
    x, y = make_data(n=8, length=12)
    count = _ValCount()
    t = trainer(val_check_interval=2, callbacks=[count], limit_val_batches=1)
    t.fit(SeqRegressor(tbptt_steps=4), loader(x, y, 2), loader(x, y, 2))
    assert count.at == [6, 12]  # after batches 2 and 4 (3 optimizer steps each)


def test_log_every_n_steps_counts_batches_as_documented(tmp_path):
    x, y = make_data(n=8, length=12)
    t = trainer(logger=CSVLogger(tmp_path, name="", version=""), log_every_n_steps=2)
    t.fit(SeqRegressor(tbptt_steps=4), loader(x, y, 2))
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    steps = [int(r["step"]) for r in rows if r.get("train/loss_step")]
    assert steps == [1, 3]  # batches 2 and 4 (the logger's step is the batch index), not every 2nd chunk


# ---------------------------------------------------------------------- a chunk with no loss
def test_classifier_chunks_without_a_loss_are_not_optimizer_steps():
    torch.manual_seed(0)
    model = RNNClassifier(2, encoder=RNNConfig(hidden_size=4), vocab_size=5, embedding_dim=4, tbptt_steps=3, optimizer="sgd", lr=0.1)
    model.lr_scheduler_step = "optimizer_step"

    def configure():
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    model.configure_optimizers = configure
    batches = [{"inputs": torch.randint(0, 5, (2, 9)), "labels": torch.tensor([0, 1])} for _ in range(2)]
    t = trainer()
    t.fit(model, torch.utils.data.DataLoader(batches, batch_size=None))
    assert t.global_step == 2  # 3 chunks per batch, only the last one holds the loss
    assert model.optimizers().param_groups[0]["lr"] == pytest.approx(0.25)


# ---------------------------------------------------------------------- overrides
class _HooksWithoutSuper(SeqRegressor):
    """Overrides every Lightning hook the engine used to need, none of them calling super()."""

    def on_fit_start(self):
        pass

    def on_train_epoch_start(self):
        pass

    def on_train_epoch_end(self):
        pass

    def on_before_optimizer_step(self, optimizer):
        pass

    def on_validation_epoch_start(self):
        pass


def test_engine_works_when_hooks_are_overridden_without_super():
    from .test_tbptt import _NormSGD

    x, y = make_data(n=2, length=8)
    model = _HooksWithoutSuper(tbptt_steps=4, carry_state=True, record=True, gradient_clip_val=0.01)
    norms: list[float] = []

    def configure():
        opt = _NormSGD(model.parameters(), lr=1.0, log=norms)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)]

    model.configure_optimizers = configure
    data = torch.utils.data.DataLoader([(x * 100, y)] * 2, batch_size=None)
    trainer(max_epochs=2).fit(model, data)
    assert model.optimizers().param_groups[0]["lr"] == pytest.approx(0.01)  # epoch scheduler stepped twice
    assert all(n == pytest.approx(0.01, rel=1e-3) for n in norms) and len(norms) == 8  # clipped every chunk
    assert model.seen_states[0] is None and model.seen_states[4] is None  # carried state reset per epoch
    assert all(s is not None for i, s in enumerate(model.seen_states) if i not in (0, 4))


class NoSuper(SeqRegressor):
    """A user override of ``configure_callbacks`` that does not call ``super()``."""

    def configure_callbacks(self):
        return []


def test_configure_callbacks_without_super_leaves_the_refusal_to_lightning():
    x, y = make_data(n=2, length=8)
    with pytest.raises(Exception, match=r"gradient_clip_val"):
        trainer(gradient_clip_val=1.0).fit(NoSuper(tbptt_steps=4), loader(x, y, 2))


def test_configure_callbacks_without_super_warns_that_resume_is_not_exact():
    x, y = make_data(n=2, length=8)
    with pytest.warns(UserWarning, match=r"ExactResume.*will not restore"):
        trainer().fit(NoSuper(tbptt_steps=4), loader(x, y, 2))
    with warnings.catch_warnings():  # with super() (or ExactResume on the Trainer) there is nothing to say
        warnings.filterwarnings("error", message=".*ExactResume.*")
        trainer().fit(SeqRegressor(tbptt_steps=4), loader(x, y, 2))


class _RecordingSlices(SeqRegressor):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.slices: list[tuple[bool, int, int]] = []

    def slice_batch(self, batch, start, end):
        self.slices.append((self.training, start, end))
        return super().slice_batch(batch, start, end)


def test_slice_batch_override_is_used_in_training_and_evaluation():
    x, y = make_data(n=2, length=8)
    model = _RecordingSlices(tbptt_steps=4)
    t = trainer()
    t.fit(model, loader(x, y, 2), loader(x, y, 2))
    t.validate(model, loader(x, y, 2), verbose=False)
    t.test(model, loader(x, y, 2), verbose=False)
    assert model.slices[:2] == [(True, 0, 4), (True, 4, 8)]
    assert model.slices.count((False, 0, 4)) == 3  # fit's validation, validate, test


class _TemperatureLM(RNNLanguageModel):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.log_temperature = torch.nn.Parameter(torch.zeros(()))

    def project(self, features):
        return super().project(features) * self.log_temperature.exp()


def test_language_model_project_override_trains_and_evaluates():
    torch.manual_seed(0)
    model = _TemperatureLM(12, 8, RNNConfig(hidden_size=8), tbptt_steps=4, lr=0.05)
    tokens = torch.randint(0, 12, (2, 17))
    data = torch.utils.data.DataLoader([(tokens[:, :-1], tokens[:, 1:])], batch_size=None)
    t = trainer()
    t.fit(model, data)
    assert model.log_temperature.item() != 0.0  # the override's parameter trained
    (metrics,) = t.validate(model, data, verbose=False)
    with torch.no_grad():
        logits, _ = model(tokens[:, :-1])
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 12), tokens[:, 1:].reshape(-1))
    assert metrics["val/loss"] == pytest.approx(ref.item(), rel=1e-5)
    with pytest.raises(TypeError, match="output='full'"):
        _TemperatureLM(12, 8, RNNConfig(hidden_size=8), output="sampled", num_sampled=4)


# ---------------------------------------------------------------------- strategies
def test_sharded_strategies_are_refused_at_setup():
    from lightning.pytorch.strategies import FSDPStrategy

    fake = SimpleNamespace(strategy=FSDPStrategy.__new__(FSDPStrategy), gradient_clip_val=None, accumulate_grad_batches=1)
    with pytest.raises(ValueError, match=r"got FSDPStrategy.*strategy=\"ddp\""):
        SeqRegressor()._check_trainer(fake)


def test_engine_callback_leaves_the_trainer_after_fit():
    x, y = make_data(n=2, length=8)
    t = trainer()
    before = list(t.callbacks)
    t.fit(SeqRegressor(tbptt_steps=4), loader(x, y, 2))
    # what stays is the module's configure_callbacks() (ExactResume); the engine's own callback has left
    assert [type(c).__name__ for c in t.callbacks if c not in before] == ["ExactResume"]
