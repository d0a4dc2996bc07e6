"""The contract on a CUDA device.

Every shipped module and a user's own ``TBPTTModule`` through ``fit``, ``validate``, ``test``, ``predict`` and
checkpoint reload (on the GPU, and onto the CPU as a user deploying a GPU-trained model does) under
``32-true``, ``bf16-mixed`` and ``16-mixed`` (fp16 with a gradient scaler); every callback on every module;
exact resume; a gradient scaler that overflows at its start; the hand-written recurrences against their
unrolled references; and the CLI's checkpoint flows with ``--trainer.accelerator=gpu``.

Skipped where torch sees no CUDA device (CI has none). On a machine with a GPU::

    python -m pytest tests/test_gpu.py -m "slow or not slow"

``LIGHTNING_RNN_TEST_DEVICE=cpu`` runs the same checks on the CPU instead (Lightning runs ``16-mixed`` as
bf16 there): a dry run of this file where no GPU is at hand. The CPU versions of these checks, exact where
the GPU's are toleranced, are in ``tests/test_contract.py``, ``tests/callbacks/`` and ``tests/test_resume.py``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import Callback, seed_everything

from lightning_rnn.nn import RNNStack
from tests.callbacks import test_every_module as every
from tests.callbacks._contract_models import case as callback_case
from tests.test_contract import (
    MODULES,
    OPS,
    _assert_same,
    _check_prediction,
    _lm_reference,
    make_case,
    predict_loader,
)

_FORCED = os.environ.get("LIGHTNING_RNN_TEST_DEVICE")
CUDA = torch.cuda.is_available() and _FORCED in (None, "cuda")
DEVICE = torch.device("cuda" if CUDA else "cpu")
ACCELERATOR = "gpu" if CUDA else "cpu"
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
#: autocast dtype of each mixed precision on this device (Lightning runs 16-mixed as bf16 on a CPU)
AMP_DTYPE = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16 if CUDA else torch.bfloat16}

pytestmark = [
    pytest.mark.skipif(not CUDA and _FORCED != "cpu", reason="needs a CUDA device (LIGHTNING_RNN_TEST_DEVICE=cpu: "
                       "a dry run on the CPU)"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers", "ignore:SpectralNormMonitor. block:UserWarning",
                               "ignore:.*longer than the training batches", "ignore:.*fewer than max_lag",
                               "ignore:.*AMP with fp16 is not supported on CPU"),
]


def _cpu(data: Any) -> Any:
    return move_data_to_device(data, torch.device("cpu"))


def trainer(precision: str | None, tmp: Path, **kwargs: Any) -> L.Trainer:
    options: dict[str, Any] = dict(
        max_steps=3, limit_val_batches=1, precision=precision, accelerator=ACCELERATOR, devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=tmp,
    )
    options.update(kwargs)
    return L.Trainer(**options)


# ---------------------------------------------------------------------------------------------- the contract
_FITTED: dict[tuple[str, str], Any] = {}


def fitted(name: str, precision: str, tmp_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """(the case after a short fit on the device, its checkpoint); made once per (module, precision)."""
    key = (name, precision)
    if isinstance(_FITTED.get(key), BaseException):
        raise _FITTED[key]
    if key not in _FITTED:
        try:
            tmp = tmp_factory.mktemp(f"gpu-{name}-{precision}")
            case = make_case(name, "32-true", tmp)  # the LSTM every module ships with
            before = [p.detach().clone() for p in case.model.parameters()]
            t = trainer(precision, tmp)
            t.fit(case.model, datamodule=case.data)
            assert t.global_step > 0
            moved = [not torch.equal(a, b.detach().cpu()) for a, b in zip(before, case.model.parameters())]
            assert any(moved), "nothing trained"
            loss = t.callback_metrics.get("train/loss")
            assert loss is not None and torch.isfinite(loss), f"train/loss {loss}"
            ckpt = tmp / "model.ckpt"
            t.save_checkpoint(ckpt)
            _FITTED[key] = (case, ckpt)
        except Exception as error:
            _FITTED[key] = error
            raise
    return _FITTED[key]


def _reference(name: str, case: Any, model: Any, batches: list[Any], precision: str, device: torch.device) -> list:
    """The case's reference predictions, computed on ``device`` under the run's autocast."""
    model.to(device).eval()
    dtype = AMP_DTYPE.get(precision) if device.type == DEVICE.type else None
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        if name == "lm":  # a fresh carried state
            carried: list = [None]
            return [_cpu(_lm_reference(model, move_data_to_device(b, device), carried)) for b in batches]
        return [_cpu(case.reference(model, move_data_to_device(b, device))) for b in batches]


def _close(a: Any, b: Any, **tolerance: float) -> None:
    if isinstance(b, dict):
        for k in b:
            _close(a[k], b[k], **tolerance)
    elif isinstance(b, list | tuple) and b and isinstance(b[0], torch.Tensor):
        for x, y in zip(a, b):
            _close(x, y, **tolerance)
    elif isinstance(b, torch.Tensor):
        if b.is_floating_point():
            torch.testing.assert_close(a, b, equal_nan=True, **tolerance)


@pytest.mark.parametrize(("name", "op", "precision"), [
    pytest.param(name, op, precision, id=f"{name}-{op}-{precision}")
    for precision in PRECISIONS for name in MODULES for op in OPS
])
def test_contract_on_the_device(name: str, op: str, precision: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    case, ckpt = fitted(name, precision, tmp_path_factory)
    model, tmp = case.model, ckpt.parent
    if op == "fit":
        return  # asserted in fitted()
    if op in ("validate", "test"):
        run = getattr(trainer(precision, tmp), op)
        (metrics,) = run(model, datamodule=case.data, verbose=False)
        stage = "val" if op == "validate" else "test"
        assert math.isfinite(metrics[f"{stage}/loss"]), metrics
        return
    batches = list(predict_loader(case.data))
    if op == "predict":
        predictions = _cpu(trainer(precision, tmp).predict(model, dataloaders=predict_loader(case.data)))
        assert len(predictions) == len(batches)
        expected = _reference(name, case, model, batches, precision, DEVICE)
        for got, want, batch in zip(predictions, expected, batches):
            _check_prediction(name, model, got, want, batch, exact=False)
            if precision == "32-true":  # the same kernels in chunks and whole: float32 rounding only
                if name == "custom":  # one output per chunk
                    got = torch.cat(got, 1)
                _close(got, want, rtol=1e-4, atol=1e-4)
        return
    if op == "reload":
        loaded = type(model).load_from_checkpoint(ckpt, weights_only=True)
        assert dict(loaded.hparams) == dict(model.hparams)
        for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
            assert torch.equal(a.cpu(), b.cpu()), k
        first = _cpu(trainer(precision, tmp).predict(model, dataloaders=predict_loader(case.data)))
        again = _cpu(trainer(precision, tmp).predict(loaded, dataloaders=predict_loader(case.data)))
        for a, b in zip(first, again):
            _assert_same(b, a, exact=True)
        # a GPU-trained checkpoint served on a CPU: the same function of the inputs
        on_cpu = type(model).load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
        assert all(p.device.type == "cpu" for p in on_cpu.parameters())
        want = _reference(name, case, model, batches, "32-true", DEVICE)
        got = _reference(name, case, on_cpu, batches, "32-true", torch.device("cpu"))
        if name == "seq2seq":  # decoded ids: a near-tie may flip between devices; most rows agree
            rows = [(a == b) for x, y in zip(got, want) for a, b in zip(x, y)]
            assert sum(rows) >= 0.75 * len(rows), (got, want)
        else:
            _close(got, want, rtol=1e-4, atol=1e-4)
        return
    raise AssertionError(op)


# ---------------------------------------------------------------------------------------------- callbacks
class _Device(Callback):
    """Asserts the model trains on the device (a callback silently moving it back would fail here)."""

    seen: torch.device | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.seen = next(pl_module.parameters()).device


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("module", every.MODULES)
@pytest.mark.parametrize("kind", every.CALLBACKS)
def test_every_callback_on_every_module_on_the_device(kind: str, module: str, precision: str, tmp_path: Path) -> None:
    on_cpu_amp = precision != "32-true" and not CUDA
    if on_cpu_amp and kind == "adaptive_tbptt" and module in ("lm", "tagger"):
        pytest.skip("on a CPU, as in tests/callbacks: it turns TBPTT on, a carried bf16 state")
    seed_everything(0)
    overrides = every._BF16[module] if on_cpu_amp else {}
    model, train = callback_case(module, **overrides)
    cb = every._make(kind, module)
    where = _Device()
    extra: list[Callback] = [every.LastBatch(), every.GradNormAfterClipping(), where]
    t = trainer(precision, tmp_path, max_steps=4, callbacks=[cb, *extra], log_every_n_steps=1, limit_val_batches=0)
    refusal = every._refusal(kind, module)
    if refusal is not None:
        with pytest.raises(TypeError, match=refusal):
            t.fit(model, train)
        return
    t.fit(model, train)
    assert where.seen is not None and where.seen.type == DEVICE.type
    model.to(DEVICE)  # the probe re-run in _check uses the last batch, which lives on the device
    every._check(kind, module, model, t, cb, extra)


# ---------------------------------------------------------------------------------------------- fp16 scaler
@pytest.mark.skipif(not CUDA, reason="a GradScaler needs CUDA")
def test_fp16_scaler_overflowing_at_its_start_is_not_a_nonfinite_step(tmp_path: Path) -> None:
    """A scale of 2**40 overflows the first backward passes: the scaler skips those steps and halves its
    scale; the engine's non-finite skip must leave them to it (no NonFiniteStepError) and training goes on."""
    from lightning.pytorch.plugins import MixedPrecision

    from lightning_rnn.callbacks import AdaptiveGradientClipping

    seed_everything(0)
    model, train = callback_case("lm")
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**40)
    before = [p.detach().clone() for p in model.parameters()]
    clip = AdaptiveGradientClipping("quantile", warmup_steps=2)
    t = trainer(None, tmp_path, plugins=[MixedPrecision("16-mixed", "cuda", scaler)], max_steps=30,
                callbacks=[clip], limit_val_batches=0)
    t.fit(model, train)
    assert t.global_step == 30
    assert scaler.get_scale() < 2.0**30  # the overflowing steps lowered the scale
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert any(not torch.equal(a, b.detach().cpu()) for a, b in zip(before, model.parameters()))


