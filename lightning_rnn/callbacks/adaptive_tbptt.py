"""AdaptiveTBPTT: set the TBPTT truncation length from the measured decay of the per-lag gradient norms."""

from __future__ import annotations

import math
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import move_data_to_device, rank_zero_warn
from typing_extensions import override

from lightning_rnn._validation import check_float, check_int, check_probability
from lightning_rnn.callbacks._schedule import next_bucket
from lightning_rnn.callbacks.gradient_flow import on_rank_zero, probe_support_error, warn_probe_result
from lightning_rnn.functional.gradient_flow import measure_gradient_flow
from lightning_rnn.functional.tbptt import batch_time_length
from lightning_rnn.functional.truncation import choose_truncation
from lightning_rnn.modules.tbptt import TBPTTModule

__all__ = ["AdaptiveTBPTT"]


class AdaptiveTBPTT(Callback):
    r"""Adapt the truncation length of a :class:`~lightning_rnn.TBPTTModule` to how far gradients reach.

    Aicher, Foti & Fox 2019: every ``every_n_steps`` optimizer steps (``trainer.global_step``; a TBPTT
    module makes one per chunk, several per batch — the check runs at the end of each training batch
    and fires when ``global_step`` has crossed a multiple of ``every_n_steps``; also at the first batch)
    it measures the per-lag gradient norms G(k) = ‖∂L_t/∂h_{t−k}‖, k = 0..M, on the current training
    batch, with the same probe as :class:`~lightning_rnn.callbacks.GradientFlowMonitor`
    (:func:`~lightning_rnn.functional.measure_gradient_flow`: the module's ``gradient_flow_probe``, by default
    derived from its ``tbptt_step``; training mode with dropout off, RNG forked and restored, ``.grad``
    untouched, so training is not disturbed). From the curve it fits a geometric tail and picks the smallest K in
    [``min_steps``, ``max_steps``] whose estimated relative truncation bias
    Σ_{k>K} G(k) / Σ_k G(k) is below ``bias_bound``
    (:func:`~lightning_rnn.functional.truncation.choose_truncation`). The module's ``tbptt_steps`` then
    moves towards K, smoothed so that it does not thrash:

        k ← round(clamp((1 − smoothing)·k + smoothing·K, k / max_change, k · max_change)),

    clamped to [``min_steps``, ``max_steps``]; k stays put while the probe's K is within ``tolerance``·k
    of it (a dead band against noise: each change re-splits the next batches). The first probe sets k from K directly when the module has no
    ``tbptt_steps`` yet (``None``: whole batches).

    What K means: TBPTT with chunk length k lets the target at the end of a chunk reach k − 1 steps back
    and earlier targets fewer; the bias bound is that of a gradient truncated at lag K (Aicher et al.),
    applied to the chunk length. With ``tbptt_backprop_steps`` (k2) set, k2 is kept at
    ``max(k2 at fit start, k)`` so the module's k1 <= k2 invariant holds (k2 is raised with k and goes
    back to the user's k2 when k shrinks); the adapted quantity is k1.

    Text streams: changing k re-splits each batch *inside* the module; the data module's chunk length
    (``bptt`` of :class:`~lightning_rnn.data.TextStreamDataModule`) is not changed. It must be
    >= ``max_steps`` for a K that large to have an effect — a batch shorter than k is processed as one
    chunk (warned once).

    Logged (``pl_module.log``, on step, at every probe): ``tbptt/steps`` (the k now used),
    ``tbptt/target_steps`` (K of this probe), ``tbptt/bias_estimate`` (estimated bias at the k now used),
    ``tbptt/tail_rate`` (the fitted per-step decay r). The EMA state and the history of probes are in
    ``state_dict`` (checkpointed; on resume k and k2 are re-applied at fit start). Under DDP the probe runs
    on rank 0 and the decision is broadcast, so every rank splits batches identically.

    Args:
        every_n_steps: probe every this many optimizer steps.
        bias_bound: the largest acceptable relative truncation bias, in (0, 1).
        min_steps, max_steps: bounds of k, 1 <= min_steps <= max_steps.
        probe_steps: M, the largest lag measured (the probe unrolls ``M + num_targets`` steps of the batch;
            a shorter batch is clamped, with a warning, and the fitted tail extrapolates). Default
            ``max_steps``.
        smoothing: EMA weight of a new measurement, in (0, 1] (1: jump to K, up to ``max_change``).
        max_change: the largest factor k may change by at one probe, >= 1.
        tolerance: relative dead band: no change while |K − k| <= ``tolerance``·k, in [0, 1).
        num_targets: target positions per probe (see :class:`~lightning_rnn.callbacks.GradientFlowMonitor`).
        backward_passes: backward passes per probe (1: cheapest; None: one per target).
        tail_fraction: share of the measured lags the geometric tail is fitted on, in (0, 1).
        floor: relative level below which G(k)/G(0) counts as vanished, in (0, 1).
        probe_batch: a fixed batch to probe instead of the current training batch.

    Raises:
        ValueError: bad arguments (here).
        TypeError: at setup, the LightningModule is not a ``TBPTTModule`` (e.g. ``Seq2SeqAttention``) or its
            default probe cannot run step by step (a bidirectional recurrent layer).

    Example::

        >>> from lightning.pytorch import Trainer
        >>> cb = AdaptiveTBPTT(every_n_steps=100, bias_bound=0.1, min_steps=5, max_steps=200)
        >>> trainer = Trainer(callbacks=[cb], logger=False)
    """

    def __init__(
        self,
        every_n_steps: int = 100,
        bias_bound: float = 0.1,
        min_steps: int = 5,
        max_steps: int = 200,
        probe_steps: int | None = None,
        smoothing: float = 0.5,
        max_change: float = 2.0,
        tolerance: float = 0.1,
        num_targets: int | None = 8,
        backward_passes: int | None = 1,
        tail_fraction: float = 0.5,
        floor: float = 1e-12,
        probe_batch: Any = None,
    ) -> None:
        check_int("every_n_steps", every_n_steps, min=1)
        check_int("min_steps", min_steps, min=1)
        check_int("max_steps", max_steps, min=1)
        if min_steps > max_steps:
            raise ValueError(f"Expected min_steps <= max_steps, got min_steps={min_steps} > max_steps={max_steps}")
        for name, value in (("bias_bound", bias_bound), ("tail_fraction", tail_fraction), ("floor", floor)):
            check_float(name, value, min=0.0, max=1.0, min_inclusive=False, max_inclusive=False)
        if probe_steps is not None:
            check_int("probe_steps", probe_steps, min=1)
        check_float("smoothing", smoothing, min=0.0, max=1.0, min_inclusive=False)
        check_float("max_change", max_change, min=1.0)
        check_probability("tolerance", tolerance)
        self.every_n_steps = every_n_steps
        self.bias_bound = float(bias_bound)
        self.min_steps = min_steps
        self.max_steps = max_steps
        self.probe_steps = max_steps if probe_steps is None else probe_steps
        self.smoothing = float(smoothing)
        self.max_change = float(max_change)
        self.tolerance = float(tolerance)
        self.tail_fraction = float(tail_fraction)
        self.floor = float(floor)
        self.probe_batch = probe_batch
        check_int("num_targets", num_targets, min=1, allow_none=True)
        check_int("backward_passes", backward_passes, min=1, allow_none=True)
        self.num_targets = num_targets
        self.backward_passes = backward_passes
        self._warned: set[str] = set()
        self.history: list[dict[str, Any]] = []  #: one entry per probe: step, target, steps, bias, rate
        self._k_ema: float | None = None
        self._steps: int | None = None  # the k this callback last set
        self._base_k2: int | None = None
        self._base_k2_known = False
        self._last_bucket: int | None = None
        self._short_warned = False
        self._bad_warned = False

    @property
    @override
    def state_key(self) -> str:
        key = dict(bias_bound=self.bias_bound, min_steps=self.min_steps, max_steps=self.max_steps)
        return f"{type(self).__qualname__}{key!r}"  # the format of Lightning's own callbacks

    @property
    def steps(self) -> int | None:
        """The truncation length this callback last set (None before the first change)."""
        return self._steps

    # ------------------------------------------------------------------ checks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not isinstance(pl_module, TBPTTModule):
            raise TypeError(
                f"AdaptiveTBPTT adapts the truncation length (`tbptt_steps`) of a lightning_rnn TBPTTModule, and "
                f"{type(pl_module).__name__} is not one (it has no truncation length to adapt)."
            )
        error = probe_support_error(pl_module, type(self).__name__)
        if error is not None:
            raise TypeError(error)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        module: TBPTTModule = pl_module  # type: ignore[assignment]
        if not self._base_k2_known:
            self._base_k2 = module.tbptt_backprop_steps
            self._base_k2_known = True
        if self._steps is not None:  # resumed: re-apply what this callback had set
            self._apply(module, self._steps)

    # ------------------------------------------------------------------ decision
    def _apply(self, module: TBPTTModule, k: int) -> None:
        k2 = None if self._base_k2 is None else max(self._base_k2, k)
        current_k2 = module.tbptt_backprop_steps
        if current_k2 is not None and k > current_k2:  # raise k2 first, then k1
            module.tbptt_backprop_steps = k2
            module.tbptt_steps = k
        else:  # lower k1 first, then k2
            module.tbptt_steps = k
            module.tbptt_backprop_steps = k2
        self._steps = k

    def update(self, current: int | None, target: int) -> int:
        """The smoothed k after a probe that chose ``target`` when the module uses ``current``."""
        if current is None or self._k_ema is None:
            base = float(target if current is None else current)
        else:
            base = self._k_ema
        ema = (1.0 - self.smoothing) * base + self.smoothing * target
        if current is not None:
            ema = min(max(ema, current / self.max_change), current * self.max_change)
        ema = min(max(ema, float(self.min_steps)), float(self.max_steps))
        self._k_ema = ema
        if current is not None and abs(target - current) <= self.tolerance * current:
            return current  # close enough to the target: no re-split
        return int(round(ema))

    def _decide(self, trainer: Trainer, pl_module: LightningModule, batch: Any) -> dict[str, Any] | None:
        source = batch if self.probe_batch is None else move_data_to_device(self.probe_batch, pl_module.device)
        res = measure_gradient_flow(
            pl_module, source, max_lag=self.probe_steps, num_targets=self.num_targets,
            backward_passes=self.backward_passes,
        )
        warn_probe_result(type(self).__name__, res, self.probe_steps, self._warned)
        if res is None:
            return None
        g0 = float(res.curve[0])
        if not math.isfinite(g0) or g0 <= 0.0:
            if not self._bad_warned:
                self._bad_warned = True
                rank_zero_warn(
                    f"AdaptiveTBPTT: G(0) = {g0} (zero or not finite); the truncation length is left unchanged. The "
                    "probe's loss at t must be computed from step_states[t]. Warned once."
                )
            return None
        choice = choose_truncation(
            res.curve, self.bias_bound, self.min_steps, self.max_steps,
            tail_fraction=self.tail_fraction, floor=self.floor,
        )
        module: TBPTTModule = pl_module  # type: ignore[assignment]
        current = module.tbptt_steps
        new = self.update(current, choice.steps)
        return {
            "step": int(trainer.global_step),
            "target": choice.steps,
            "steps": new,
            "bias": float(choice.biases[min(new, self.max_steps)]),
            "rate": choice.tail.rate,
            "measured_lags": res.max_lag,
            "k_ema": self._k_ema,
        }

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bucket = next_bucket(trainer.global_step, self.every_n_steps, self._last_bucket)
        if bucket is None:
            return
        self._last_bucket = bucket
        # rank 0 decides; every rank must split its batches identically, or DDP hangs
        decision = on_rank_zero(trainer, lambda: self._decide(trainer, pl_module, batch), type(self).__name__,
                                share_result=True)
        if trainer.world_size > 1 and decision is not None:
            self._k_ema = decision["k_ema"]
        if decision is None:
            return
        module: TBPTTModule = pl_module  # type: ignore[assignment]
        new = int(decision["steps"])
        if new != module.tbptt_steps:
            self._apply(module, new)
        else:
            self._steps = new
        self.history.append(decision)
        length = batch_time_length(batch)
        if length < new and not self._short_warned:
            self._short_warned = True
            rank_zero_warn(
                f"AdaptiveTBPTT: tbptt_steps={new} is longer than the training batches ({length} steps), which are "
                "then processed as one chunk. For a larger truncation length to take effect, make the data's "
                "chunk length (e.g. TextStreamDataModule(bptt=...)) >= max_steps. Warned once."
            )
        pl_module.log("tbptt/steps", float(new), on_step=True, on_epoch=False)
        pl_module.log("tbptt/target_steps", float(decision["target"]), on_step=True, on_epoch=False)
        pl_module.log("tbptt/bias_estimate", decision["bias"], on_step=True, on_epoch=False)
        pl_module.log("tbptt/tail_rate", decision["rate"], on_step=True, on_epoch=False)

    # ------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "k_ema": self._k_ema,
            "steps": self._steps,
            "base_k2": self._base_k2,
            "base_k2_known": self._base_k2_known,
            "last_bucket": self._last_bucket,
            "history": [dict(h) for h in self.history],
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._k_ema = state_dict.get("k_ema")
        self._steps = state_dict.get("steps")
        self._base_k2 = state_dict.get("base_k2")
        self._base_k2_known = state_dict.get("base_k2_known", False)
        self._last_bucket = state_dict.get("last_bucket")
        self.history = [dict(h) for h in state_dict.get("history", [])]
