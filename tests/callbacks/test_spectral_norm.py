"""SpectralNormMonitor in real Trainer.fit runs: keys, cadence, values, warnings, state, bad input."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from lightning_rnn.callbacks import SpectralNormMonitor
from lightning_rnn.nn import RNNConfig
from tests.callbacks._diagnostics_models import TinyLSTMLM, quiet_trainer, token_loader

pytestmark = pytest.mark.filterwarnings("ignore:SpectralNormMonitor. block:UserWarning", "ignore:You defined a `validation_step`")


def _rows(logger: CSVLogger) -> list[dict[str, str]]:
    with open(f"{logger.log_dir}/metrics.csv") as f:
        return list(csv.DictReader(f))


def test_logs_per_block_keys_at_cadence_with_exact_values(tmp_path):
    model = TinyLSTMLM()
    logger = CSVLogger(tmp_path, name="spec")
    mon = SpectralNormMonitor(every_n_steps=2, exact=True, log_bound_ratios=True)
    quiet_trainer(max_steps=6, logger=logger, callbacks=[mon]).fit(model, token_loader(n=24))
    rows = [r for r in _rows(logger) if r.get("spectral_norm/max")]
    blocks = [f"lstm.l{k}/{b}" for k in (0, 1) for b in "ifgo"]
    for key in blocks:
        assert f"spectral_norm/{key}" in rows[0] and f"spectral_norm_bound/{key}" in rows[0]
    # first batch (global_step 1), then global steps 2, 4, 6; logged at Lightning's own step (batches - 1)
    assert [int(r["step"]) for r in rows] == [0, 1, 3, 5]
    # the last one ran after the final optimizer step: the final weights
    last = rows[-1]
    for k in (0, 1):
        gates = getattr(model.lstm, f"weight_hh_l{k}").detach().chunk(4, 0)
        for b, g in zip("ifgo", gates):
            sigma = float(torch.linalg.svdvals(g)[0])
            assert float(last[f"spectral_norm/lstm.l{k}/{b}"]) == pytest.approx(sigma, rel=1e-5)
            gamma = 1.0 if b == "g" else 0.25
            assert float(last[f"spectral_norm_bound/lstm.l{k}/{b}"]) == pytest.approx(sigma * gamma, rel=1e-5)
    sig = [float(last[f"spectral_norm/{k}"]) for k in blocks]
    assert float(last["spectral_norm/max"]) == pytest.approx(max(sig), rel=1e-6)
    ratios = [float(last[f"spectral_norm_bound/{k}"]) for k in blocks]
    assert float(last["spectral_norm/max_bound_ratio"]) == pytest.approx(max(ratios), rel=1e-6)


def test_power_iteration_tracks_exact_during_training():
    model = TinyLSTMLM()
    mon = SpectralNormMonitor(every_n_steps=1)
    quiet_trainer(max_steps=5, callbacks=[mon]).fit(model, token_loader(n=20))
    exact = {f"lstm.l{k}/{b}": float(torch.linalg.svdvals(g)[0])
             for k in (0, 1) for b, g in zip("ifgo", getattr(model.lstm, f"weight_hh_l{k}").detach().chunk(4, 0))}
    for n in mon.last:
        assert n.sigma <= exact[n.key] * (1 + 1e-5)  # power iteration is a lower bound
        assert n.sigma == pytest.approx(exact[n.key], rel=2e-2)


def test_tbptt_module_several_optimizer_steps_per_batch(tmp_path):
    from lightning_rnn import RNNLanguageModel

    model = RNNLanguageModel(12, 6, encoder=RNNConfig(hidden_size=8, num_layers=1), tbptt_steps=3)  # 4 chunks of 3: 4 optimizer steps/batch
    logger = CSVLogger(tmp_path, name="tbptt")
    mon = SpectralNormMonitor(every_n_steps=6)
    trainer = quiet_trainer(max_steps=12, logger=logger, callbacks=[mon])
    trainer.fit(model, token_loader(n=12, length=12))
    assert trainer.global_step == 12
    rows = [r for r in _rows(logger) if r.get("spectral_norm/max")]
    assert [int(r["step"]) for r in rows] == [0, 1, 2]  # global steps 4, 8, 12 cross 0, 6, 12
    assert {k for k in rows[0] if k.startswith("spectral_norm/rnn.")} == {f"spectral_norm/rnn.l0/{b}" for b in "ifgo"}


def test_warns_once_per_block_above_the_line():
    model = TinyLSTMLM(dropout=0.0)
    with torch.no_grad():
        model.lstm.weight_hh_l0[10:12].mul_(0.0).add_(torch.eye(2, 10) * 5.0)  # f block of layer 0: σ = 5
    mon = SpectralNormMonitor(every_n_steps=1, exact=True)
    with pytest.warns(UserWarning, match=r"'lstm.l0/f' has σ_max·γ = 1.2\d > 1") as record:
        quiet_trainer(max_steps=3, callbacks=[mon]).fit(model, token_loader(n=12))
    assert sum("lstm.l0/f" in str(w.message) for w in record) == 1


def test_state_dict_round_trip():
    model = TinyLSTMLM()
    mon = SpectralNormMonitor(every_n_steps=2)
    quiet_trainer(max_steps=3, callbacks=[mon]).fit(model, token_loader())
    state = mon.state_dict()
    other = SpectralNormMonitor(every_n_steps=2)
    other.load_state_dict(state)
    assert other._last_bucket == mon._last_bucket
    assert set(other._vectors) == {"lstm.l0", "lstm.l1"}
    for k, v in mon._vectors.items():
        torch.testing.assert_close(other._vectors[k], v)
    other.load_state_dict({})  # older/empty state: defaults
    assert other._last_bucket is None


def test_user_named_modules_and_no_recurrent_layer():
    class Plain(LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

    with pytest.raises(ValueError, match="found no recurrent layer"):
        SpectralNormMonitor().setup(None, Plain(), "fit")  # type: ignore[arg-type]
    mon = SpectralNormMonitor(modules=["lstm"])
    mon.setup(None, TinyLSTMLM(), "fit")  # type: ignore[arg-type]
    assert [w.name for w in mon._weights] == ["lstm.l0", "lstm.l1"]
    with pytest.raises(ValueError, match="recurrent module"):
        SpectralNormMonitor(modules=["head"]).setup(None, TinyLSTMLM(), "fit")  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs,match", [
    (dict(every_n_steps=0), "every_n_steps"), (dict(every_n_steps=-3), "every_n_steps"),
    (dict(every_n_steps=2.5), "every_n_steps"), (dict(num_iters=0), "num_iters"),
    (dict(warmup_iters=0), "warmup_iters"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpectralNormMonitor(**kwargs)
    with pytest.raises(TypeError, match="module paths"):
        SpectralNormMonitor(modules=[1])  # type: ignore[list-item]


def test_no_nan_on_fresh_model():
    mon = SpectralNormMonitor()
    mon.setup(None, TinyLSTMLM(), "fit")  # type: ignore[arg-type]
    assert all(math.isfinite(n.sigma) and n.sigma > 0 for n in mon.measure())
