"""Every callback on every shipped module and on a user's own TBPTTModule, through a tiny real `fit`.

Each case trains a few optimizer steps on the module's own batches (see ``_contract_models``) and checks
what the callback did against a computation made another way (SVD, the gradient norm seen after clipping,
a fresh probe on the final weights). A callback that cannot apply to a module refuses it at setup.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, seed_everything

from lightning_rnn.callbacks import (
    AdaptiveGradientClipping,
    AdaptiveTBPTT,
    GradientFlowMonitor,
    SpectralNormMonitor,
)
from lightning_rnn.functional import measure_gradient_flow
from tests.callbacks._contract_models import MODULES, PROBED, case
from tests.callbacks._diagnostics_models import quiet_trainer

pytestmark = pytest.mark.filterwarnings(
    "ignore:SpectralNormMonitor. block:UserWarning", "ignore:.*does not have many workers",
    "ignore:.*longer than the training batches", "ignore:.*fewer than max_lag",
)

CALLBACKS = ("spectral_norm", "gradient_flow", "adaptive_clipping", "adaptive_tbptt")
#: the recurrent weights each module has, as SpectralNormMonitor names them
RECURRENT = {
    "lm": {"rnn.l0", "rnn.l1"},
    "classifier": {"rnn.l0", "rnn.l1"},
    "tagger": {"rnn.l0"},
    "seq2seq": {"model.encoder.rnn.l0", "model.encoder.rnn.l0_reverse", "model.decoder.cells.0"},
    "user": {"cell.W"},
}
MAX_NORM = 1e-3
_GATE_ROW = {"i": 0, "f": 1, "g": 2, "o": 3, "r": 0, "z": 1, "n": 2, "h": 0}


class LastBatch(Callback):
    """Keeps the last training batch (to re-run a probe on it after fit)."""

    batch: Any = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batch = batch


class GradNormAfterClipping(Callback):
    """Placed after AdaptiveGradientClipping: the global gradient norm the optimizer step really uses."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads:  # a classifier chunk in which no sequence ends has no loss, hence no gradients
            self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads]))))


def _probe_max_lag(module: str) -> int | None:
    return None if module == "classifier" else 3  # a many-to-one loss sits at each sequence's end


def _refusal(kind: str, module: str) -> str | None:
    if module == "seq2seq" and kind == "gradient_flow":
        return "Seq2SeqAttention has none"
    if module == "seq2seq" and kind == "adaptive_tbptt":
        return "Seq2SeqAttention is not one"
    return None


def _make(kind: str, module: str) -> Callback:
    if kind == "spectral_norm":
        return SpectralNormMonitor(every_n_steps=1, exact=True)
    if kind == "gradient_flow":
        return GradientFlowMonitor(every_n_steps=1, max_lag=_probe_max_lag(module), num_targets=2, heatmap=False)
    if kind == "adaptive_clipping":
        return AdaptiveGradientClipping("quantile", warmup_steps=0, max_norm=MAX_NORM)
    probe_steps = 12 if module == "classifier" else 4
    return AdaptiveTBPTT(every_n_steps=1, min_steps=2, max_steps=8, probe_steps=probe_steps, num_targets=2)


def _weight_of(model: torch.nn.Module, layer: str) -> torch.Tensor:
    params = dict(model.named_parameters())
    path, _, last = layer.rpartition(".")
    for name in (f"{path}.weight_hh_{last}", f"{layer}.weight_hh", layer):
        if name in params:
            return params[name].detach()
    raise KeyError(layer)