# ---------------------------------------------------------------------------------------------- exact resume
@pytest.fixture(autouse=True)
def _restore_determinism() -> Any:
    """Trainer(deterministic=True) sets process-wide flags; later tests must not inherit them."""
    flags = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags[2:]


@pytest.mark.parametrize(("name", "precision"), [("lm", "32-true"), ("lm", "16-mixed"), ("tagger", "bf16-mixed")])
def test_resume_on_the_device_equals_the_uninterrupted_run(name: str, precision: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what Trainer(deterministic=True) asks of cuBLAS
    from lightning_rnn.callbacks import AdaptiveGradientClipping
    from lightning_rnn.checkpoint_io import SafeCheckpointIO
    from tests.test_resume import Record, _case, assert_resumed_like_uninterrupted

    def run(max_steps: int, callbacks: list, **fit: Any) -> None:
        clip = AdaptiveGradientClipping(mode="quantile", quantile=0.5, window=50)
        t = trainer(precision, tmp_path, max_steps=max_steps, callbacks=[*callbacks, clip], val_check_interval=2,
                    check_val_every_n_epoch=None, plugins=[SafeCheckpointIO()], deterministic=True)
        t.fit(*fit.pop("args"), **fit)

    ckpt = tmp_path / "mid.ckpt"
    seed_everything(0)
    model, dm = _case(name, tmp_path)
    full = Record(save_at=5, path=ckpt)
    run(31, [full], args=(model, dm))
    saved_step = torch.load(ckpt, weights_only=True)["global_step"]
    assert 0 < saved_step < max(full.losses)
    seed_everything(123)
    resumed_model, dm2 = _case(name, tmp_path)
    resumed = Record()
    run(31, [resumed], args=(resumed_model, dm2), ckpt_path=ckpt)
    assert_resumed_like_uninterrupted(full, resumed, saved_step, model, resumed_model)


# ---------------------------------------------------------------------------------------------- nn on the device
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_hand_written_recurrences_on_the_device_equal_their_unrolled_references(cell: str) -> None:
    """State-mode recurrent dropout and zoneout (the hand-written recurrence) on the device, float64,
    against the textbook loops of tests/nn with the masks one forward draws."""
    from tests.nn.test_rnn_dropout import _naive_state_dropout
    from tests.nn.test_rnn_zoneout import _masks as zoneout_masks
    from tests.nn.test_rnn_zoneout import _naive as zoneout_naive

    n, length, f, h = 4, 7, 6, 6
    m = RNNStack(cell, f, h, 2, recurrent_dropout=0.5, recurrent_dropout_mode="state").to(DEVICE, torch.float64)
    x = torch.randn(n, length, f, device=DEVICE, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(11)
    masks = m._draw_masks(n, length, x)
    torch.manual_seed(11)
    out, _ = m(x)
    ref = _naive_state_dropout(m, x, masks.state)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
    g, g_ref = (torch.autograd.grad(o.square().sum(), x)[0] for o in (out, ref))
    torch.testing.assert_close(g, g_ref, atol=1e-10, rtol=0)

    z = RNNStack(cell, f, h, 2, zoneout=0.3).to(DEVICE, torch.float64)
    zmasks = zoneout_masks(z, 5, n, length, x)
    torch.manual_seed(5)
    out, _ = z(x)
    ref, _ = zoneout_naive(z, x, zmasks)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)


_PATHS = {  # RNNStack keywords of each path through the stack
    "fused": {},
    "weight": {"recurrent_dropout": 0.2},
    "locked": {"input_dropout": 0.2, "layer_dropout": 0.2, "output_dropout": 0.2},
    "residual": {"residual": True},
    "bidirectional": {"bidirectional": True},
    "bidirectional locked": {"bidirectional": True, "layer_dropout": 0.2},
    "state": {"recurrent_dropout": 0.2, "recurrent_dropout_mode": "state"},
    "zoneout": {"zoneout": 0.1},
}


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("path", list(_PATHS))
@pytest.mark.parametrize("amp", [None, "bf16", "fp16"])
def test_rnn_stack_paths_on_the_device_compute_in_the_asked_dtype(path: str, amp: str | None, cell: str) -> None:
    """Every path under each autocast dtype: outputs in autocast's dtype (torch's cuDNN autocast wrapper
    would run a bf16 recurrence in fp16), state in float32, finite gradients, and no per-call cuDNN weight
    copy warning (DropConnect and per-layer calls hand cuDNN one buffer in its layout)."""
    import warnings

    dtype = {"bf16": torch.bfloat16, "fp16": AMP_DTYPE["16-mixed"]}.get(amp)
    m = RNNStack(cell, 8, 16, 2, **_PATHS[path]).to(DEVICE)
    x = torch.randn(4, 9, 8, device=DEVICE)
    with warnings.catch_warnings(record=True) as caught, torch.autocast(
        DEVICE.type, dtype=dtype or torch.float32, enabled=dtype is not None
    ):
        warnings.simplefilter("always")
        out, state = m(x)
        out, state = m(x, state)
        out.float().square().mean().backward()
    if CUDA:
        assert out.dtype == (dtype or torch.float32), out.dtype
    else:  # torch's CPU autocast runs a fused GRU / RNN in float32
        assert out.dtype in (dtype or torch.float32, torch.float32), out.dtype
    assert all(s.dtype == torch.float32 for s in (state if isinstance(state, tuple) else [state]))
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in m.parameters())
    assert not [w for w in caught if "contiguous chunk" in str(w.message)]


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_weight_mode_on_the_device_equals_torch_with_the_dropped_weight(cell: str) -> None:
    from tests.nn.test_rnn_dropout import _torch_layer

    m = RNNStack(cell, 6, 6, 2, recurrent_dropout=0.5).to(DEVICE)
    x = torch.randn(4, 7, 6, device=DEVICE)
    torch.manual_seed(3)
    masks = m._draw_masks(4, 7, x)
    torch.manual_seed(3)
    out, _ = m(x)
    y0, _ = _torch_layer(m, 0, masks.w_hh[0].detach()).to(DEVICE)(x)
    y1, _ = _torch_layer(m, 1, masks.w_hh[1].detach()).to(DEVICE)(y0)
    torch.testing.assert_close(out, y1, atol=1e-5, rtol=1e-5)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):  # bf16 via the explicit cast: the same function
        torch.manual_seed(3)
        low, _ = m(x)
    torch.testing.assert_close(low.float(), y1, atol=0.05, rtol=0.05)


