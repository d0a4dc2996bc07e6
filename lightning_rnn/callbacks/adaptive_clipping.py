"""AdaptiveGradientClipping: AutoClip / ZClip / AGC as one Lightning callback."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn
from typing_extensions import override

from lightning_rnn.callbacks._schedule import logger_step
from lightning_rnn.functional.clipping import (
    QuantileClipRule,
    ZScoreClipRule,
    adaptive_clip_grad_,
    clip_grads_,
    grad_norm,
)

__all__ = ["AdaptiveGradientClipping", "NonFiniteGradientError"]

_MODES = ("quantile", "zscore", "agc")
# Under fp16 AMP the GradScaler starts at a scale of 2**16 and halves it after each overflowing step; before
# the first finite step these overflows are its search for a scale, not a failure: allow down to a scale of 1.
_SCALER_SEARCH_STEPS = 16


class NonFiniteGradientError(RuntimeError):
    """Raised by :class:`AdaptiveGradientClipping` after too many consecutive non-finite gradient norms.

    Attributes:
        step: ``trainer.global_step`` (optimizer steps taken so far) when it was raised.
        norm: the last non-finite global gradient norm (``inf`` or ``nan``).
        count: the number of consecutive non-finite steps.
    """

    def __init__(self, step: int, norm: float, count: int) -> None:
        self.step, self.norm, self.count = step, norm, count
        super().__init__(
            f"Gradient norm was non-finite ({norm}) for {count} consecutive optimizer steps (the last at "
            f"global step {step}); these steps were skipped. Training stopped instead of training on NaNs: "
            "lower the learning rate, check the data for NaN/inf, or use bf16/fp32 instead of fp16 AMP. "
            "Raise `max_nonfinite_steps` to tolerate longer runs of overflowing steps."
        )


class _OptimizerClipState:
    """History and counters of one optimizer (a callback may be called for several)."""

    def __init__(self, rule: QuantileClipRule | ZScoreClipRule | None, log_window: int) -> None:
        self.rule = rule
        self.steps = 0  # finite steps seen
        self.clipped_steps = 0
        self.nonfinite_steps = 0
        self.consecutive_nonfinite = 0
        self.recent_clipped: deque[bool] = deque(maxlen=log_window)

    def state_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule.state_dict() if self.rule is not None else {},
            "steps": self.steps,
            "clipped_steps": self.clipped_steps,
            "nonfinite_steps": self.nonfinite_steps,
            "consecutive_nonfinite": self.consecutive_nonfinite,
            "recent_clipped": list(self.recent_clipped),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.rule is not None:
            self.rule.load_state_dict(state.get("rule", {}))
        self.steps = int(state.get("steps", 0))
        self.clipped_steps = int(state.get("clipped_steps", 0))
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        self.consecutive_nonfinite = int(state.get("consecutive_nonfinite", 0))
        self.recent_clipped = deque(
            (bool(x) for x in state.get("recent_clipped", [])), maxlen=self.recent_clipped.maxlen
        )


class AdaptiveGradientClipping(Callback):
    r"""Clips the gradient norm at a threshold that adapts to the run, in any Lightning training loop.

    Modes (the maths lives in :mod:`lightning_rnn.functional.clipping`):

    * ``"quantile"`` (AutoClip, Seetharaman et al. 2020): the threshold is the ``quantile`` of the last
      ``window`` pre-clip global norms, the current one included. The paper's best percentile is p = 10,
      hence ``quantile=0.1``. No warm-up (as in the paper): the first step is never clipped.
    * ``"zscore"`` (ZClip, Kumar et al. 2025): EMA mean μ and variance σ² of the norm (``alpha``),
      initialised from the first ``warmup_steps`` norms (not clipped); a norm with
      z = (g − μ)/σ > ``z_threshold`` is clipped to μ + z_thr²·σ/z and the EMA is fed the clipped value.
    * ``"agc"`` (NFNets, Brock et al. 2021): unit-wise, each row of a weight matrix (each output unit;
      biases and scalars as a whole) has its gradient clipped to ``agc_lambda``·max(‖W_i‖, ``agc_eps``).
      The output layer is left alone: by default the last ``nn.Linear`` registered in the module;
      ``agc_exclude`` takes parameter-name prefixes instead (``[]`` clips every parameter).

    ``max_norm`` adds a hard ceiling on the global norm in every mode (also during warm-up).

    Where it clips: in ``on_before_optimizer_step``, which Lightning calls inside ``optimizer.step()``
    after the backward pass, after AMP's ``scaler.unscale_`` and after DDP's gradient all-reduce, in
    automatic *and* manual optimization (so every TBPTT chunk step is clipped, with unscaled gradients).
    Callbacks run before the module's own ``on_before_optimizer_step``.

    Cost: one fused global norm (``torch._foreach_norm``) and one host sync per optimizer step; under DDP
    one all-reduce of that scalar (``max``), so every rank takes the same decision and keeps the same
    history. ``"agc"`` adds per-parameter unit norms (no host sync) and one more sync for the count.

    Non-finite norms (fp16 overflow, a bad batch) never enter the history/EMA: the step is skipped (all
    gradients of that optimizer set to ``None``, so ``optimizer.step()`` changes nothing — zeroed
    gradients would still move Adam's parameters through its momentum) and counted; after
    ``max_nonfinite_steps`` consecutive ones :class:`NonFiniteGradientError` stops training. Under fp16
    AMP, overflowing steps before the first finite one are the GradScaler's search for a scale (it starts at
    2**16 and halves per overflow): 16 more are allowed then. The scaler skips overflowing steps itself.
    On a :class:`~lightning_rnn.TBPTTModule` the engine itself skips a chunk whose loss or gradient is
    non-finite before ``optimizer.step()`` (counting it in ``train/skipped_steps``, resetting the carried
    state's NaN rows, stopping after ``max_consecutive_skips``), so this callback never sees those steps; its
    own skip then only covers the GradScaler's overflowing steps, and modules without the engine.

    Logged through ``pl_module.log`` on the batches whose step metrics Lightning writes to the loggers
    (every ``Trainer(log_every_n_steps)`` batches), on the first and the last batch of the fit, and on every
    skipped (non-finite) step, and at the end of a batch in which training was stopped — not on the other
    steps, whose values no logger would receive (each ``log`` call costs ~0.4 ms, as much as the clipping
    itself). A stop decided by a callback that runs after this one in ``on_train_batch_end`` (Lightning's
    ``max_time`` Timer) is not seen: that last row repeats the latest logged value. So ``trainer.callback_metrics`` holds the latest
    logged step; :attr:`last_norm` / :attr:`last_threshold` always hold the current one. Keys:
    ``grad_clip/norm`` (pre-clip global norm), ``grad_clip/threshold`` (the
    norm the gradients are clipped to when above it; omitted while it is infinite, e.g. in warm-up),
    ``grad_clip/clipped`` (fraction of the last ``log_every_n_steps`` optimizer steps that were clipped),
    ``grad_clip/nonfinite_steps`` (total skipped). With several optimizers the keys get ``/opt{i}``.

    Args:
        mode: ``"quantile"``, ``"zscore"`` or ``"agc"``.
        quantile: AutoClip's quantile in ``(0, 1]``.
        window: number of recent norms AutoClip keeps (``None``: all of them, slower every step).
        warmup_steps: ZClip's warm-up (steps collected before clipping starts), ``>= 0``.
        alpha: ZClip's EMA factor in ``(0, 1)``.
        z_threshold: ZClip's z threshold, ``> 0``.
        agc_lambda: AGC's λ, ``> 0`` (0.01 suits large batches; use larger values for small ones).
        agc_eps: AGC's ε, ``> 0``.
        agc_exclude: parameter-name prefixes AGC leaves alone; ``None``: the last ``nn.Linear``.
        max_norm: optional hard ceiling on the global norm, ``> 0``.
        norm_type: p of the global and unit-wise norms (``float("inf")`` allowed).
        max_nonfinite_steps: consecutive non-finite steps tolerated before raising, ``>= 1``.
        log_every_n_steps: window (optimizer steps) of ``grad_clip/clipped``; ``None``: the Trainer's.

    Raises:
        ValueError: on bad arguments; at fit start with ``Trainer(gradient_clip_val=...)`` or a module with
            a fixed ``gradient_clip_val`` (gradients would be clipped twice).
        NonFiniteGradientError: after ``max_nonfinite_steps`` consecutive non-finite gradient norms.

    Example::

        >>> import lightning.pytorch as pl
        >>> from lightning_rnn.callbacks import AdaptiveGradientClipping
        >>> clip = AdaptiveGradientClipping("zscore", z_threshold=2.5, max_norm=10.0)
        >>> trainer = pl.Trainer(callbacks=[clip], max_epochs=1, logger=False, enable_checkpointing=False,
        ...                      enable_progress_bar=False, enable_model_summary=False)
    """

    def __init__(
        self,
        mode: str = "quantile",
        *,
        quantile: float = 0.1,
        window: int | None = 1000,
        warmup_steps: int = 25,
        alpha: float = 0.97,
        z_threshold: float = 2.5,
        agc_lambda: float = 0.01,
        agc_eps: float = 1e-3,
        agc_exclude: Sequence[str] | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        max_nonfinite_steps: int = 10,
        log_every_n_steps: int | None = None,
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"Expected mode to be one of {_MODES}, got {mode!r}")
        if not isinstance(quantile, (int, float)) or not 0.0 < quantile <= 1.0:
            raise ValueError(f"Expected quantile in (0, 1], got {quantile!r}")
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ValueError(f"Expected window to be None or an int >= 1, got {window!r}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"Expected warmup_steps to be an int >= 0, got {warmup_steps!r}")
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"Expected alpha in (0, 1), got {alpha!r}")
        if not z_threshold > 0.0:
            raise ValueError(f"Expected z_threshold > 0, got {z_threshold!r}")
        if not agc_lambda > 0.0:
            raise ValueError(f"Expected agc_lambda > 0, got {agc_lambda!r}")
        if not agc_eps > 0.0:
            raise ValueError(f"Expected agc_eps > 0, got {agc_eps!r}")
        if agc_exclude is not None:
            if isinstance(agc_exclude, str) or not all(isinstance(x, str) for x in agc_exclude):
                raise TypeError(
                    f"Expected agc_exclude to be None or a list of parameter-name prefixes, got {agc_exclude!r}"
                )
            agc_exclude = list(agc_exclude)
        if max_norm is not None and not max_norm > 0.0:
            raise ValueError(f"Expected max_norm > 0 or None, got {max_norm!r}")
        if not norm_type > 0.0:
            raise ValueError(f"Expected norm_type > 0 (or inf), got {norm_type!r}")
        if (
            isinstance(max_nonfinite_steps, bool)
            or not isinstance(max_nonfinite_steps, int)
            or max_nonfinite_steps < 1
        ):
            raise ValueError(f"Expected max_nonfinite_steps to be an int >= 1, got {max_nonfinite_steps!r}")
        if log_every_n_steps is not None and (
            isinstance(log_every_n_steps, bool)
            or not isinstance(log_every_n_steps, int)
            or log_every_n_steps < 1
        ):
            raise ValueError(
                f"Expected log_every_n_steps to be None or an int >= 1, got {log_every_n_steps!r}"
            )

        self.mode = mode
        self.quantile = float(quantile)
        self.window = window
        self.warmup_steps = warmup_steps
        self.alpha = float(alpha)
        self.z_threshold = float(z_threshold)
        self.agc_lambda = float(agc_lambda)
        self.agc_eps = float(agc_eps)
        self.agc_exclude = agc_exclude
        self.max_norm = None if max_norm is None else float(max_norm)
        self.norm_type = float(norm_type)
        self.max_nonfinite_steps = max_nonfinite_steps
        self.log_every_n_steps = log_every_n_steps

        self._states: dict[int, _OptimizerClipState] = {}
        self._log_window = log_every_n_steps or 50
        self._agc_skip: set[int] = set()  # ids of parameters AGC leaves alone
        # Last step's decision (for inspection and tests): pre-clip norm, threshold, clipped.
        self.last_norm: float | None = None
        self.last_threshold: float | None = None
        self.last_clipped: bool = False
        # per optimizer: (norm, threshold) of the step whose logging was held back (see `_log`)
        self._pending: dict[int, tuple[float, float | None]] = {}

    # ------------------------------------------------------------------ identity and state
    @property
    @override
    def state_key(self) -> str:
        if self.mode == "quantile":
            return self._generate_state_key(
                mode=self.mode, quantile=self.quantile, window=self.window, max_norm=self.max_norm
            )
        if self.mode == "zscore":
            return self._generate_state_key(
                mode=self.mode,
                z_threshold=self.z_threshold,
                alpha=self.alpha,
                warmup_steps=self.warmup_steps,
                max_norm=self.max_norm,
            )
        return self._generate_state_key(
            mode=self.mode, agc_lambda=self.agc_lambda, agc_eps=self.agc_eps, max_norm=self.max_norm
        )

    def _make_rule(self) -> QuantileClipRule | ZScoreClipRule | None:
        if self.mode == "quantile":
            return QuantileClipRule(quantile=self.quantile, window=self.window)
        if self.mode == "zscore":
            return ZScoreClipRule(
                alpha=self.alpha, z_threshold=self.z_threshold, warmup_steps=self.warmup_steps
            )
        return None

    def _state(self, index: int) -> _OptimizerClipState:
        state = self._states.get(index)
        if state is None:
            state = self._states[index] = _OptimizerClipState(self._make_rule(), self._log_window)
        return state

    @override
    def state_dict(self) -> dict[str, Any]:
        states = {i: s.state_dict() for i, s in self._states.items()}
        return {"version": 1, "mode": self.mode, "optimizers": states}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_mode = state_dict.get("mode", self.mode)
        if saved_mode != self.mode:
            raise ValueError(f"Expected a state of mode {self.mode!r}, got one of mode {saved_mode!r}")
        self._states = {}
        for i, saved in state_dict.get("optimizers", {}).items():
            self._state(int(i)).load_state_dict(saved)

    # ------------------------------------------------------------------ setup checks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        clippers = [cb for cb in trainer.callbacks if isinstance(cb, AdaptiveGradientClipping)]
        if len(clippers) > 1:
            raise ValueError(
                f"Expected one {type(self).__name__} callback per Trainer, got {len(clippers)}: each would clip the "
                "same gradients again. Keep one."
            )
        trainer_clip = trainer.gradient_clip_val
        if trainer_clip is not None and trainer_clip > 0:
            raise ValueError(
                f"Expected no fixed gradient clipping with {type(self).__name__}, got "
                f"Trainer(gradient_clip_val={trainer_clip}): gradients would be clipped twice. Remove "
                "`gradient_clip_val` from the Trainer, or pass `max_norm=...` to the callback for a hard ceiling."
            )
        module_clip = getattr(pl_module, "gradient_clip_val", None)
        if module_clip is not None:
            raise ValueError(
                f"Expected no fixed gradient clipping with {type(self).__name__}, got "
                f"{type(pl_module).__name__}.gradient_clip_val={module_clip} (a Trainer(gradient_clip_val) is moved "
                "there by TBPTT modules): gradients would be clipped twice. Set the module's gradient_clip_val=None "
                "and pass `max_norm=...` to the callback for a hard ceiling."
            )
        strategy = type(trainer.strategy).__name__
        if any(name in strategy for name in ("FSDP", "DeepSpeed", "ModelParallel")):
            raise ValueError(
                f"Expected a strategy with whole (unsharded) gradients on every rank (single device, DDP), got "
                f"{strategy}: the global norm of sharded gradients is not supported by {type(self).__name__}."
            )
        self._log_window = self.log_every_n_steps or max(int(trainer.log_every_n_steps or 0), 1)
        for state in self._states.values():
            state.recent_clipped = deque(state.recent_clipped, maxlen=self._log_window)
        if self.mode == "agc":
            self._agc_skip = self._resolve_agc_exclude(pl_module)

    def _resolve_agc_exclude(self, pl_module: nn.Module) -> set[int]:
        if self.agc_exclude is None:
            linears = [name for name, m in pl_module.named_modules() if isinstance(m, nn.Linear)]
            if not linears:
                rank_zero_info(
                    f"{type(self).__name__}(mode='agc'): no nn.Linear found; AGC clips every parameter."
                )
                return set()
            prefixes = [f"{linears[-1]}." if linears[-1] else ""]
            rank_zero_info(
                f"{type(self).__name__}(mode='agc'): leaving the output layer {linears[-1]!r} unclipped "
                "(pass agc_exclude=[...] to choose other parameter-name prefixes, [] for none)."
            )
        else:
            prefixes = self.agc_exclude
        return {
            id(p) for name, p in pl_module.named_parameters() if any(name.startswith(x) for x in prefixes)
        }

    # ------------------------------------------------------------------ the clip
    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        index = next((i for i, opt in enumerate(trainer.optimizers) if opt is optimizer), 0)
        state = self._state(index)
        grads = [p.grad for p in params]

        norm_t = grad_norm(grads, self.norm_type).float()
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            # All-reduced gradients make the norm equal on every rank in exact arithmetic; taking the max
            # (one scalar collective) makes it equal bit for bit, so histories and decisions never drift.
            norm_t = torch.nan_to_num(norm_t, nan=math.inf)
            torch.distributed.all_reduce(norm_t, op=torch.distributed.ReduceOp.MAX)
        norm = float(norm_t)  # the one host sync per step
        self.last_norm = norm

        if not math.isfinite(norm):
            for p in params:
                p.grad = None  # optimizer.step() skips these parameters: the step changes nothing
            state.nonfinite_steps += 1
            state.consecutive_nonfinite += 1
            state.recent_clipped.append(False)
            self.last_threshold, self.last_clipped = None, False
            self._log(trainer, pl_module, index, state, norm, None)
            limit = self.max_nonfinite_steps
            if state.steps == 0 and getattr(trainer.precision_plugin, "scaler", None) is not None:
                limit += _SCALER_SEARCH_STEPS  # fp16 GradScaler still halving its initial scale
            if state.consecutive_nonfinite >= limit:
                raise NonFiniteGradientError(trainer.global_step, norm, state.consecutive_nonfinite)
            return
        state.consecutive_nonfinite = 0
        state.steps += 1

        if self.mode == "agc":
            skip = self._agc_skip
            clipped_units = adaptive_clip_grad_(
                (p for p in params if id(p) not in skip), self.agc_lambda, self.agc_eps, self.norm_type
            )
            clipped = bool(clipped_units > 0)
            threshold = math.inf if self.max_norm is None else self.max_norm
            if self.max_norm is not None:
                post = float(grad_norm(grads, self.norm_type)) if clipped else norm
                clipped = clip_grads_(grads, self.max_norm, post) or clipped
        else:
            rule = state.rule
            if rule is None:  # pragma: no cover - quantile and zscore always build a rule
                raise RuntimeError(f"No threshold rule for mode {self.mode!r}")
            threshold = rule.step(norm)
            if self.max_norm is not None:
                threshold = min(threshold, self.max_norm)
            clipped = clip_grads_(grads, threshold, norm)

        state.clipped_steps += int(clipped)
        state.recent_clipped.append(clipped)
        self.last_threshold = threshold if math.isfinite(threshold) else None
        self.last_clipped = clipped
        self._log(trainer, pl_module, index, state, norm, self.last_threshold)

    @staticmethod
    def _writes_this_batch(trainer: pl.Trainer) -> bool:
        """Whether Lightning writes this batch's step metrics to the loggers (its ``log_every_n_steps``
        schedule), or the batch is the first or the last of the fit."""
        batch = logger_step(trainer)  # batches that stepped before this one
        every = int(trainer.log_every_n_steps or 0)
        if batch == 0 or trainer.should_stop or (every > 0 and (batch + 1) % every == 0):
            return True
        if trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step + 1:
            return True
        loop = trainer.fit_loop
        max_epochs = trainer.max_epochs
        last_epoch = max_epochs is not None and max_epochs >= 0 and trainer.current_epoch + 1 >= max_epochs
        return bool(last_epoch and loop.epoch_loop.batch_progress.is_last_batch)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Lightning also writes a batch's step metrics when training was stopped during it (after our last
        # hook call): log the values held back so that row is not a stale earlier value.
        if trainer.should_stop:
            for index, (norm, threshold) in list(self._pending.items()):  # _log pops them
                self._log(trainer, pl_module, index, self._state(index), norm, threshold, force=True)
        self._pending.clear()

    def _log(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        index: int,
        state: _OptimizerClipState,
        norm: float,
        threshold: float | None,
        force: bool = False,
    ) -> None:
        if getattr(pl_module, "_trainer", None) is None:
            return
        if not force and math.isfinite(norm) and not self._writes_this_batch(trainer):
            self._pending[index] = (norm, threshold)  # logged at batch end if training stops there
            return  # Lightning would not write this step's values: skip the ~0.4 ms per `log` call
        self._pending.pop(index, None)
        suffix = f"/opt{index}" if len(trainer.optimizers) > 1 else ""
        window = state.recent_clipped
        values = {
            "grad_clip/norm": norm,
            "grad_clip/clipped": sum(window) / max(len(window), 1),
            "grad_clip/nonfinite_steps": float(state.nonfinite_steps),
        }
        if threshold is not None:
            values["grad_clip/threshold"] = threshold
        for key, value in values.items():
            pl_module.log(key + suffix, value, on_step=True, on_epoch=False, batch_size=1)
