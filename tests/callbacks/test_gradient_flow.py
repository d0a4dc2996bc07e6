"""GradientFlowMonitor in real Trainer.fit runs: keys, values, no side effects, heatmap, W&B, resume."""

from __future__ import annotations

import csv
import glob
import math
import os

import pytest
import torch
from lightning.pytorch import LightningModule, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from lightning_rnn.callbacks import GradientFlowMonitor, SpectralNormMonitor
from lightning_rnn.functional import per_lag_gradient_norms
from tests.callbacks._diagnostics_models import TinyLSTMLM, quiet_trainer, token_loader

pytestmark = pytest.mark.filterwarnings(
    "ignore:SpectralNormMonitor. block:UserWarning", "ignore:.*does not have many workers"
)


def _rows(logger: CSVLogger) -> list[dict[str, str]]:
    with open(f"{logger.log_dir}/metrics.csv") as f:
        return list(csv.DictReader(f))


def test_logs_expected_keys_and_values_csv(tmp_path):
    model = TinyLSTMLM()
    probe = next(iter(token_loader(n=4, length=12)))
    logger = CSVLogger(tmp_path, name="gf")
    mon = GradientFlowMonitor(every_n_steps=3, max_lag=5, num_targets=3, probe_batch=probe, per_layer=True)
    quiet_trainer(max_steps=6, logger=logger, callbacks=[mon]).fit(model, token_loader(n=24))
    rows = [r for r in _rows(logger) if r.get("gradient_flow/horizon")]
    assert [int(r["step"]) for r in rows] == [0, 2, 5]  # global steps 1, 3, 6
    assert [h["step"] for h in mon.history] == [1, 3, 6]
    last = rows[-1]
    for k in (1, 2, 4):
        assert f"gradient_flow/lag_{k}" in last and f"gradient_flow/layer_1/lag_{k}" in last
    assert "gradient_flow/lag_8" not in last  # > max_lag
    assert float(last["gradient_flow/max_lag"]) == 5
    # training mode (cuDNN differentiates only training-mode RNNs), dropout switched off another way
    assert model.probe_modes and all(mode == (True, 0.0) for mode in model.probe_modes)
    assert model.lstm.dropout == 0.3 and model.training
    # the last probe ran on the final weights: an independent computation (eval mode) on the same batch agrees
    model.eval()
    states, losses = model.gradient_flow_probe(probe, max_steps=8)  # max_lag + num_targets steps
    ref = per_lag_gradient_norms(states, losses, 5, num_targets=3, backward_passes=1)
    for k in (1, 2, 4):
        assert float(last[f"gradient_flow/lag_{k}"]) == pytest.approx(float(ref.normalized[k]), rel=1e-4)
    assert float(last["gradient_flow/g0"]) == pytest.approx(float(ref.curve[0]), rel=1e-4)
    expected_h = 6 if ref.horizon is None else ref.horizon
    assert float(last["gradient_flow/horizon"]) == expected_h
    # heatmaps: one per epoch and one at the end, in the logger's directory
    pngs = sorted(os.path.basename(p) for p in glob.glob(f"{logger.log_dir}/gradient_flow/*.png"))
    assert "heatmap.png" in pngs and any(p.startswith("heatmap_epoch=") for p in pngs)
    with open(f"{logger.log_dir}/gradient_flow/heatmap.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def _train(callbacks, root, steps=8):
    seed_everything(7)
    model = TinyLSTMLM(dropout=0.4)
    quiet_trainer(max_steps=steps, callbacks=callbacks, default_root_dir=root).fit(model, token_loader(n=32, seed=3))
    return model


def test_training_trajectory_identical_with_and_without_monitors(tmp_path):
    plain = _train([], tmp_path)
    mon = GradientFlowMonitor(every_n_steps=2, max_lag=4, num_targets=2)
    watched = _train([SpectralNormMonitor(every_n_steps=1), mon], tmp_path)
    assert os.path.exists(f"{tmp_path}/gradient_flow/heatmap.png")  # logger=False: under default_root_dir
    assert len(mon.history) >= 4  # the probe (which draws random numbers) really ran
    assert watched.losses == plain.losses  # bit-identical
    for a, b in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(a, b)


def test_probe_restores_modes_and_leaves_grads_untouched():
    model = TinyLSTMLM()
    model.train()
    model.head.eval()  # a submodule deliberately in eval mode stays so
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    mon = GradientFlowMonitor(max_lag=3)
    res = mon.probe(model, next(iter(token_loader())))
    assert res is not None and res.max_lag == 3
    assert model.training and model.lstm.training and not model.head.training
    assert model.probe_modes == [(True, 0.0)] and model.lstm.dropout == 0.3
    assert all(torch.equal(p.grad, torch.full_like(p, 3.0)) for p in model.parameters())


def test_short_probe_clamps_max_lag_with_a_warning():
    model = TinyLSTMLM()
    mon = GradientFlowMonitor(max_lag=50, num_targets=2)
    with pytest.warns(UserWarning, match="fewer than max_lag"):
        res = mon.probe(model, next(iter(token_loader(length=6))))
    assert res.max_lag == 5
    assert math.isclose(float(res.normalized[0]), 1.0)


def test_default_max_lag_is_probe_length():
    mon = GradientFlowMonitor()
    res = mon.probe(TinyLSTMLM(), next(iter(token_loader(length=9))))
    assert res.max_lag == 8


def test_state_dict_and_resume_keep_history(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    mon = GradientFlowMonitor(every_n_steps=2, max_lag=3, num_targets=2)
    model = TinyLSTMLM()
    quiet_trainer(max_steps=4, callbacks=[mon, ckpt], enable_checkpointing=True, default_root_dir=tmp_path).fit(model, token_loader(n=16))
    assert [h["step"] for h in mon.history] == [1, 2, 4]
    resumed = GradientFlowMonitor(every_n_steps=2, max_lag=3, num_targets=2)
    quiet_trainer(max_steps=8, callbacks=[resumed], default_root_dir=tmp_path).fit(
        TinyLSTMLM(), token_loader(n=16), ckpt_path=f"{tmp_path}/last.ckpt"
    )
    assert [h["step"] for h in resumed.history] == [1, 2, 4, 6, 8]
    assert resumed.history[:3] == mon.history
    assert os.path.exists(f"{tmp_path}/gradient_flow/heatmap.png")


def test_module_without_probe_gets_a_clear_error():
    class NoProbe(LightningModule):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(2, 3)

    with pytest.raises(TypeError, match="gradient_flow_probe"):
        GradientFlowMonitor().setup(None, NoProbe(), "fit")  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs,match", [
    (dict(every_n_steps=0), "every_n_steps"), (dict(every_n_steps=-1), "every_n_steps"),
    (dict(max_lag=0), "max_lag"), (dict(max_lag=2.0), "max_lag"),
    (dict(eps=0.0), "eps"), (dict(eps=1.0), "eps"), (dict(eps=1.5), "eps"),
    (dict(num_targets=0), "num_targets"), (dict(log_lags=[-1]), "log_lags"),
    (dict(backward_passes=0), "backward_passes"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GradientFlowMonitor(**kwargs)


def test_wandb_offline_writes_heatmap_image_and_curve(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="lightning-rnn-tests")
    try:
        mon = GradientFlowMonitor(every_n_steps=2, max_lag=4, num_targets=2)
        quiet_trainer(max_steps=4, logger=logger, callbacks=[mon]).fit(TinyLSTMLM(), token_loader(n=16))
        run_dir = logger.experiment.dir
    finally:
        wandb.finish()
    images = glob.glob(f"{run_dir}/media/images/gradient_flow/heatmap*.png")
    assert images, f"no heatmap image under {run_dir}/media/images"
    tables = glob.glob(f"{run_dir}/media/table/gradient_flow/curve*.table.json")
    assert tables, f"no curve table under {run_dir}/media/table"