# ---------------------------------------------------------------------------------------------- the CLI
@pytest.mark.slow
@pytest.mark.usefixtures("cli_env")
@pytest.mark.parametrize("name", ["char_lm", "classify_code", "tagger_delay", "seq2seq_reverse"])
def test_cli_checkpoint_flows_on_the_device(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fit -> validate/test/predict --ckpt_path -> fit --ckpt_path on the device under 16-mixed, then
    `generate --ckpt` on that checkpoint in a process that sees no GPU (where a model is deployed)."""
    from tests.test_cli import _corpus
    from tests.test_cli_ckpt import _run

    monkeypatch.chdir(tmp_path)
    corpus = _corpus(tmp_path / "corpus.py")
    device = [f"--trainer.accelerator={ACCELERATOR}", "--trainer.precision=16-mixed"]
    fitted = _run("fit", name, device, corpus)
    assert next(iter(fitted.model.state_dict().values())).device.type in ("cpu", DEVICE.type)
    last = tmp_path / "runs" / "checkpoints" / "last.ckpt"
    assert last.is_file() and fitted.trainer.global_step >= 6
    for sub in ("validate", "test"):
        done = _run(sub, name, ["--ckpt_path", str(last), *device], corpus)
        assert any(math.isfinite(float(v)) for v in done.trainer.callback_metrics.values())
    resumed = _run("fit", name, ["--ckpt_path", str(last), "--trainer.max_steps=10", *device], corpus)
    assert resumed.trainer.global_step >= 10
    if name == "char_lm":
        root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": path}
        done = subprocess.run([sys.executable, "-m", "lightning_rnn.cli", "generate", "--ckpt", str(last), "--prompt",
                               "def ", "--max_new_tokens", "20", "--seed", "1"], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.startswith("def ") and len(done.stdout) > 4
