"""GradientFlowMonitor: per-lag gradient norms ‖∂L_t/∂h_{t−k}‖ and the gradient horizon while training."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import move_data_to_device, rank_zero_warn
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import nn
from typing_extensions import override

from lightning_rnn._validation import check_bool, check_float, check_int
from lightning_rnn.callbacks._plotting import lag_step_heatmap
from lightning_rnn.callbacks._schedule import logger_step, next_bucket
from lightning_rnn.functional.gradient_flow import GradientFlowResult, measure_gradient_flow
from lightning_rnn.modules.tbptt import TBPTTModule
from lightning_rnn.nn.rnn import RNNStack

__all__ = ["GradientFlowMonitor"]

_DEFAULT_LOG_LAGS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def probe_support_error(pl_module: Any, callback: str) -> str | None:
    """One sentence saying why ``callback`` cannot probe ``pl_module``, or None when it can."""
    name = type(pl_module).__name__
    if not callable(getattr(pl_module, "gradient_flow_probe", None)):
        return (
            f"{callback} measures per-lag gradient norms through a gradient-flow probe, and {name} has none: it is "
            "not a lightning_rnn TBPTTModule (whose tbptt_step gives one by default) and defines no "
            "`gradient_flow_probe(batch, max_steps=None) -> (step_states, step_losses)` (see "
            "lightning_rnn.functional.gradient_flow.SupportsGradientFlowProbe)."
        )
    default = getattr(type(pl_module), "gradient_flow_probe", None) is TBPTTModule.gradient_flow_probe
    if default and "gradient_flow_probe" not in vars(pl_module):
        bidirectional = [
            path for path, m in pl_module.named_modules()
            if isinstance(m, (nn.RNNBase, RNNStack)) and m.bidirectional
        ]
        if bidirectional:
            return (
                f"{callback} cannot probe {name}: its default probe runs tbptt_step one time step at a time, which "
                f"a bidirectional recurrent layer ({bidirectional[0]!r}) cannot do; use a unidirectional encoder "
                "or override gradient_flow_probe."
            )
    return None


def on_rank_zero(trainer: Trainer, fn: Callable[[], Any], callback: str, *, share_result: bool = False) -> Any:
    """``fn()`` on global rank 0 (None elsewhere, or its result with ``share_result``), failing on every rank.

    Under DDP an exception of the probe on rank 0 is raised on every rank — the others would otherwise wait
    forever in the next collective — at the cost of one broadcast per call.
    """
    result, error = None, None
    if trainer.is_global_zero:
        try:
            result = fn()
        except Exception as exc:  # re-raised below, after the other ranks have been told
            error = exc
    if trainer.world_size > 1:
        message = None if error is None else f"{type(error).__name__}: {error}"
        shared, message = trainer.strategy.broadcast((result if share_result else None, message), src=0)
        if message is not None and error is None:
            raise RuntimeError(f"{callback}: the gradient-flow probe failed on global rank 0 ({message})")
        if share_result:
            result = shared
    if error is not None:
        raise error
    return result


def warn_probe_result(callback: str, res: GradientFlowResult | None, max_lag: int | None, warned: set[str]) -> None:
    """Warn (once per kind, recorded in ``warned``) about a skipped probe or a clamped ``max_lag``."""
    if res is None and "short" not in warned:
        warned.add("short")
        rank_zero_warn(
            f"{callback}: skipped a probe with fewer than 2 steps or no step with a target (a loss that is not NaN); "
            "a many-to-one model (e.g. RNNClassifier) has its loss at the end of each sequence: probe whole "
            "sequences (max_lag=None, or a max_lag at least the sequence length). Warned once."
        )
    elif res is not None and max_lag is not None and res.max_lag < max_lag and "clamp" not in warned:
        warned.add("clamp")
        rank_zero_warn(
            f"{callback}: the probe has {res.max_lag + 1} steps, fewer than max_lag + 1 = {max_lag + 1}; measuring "
            f"lags up to {res.max_lag} instead (warned once). Use a longer probe batch or a smaller max_lag."
        )


class GradientFlowMonitor(Callback):
    r"""Measure how much gradient survives k steps back, and log it while training.

    Every ``every_n_steps`` optimizer steps (``trainer.global_step``; a truncated-BPTT module makes several
    per batch; also at the first training batch) it runs a *probe*
    (:func:`~lightning_rnn.functional.measure_gradient_flow`): the LightningModule's
    ``gradient_flow_probe(batch, max_steps)`` (see
    :class:`~lightning_rnn.functional.gradient_flow.SupportsGradientFlowProbe`; every
    :class:`~lightning_rnn.TBPTTModule` has one, derived from its ``tbptt_step`` unless the module overrides
    it) unrolls the model step by step over the same parameters and returns the per-step states and
    per-step losses; :func:`~lightning_rnn.functional.per_lag_gradient_norms`
    turns them into G(k) = mean ‖∂L_t/∂h_{t−k}‖, k = 0..K. It logs to every logger of the Trainer:

    - ``gradient_flow/lag_<k>``: G(k)/G(0) for each k in ``log_lags`` that is <= K;
    - ``gradient_flow/horizon``: the smallest k with G(k)/G(0) < ``eps``; ``K + 1`` when no lag up to K
      is below (the horizon is then "> K"); ``gradient_flow/max_lag``: K; ``gradient_flow/g0``: G(0);
    - with ``per_layer=True``: ``gradient_flow/layer_<l>/lag_<k>`` (layer l's share, over the full G(0));
    - with a :class:`~lightning.pytorch.loggers.WandbLogger`: the whole curve as a W&B line plot
      (``gradient_flow/curve``, from a ``wandb.Table`` of lag, G(k)/G(0), G(k)).

    At the end of every training epoch and at the end of training it draws a lag × step heatmap of
    log10 G(k)/G(0) over all probes so far — gradients vanishing (dark bands creeping down) or exploding
    over training — and logs it as an image to W&B (``gradient_flow/heatmap``) and TensorBoard, and
    always saves it as a PNG: ``<trainer.log_dir>/gradient_flow/heatmap_epoch=<e>.png`` and
    ``.../heatmap.png`` at the end. The history behind it is in ``state_dict`` (it survives a resume).

    The probe batch is the current training batch (its first ``max_lag + num_targets`` steps; the module
    slices time itself), or ``probe_batch`` when given (fixed, moved to the module's device). The probe
    runs in **training mode with every dropout probability set to 0** (cuDNN refuses a backward through an
    RNN forward run in eval mode; each submodule's mode and each dropout value are restored afterwards),
    under ``torch.enable_grad()``, in full precision (outside autocast), with the RNG state forked and
    restored, and differentiates with respect to the states only: the training step's gradients,
    parameters' ``.grad`` and random stream are untouched (a run with and without the monitor has the same
    loss trajectory). It changes no process-wide setting. It uses the unrolled step-by-step forward for the
    probe only; training keeps its fused kernel. It runs on global rank 0 only.

    Args:
        every_n_steps: probe every this many optimizer steps.
        max_lag: K, the largest lag; None: the probe length - 1 (the whole batch is probed). If the probe
            is shorter than ``max_lag + 1`` steps, K is clamped to its length - 1 with a warning (once).
        eps: horizon threshold on G(k)/G(0), in (0, 1).
        num_targets: target positions per probe (among the positions that have a target); None: every one.
        backward_passes: backward passes per probe of a module whose probe returns per-row losses
            (``RNNLanguageModel``). The default 1 deals the probe rows round-robin to the target positions
            and differentiates once (cheapest); None: every row at every target, one pass per target
            (``num_targets`` passes). The default probe of a ``TBPTTModule`` (losses summed over rows) always
            takes one pass per target. See
            :func:`~lightning_rnn.functional.per_lag_gradient_norms`.
        probe_batch: a fixed batch to probe instead of the current training batch.
        log_lags: the lags logged as scalars.
        per_layer: also log each layer's curve.
        heatmap: draw and log the lag × step heatmap.

    Raises:
        ValueError: bad arguments (here).
        TypeError: at ``setup``, the LightningModule has no probe (not a ``TBPTTModule`` and no
            ``gradient_flow_probe``, e.g. ``Seq2SeqAttention``), or its default probe cannot run step by step
            (a bidirectional recurrent layer).

    Example::

        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[GradientFlowMonitor(every_n_steps=200, max_lag=32)], logger=False)
    """

    def __init__(
        self,
        every_n_steps: int = 200,
        max_lag: int | None = None,
        eps: float = 1e-2,
        num_targets: int | None = 8,
        backward_passes: int | None = 1,
        probe_batch: Any = None,
        log_lags: Sequence[int] = _DEFAULT_LOG_LAGS,
        per_layer: bool = False,
        heatmap: bool = True,
    ) -> None:
        check_int("every_n_steps", every_n_steps, min=1)
        check_int("max_lag", max_lag, min=1, allow_none=True)
        check_float("eps", eps, min=0.0, max=1.0, min_inclusive=False, max_inclusive=False)
        check_int("num_targets", num_targets, min=1, allow_none=True)
        check_int("backward_passes", backward_passes, min=1, allow_none=True)
        lags = list(log_lags)
        if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in lags):
            raise ValueError(f"Expected log_lags to be non-negative ints, got {log_lags!r}")
        self.every_n_steps = every_n_steps
        self.max_lag = max_lag
        self.eps = float(eps)
        self.num_targets = num_targets
        self.backward_passes = backward_passes
        self.probe_batch = probe_batch
        self.log_lags = tuple(sorted(set(lags)))
        self.per_layer = check_bool("per_layer", per_layer)
        self.heatmap = check_bool("heatmap", heatmap)
        self.history: list[dict[str, Any]] = []  #: one entry per probe: step, normalized curve, g0, horizon
        self.last: GradientFlowResult | None = None  #: the latest probe's result
        self._last_bucket: int | None = None
        self._warned: set[str] = set()

    @property
    @override
    def state_key(self) -> str:
        key = dict(every_n_steps=self.every_n_steps, max_lag=self.max_lag)
        return f"{type(self).__qualname__}{key!r}"  # the format of Lightning's own callbacks

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        error = probe_support_error(pl_module, type(self).__name__)
        if error is not None:
            raise TypeError(error)

    # ------------------------------------------------------------------ probing
    def _due(self, trainer: Trainer) -> bool:
        bucket = next_bucket(trainer.global_step, self.every_n_steps, self._last_bucket)
        if bucket is None:
            return False
        self._last_bucket = bucket
        return True

    def probe(self, pl_module: LightningModule, batch: Any) -> GradientFlowResult | None:
        """Run one probe on ``batch`` and return its result (:func:`~lightning_rnn.functional.measure_gradient_flow`:
        training mode with dropout off, RNG, modes and ``.grad`` untouched).

        Returns None (with a warning) when the probe is shorter than 2 steps or has no target.
        """
        res = measure_gradient_flow(
            pl_module, batch, max_lag=self.max_lag, num_targets=self.num_targets,
            backward_passes=self.backward_passes, eps=self.eps, per_layer=self.per_layer,
        )
        warn_probe_result(type(self).__name__, res, self.max_lag, self._warned)
        return res

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._due(trainer):
            return
        source = batch if self.probe_batch is None else move_data_to_device(self.probe_batch, pl_module.device)
        res = on_rank_zero(trainer, lambda: self.probe(pl_module, source), type(self).__name__)
        if res is None:  # not rank 0, or a skipped probe
            return
        self.last = res
        k_max = res.max_lag
        horizon = res.horizon
        normalized = res.normalized.tolist()
        self.history.append({
            "step": int(trainer.global_step),
            "curve": normalized,
            "g0": float(res.curve[0]),
            "horizon": horizon,
        })
        if not math.isfinite(normalized[0]) and "g0" not in self._warned:
            self._warned.add("g0")
            rank_zero_warn(
                "GradientFlowMonitor: G(0) = ‖∂L_t/∂h_t‖ is zero or not finite, so G(k)/G(0) is undefined. The "
                "probe's loss at t must be computed from step_states[t] (see SupportsGradientFlowProbe). "
                "Warned once."
            )
        metrics: dict[str, float] = {
            "gradient_flow/horizon": float(k_max + 1 if horizon is None else horizon),
            "gradient_flow/max_lag": float(k_max),
            "gradient_flow/g0": float(res.curve[0]),
        }
        for k in self.log_lags:
            if k <= k_max:
                metrics[f"gradient_flow/lag_{k}"] = normalized[k]
        if res.per_layer_normalized is not None:
            for layer, curve in enumerate(res.per_layer_normalized.tolist()):
                for k in self.log_lags:
                    if k <= k_max:
                        metrics[f"gradient_flow/layer_{layer}/lag_{k}"] = curve[k]
        step = logger_step(trainer)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            if isinstance(logger, WandbLogger):
                self._log_wandb_curve(logger, res, step)

    @staticmethod
    @rank_zero_only
    def _log_wandb_curve(logger: WandbLogger, res: GradientFlowResult, step: int) -> None:
        import wandb

        rows = [[k, float(n), float(g)] for k, (n, g) in enumerate(zip(res.normalized.tolist(), res.curve.tolist()))]
        table = wandb.Table(data=rows, columns=["lag", "G(k)/G(0)", "G(k)"])
        plot = wandb.plot.line(table, "lag", "G(k)/G(0)", title="Gradient flow: G(k)/G(0) by lag")
        logger.log_metrics({"gradient_flow/curve": plot}, step=step)  # type: ignore[dict-item]

    # ------------------------------------------------------------------ heatmap
    def _draw(self, trainer: Trainer, name: str) -> str | None:
        if not self.heatmap:
            return None
        folder = trainer.log_dir or trainer.default_root_dir  # a broadcast: every rank must call it
        if not self.history or not trainer.is_global_zero:
            return None
        path = os.path.join(folder, "gradient_flow", name)
        lag_step_heatmap(
            [h["step"] for h in self.history], [h["curve"] for h in self.history], path,
            horizons=[h["horizon"] for h in self.history], eps=self.eps,
        )
        step = logger_step(trainer)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="gradient_flow/heatmap", images=[path], step=step)
            elif isinstance(logger, TensorBoardLogger):
                self._log_tensorboard_image(logger, path, step)
        return path

    @staticmethod
    @rank_zero_only
    def _log_tensorboard_image(logger: TensorBoardLogger, path: str, step: int) -> None:
        import matplotlib.image

        img = matplotlib.image.imread(path)[..., :3]  # (H, W, 3) floats in [0, 1]
        logger.experiment.add_image("gradient_flow/heatmap", img, global_step=step, dataformats="HWC")

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._draw(trainer, f"heatmap_epoch={trainer.current_epoch}.png")

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._draw(trainer, "heatmap.png")

    # ------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history], "last_bucket": self._last_bucket}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state_dict.get("history", [])]
        self._last_bucket = state_dict.get("last_bucket")