def _check(kind: str, module: str, model: Any, trainer: Any, cb: Any, extra: list[Callback]) -> None:
    if kind == "spectral_norm":
        assert {n.layer for n in cb.last} == RECURRENT[module]
        for n in cb.last:  # after the final optimizer step: the final weights, block by block
            blocks = _weight_of(model, n.layer).chunk(sum(m.layer == n.layer for m in cb.last), 0)
            block = blocks[_GATE_ROW[n.block]]  # torch's gate order
            assert n.sigma == pytest.approx(float(torch.linalg.svdvals(block.float())[0]), rel=1e-4)
    elif kind == "gradient_flow":
        assert cb.history and cb.last is not None
        res = cb.last
        assert math.isfinite(float(res.curve[0])) and float(res.curve[0]) > 0
        assert bool(torch.isfinite(res.curve).all()) and float(res.normalized[0]) == pytest.approx(1.0)
        # dropout is off in the probe: a fresh probe on the final weights and the last batch is identical
        last = extra[0].batch
        again = measure_gradient_flow(model, last, max_lag=cb.max_lag, num_targets=2, backward_passes=1)
        torch.testing.assert_close(again.curve, res.curve, rtol=1e-5, atol=0)
    elif kind == "adaptive_clipping":
        spy = extra[1]
        assert spy.norms and max(spy.norms) <= MAX_NORM * (1 + 1e-3)  # every step clipped to the ceiling
        assert cb.last_norm is not None and cb.last_norm > MAX_NORM
    else:
        assert cb.history
        assert model.tbptt_steps == cb.history[-1]["steps"] and 2 <= model.tbptt_steps <= 8
        assert float(trainer.callback_metrics["tbptt/steps"]) == model.tbptt_steps


def _fit(kind: str, module: str, precision: str, **overrides: Any) -> None:
    seed_everything(0)
    model, train = case(module, **overrides)
    cb = _make(kind, module)
    extra: list[Callback] = [LastBatch(), GradNormAfterClipping()]
    trainer = quiet_trainer(max_steps=4, precision=precision, callbacks=[cb, *extra], num_sanity_val_steps=0)
    refusal = _refusal(kind, module)
    if refusal is not None:
        with pytest.raises(TypeError, match=refusal):
            trainer.fit(model, train)
        return
    trainer.fit(model, train)
    _check(kind, module, model, trainer, cb, extra)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("kind", CALLBACKS)
def test_callback_on_module_fp32(kind, module):
    _fit(kind, module, "32-true")


# Under bf16-mixed: the modules whose recurrent state is not carried across chunks in bf16 today (the
# language model and the tagger without TBPTT; the classifier, seq2seq and the user module as they ship).
_BF16 = {
    "lm": dict(tbptt_steps=None, carry_state=False),
    "classifier": {},
    "tagger": dict(tbptt_steps=None),
    "seq2seq": {},
    "user": {},
}


@pytest.mark.parametrize("kind,module", [
    (kind, module) for kind in CALLBACKS for module in ("classifier", "user", "lm", "tagger", "seq2seq")
    if not (kind == "adaptive_tbptt" and module in ("lm", "tagger"))  # it turns TBPTT on: a carried bf16 state
])
def test_callback_on_module_bf16(kind, module):
    _fit(kind, module, "bf16-mixed", **_BF16[module])


@pytest.mark.parametrize("module", PROBED)
def test_gradient_flow_monitor_does_not_change_training(module):
    """Same seed, with and without the monitor: bit-identical parameters (RNG, dropout, metrics untouched)."""

    def run(with_monitor: bool) -> torch.Tensor:
        seed_everything(0)
        model, train = case(module)
        cbs = [GradientFlowMonitor(every_n_steps=1, max_lag=_probe_max_lag(module), num_targets=2, heatmap=False)]
        quiet_trainer(max_steps=4, callbacks=cbs if with_monitor else []).fit(model, train)
        metrics = {k: float(v) for k, v in model.trainer.callback_metrics.items()}
        return torch.cat([p.detach().flatten() for p in model.parameters()]), metrics

    (a, ma), (b, mb) = run(True), run(False)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert {k: v for k, v in ma.items() if not k.startswith("gradient_flow")} == mb


def test_bidirectional_encoder_is_refused_by_the_probe_callbacks():
    for cb in (GradientFlowMonitor(), AdaptiveTBPTT()):
        model, train = case("classifier", bidirectional=True, tbptt_steps=None)
        with pytest.raises(TypeError, match="bidirectional recurrent layer \\('rnn'\\)"):
            quiet_trainer(max_steps=1, callbacks=[cb]).fit(model, train)
