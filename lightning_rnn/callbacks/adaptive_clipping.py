"""AdaptiveGradientClipping: AutoClip / ZClip / AGC (or any ClipRule) as one Lightning callback."""

from __future__ import annotations

import copy
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

from lightning_rnn._validation import check_float, check_int
from lightning_rnn.functional.clipping import (
    ClipRule,
    QuantileClipRule,
    UnitwiseClipRule,
    ZScoreClipRule,
    clip_with_rule_,
    clips_per_parameter,
    grad_norm,
)

__all__ = ["AdaptiveGradientClipping", "NonFiniteGradientError"]

# The rules a `mode` name selects: mode -> (rule class, {rule argument: the callback argument that sets it}).
# The callback arguments, in this order, also make the `state_key`. A named rule is one class + one line here.
_NAMED_RULES: dict[str, tuple[type[ClipRule], dict[str, str]]] = {
    "quantile": (QuantileClipRule, {"quantile": "quantile", "window": "window"}),
    "zscore": (ZScoreClipRule, {"z_threshold": "z_threshold", "alpha": "alpha", "warmup_steps": "warmup_steps"}),
    "agc": (UnitwiseClipRule, {"clip_factor": "agc_lambda", "eps": "agc_eps"}),
}
_MODES = tuple(_NAMED_RULES)
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

    def __init__(self, rule: ClipRule, log_window: int) -> None:
        self.rule = rule
        self.steps = 0  # finite steps seen
        self.clipped_steps = 0
        self.nonfinite_steps = 0
        self.consecutive_nonfinite = 0
        self.recent_clipped: deque[bool] = deque(maxlen=log_window)

    def state_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule.state_dict(),
            "steps": self.steps,
            "clipped_steps": self.clipped_steps,
            "nonfinite_steps": self.nonfinite_steps,
            "consecutive_nonfinite": self.consecutive_nonfinite,
            "recent_clipped": list(self.recent_clipped),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
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

    Modes, each a :class:`~lightning_rnn.functional.clipping.ClipRule` (the maths lives in
    :mod:`lightning_rnn.functional.clipping`):

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
    * a :class:`~lightning_rnn.functional.clipping.ClipRule` object: your own rule (one subclass with a
      ``step(norm) -> threshold`` method; ``clip_`` for per-parameter clipping, which ``agc_exclude``
      applies to as for AGC). With several optimizers the first one uses the object itself, each further
      one a copy of the object as it was passed.

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

    Logged with one ``pl_module.log_dict(..., on_step=True)`` per optimizer step; Lightning decides which
    steps reach the loggers (every ``Trainer(log_every_n_steps)`` batches, and the batch in which training
    stops, with the values of that batch's last optimizer step). ``trainer.callback_metrics`` and
    :attr:`last_norm` / :attr:`last_threshold` / :attr:`last_clipped` hold the latest step. Keys:
    ``grad_clip/norm`` (pre-clip global norm), ``grad_clip/threshold`` (the
    norm the gradients are clipped to when above it; omitted while it is infinite, e.g. in warm-up),
    ``grad_clip/clipped`` (fraction of the last ``log_every_n_steps`` optimizer steps that were clipped),
    ``grad_clip/nonfinite_steps`` (total skipped). With several optimizers the keys get ``/opt{i}``.

    Args:
        mode: ``"quantile"``, ``"zscore"``, ``"agc"``, or a
            :class:`~lightning_rnn.functional.clipping.ClipRule` object (then the arguments of the named
            rules below are not used).
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

        Your own rule: a subclass of ``ClipRule``, passed as ``mode``:

        >>> from lightning_rnn.functional import ClipRule
        >>> class TwiceTheMean(ClipRule):
        ...     "Clips to twice the running mean of the norms (the current one included)."
        ...     def __init__(self) -> None:
        ...         self.total, self.count = 0.0, 0
        ...     def step(self, norm: float) -> float:
        ...         self.total, self.count = self.total + norm, self.count + 1
        ...         return 2.0 * self.total / self.count
        ...     def state_dict(self):
        ...         return {"total": self.total, "count": self.count}
        ...     def load_state_dict(self, state):
        ...         self.total, self.count = state.get("total", 0.0), state.get("count", 0)
        >>> clip = AdaptiveGradientClipping(TwiceTheMean(), max_norm=10.0)
    """

    def __init__(
        self,
        mode: str | ClipRule = "quantile",
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
        if not isinstance(mode, ClipRule) and (not isinstance(mode, str) or mode not in _MODES):
            raise ValueError(f"Expected mode to be one of {_MODES} or a ClipRule object, got {mode!r}")
        check_float("quantile", quantile, min=0.0, max=1.0, min_inclusive=False)
        check_int("window", window, min=1, allow_none=True)
        check_int("warmup_steps", warmup_steps, min=0)
        check_float("alpha", alpha, min=0.0, max=1.0, min_inclusive=False, max_inclusive=False)
        for name, value in (("z_threshold", z_threshold), ("agc_lambda", agc_lambda), ("agc_eps", agc_eps)):
            check_float(name, value, min=0.0, min_inclusive=False)
        if agc_exclude is not None:
            if isinstance(agc_exclude, str) or not all(isinstance(x, str) for x in agc_exclude):
                raise TypeError(
                    f"Expected agc_exclude to be None or a list of parameter-name prefixes, got {agc_exclude!r}"
                )
            agc_exclude = list(agc_exclude)
        check_float("max_norm", max_norm, min=0.0, min_inclusive=False, allow_none=True)
        check_float("norm_type", norm_type, min=0.0, min_inclusive=False, finite=False)
        check_int("max_nonfinite_steps", max_nonfinite_steps, min=1)
        check_int("log_every_n_steps", log_every_n_steps, min=1, allow_none=True)

        # `mode` is the rule's name: a named rule's, or the class name of a rule object.
        self.mode: str = mode if isinstance(mode, str) else type(mode).__name__
        self._rule_object = mode if isinstance(mode, ClipRule) else None
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

        # The rule every optimizer's own rule starts as (a rule object is copied before any step changes it).
        self._rule_template = copy.deepcopy(self._rule_object) if self._rule_object is not None else self._named_rule()
        self._states: dict[int, _OptimizerClipState] = {}
        self._log_window = log_every_n_steps or 50
        self._agc_skip: set[int] = set()  # ids of parameters the rule's per-parameter clip (AGC) leaves alone
        # Last step's decision (for inspection and tests): pre-clip norm, threshold, clipped.
        self.last_norm: float | None = None
        self.last_threshold: float | None = None
        self.last_clipped: bool = False

    # ------------------------------------------------------------------ identity and state
    @property
    @override
    def state_key(self) -> str:
        # The class name and the arguments that make a rule, in the format of Lightning's own callbacks.
        if self._rule_object is not None:
            key: dict[str, Any] = {"mode": self.mode, "rule": repr(self._rule_template), "max_norm": self.max_norm}
        else:
            _, arguments = _NAMED_RULES[self.mode]
            key = {"mode": self.mode, **{name: getattr(self, name) for name in arguments.values()}}
            key["max_norm"] = self.max_norm
        return f"{type(self).__qualname__}{key!r}"

    def _named_rule(self) -> ClipRule:
        rule_class, arguments = _NAMED_RULES[self.mode]
        return rule_class(**{arg: getattr(self, name) for arg, name in arguments.items()})

    def _make_rule(self, index: int) -> ClipRule:
        if index == 0 and self._rule_object is not None:
            return self._rule_object  # the user's object itself: its state is what they can inspect
        return copy.deepcopy(self._rule_template)

    def _state(self, index: int) -> _OptimizerClipState:
        state = self._states.get(index)
        if state is None:
            state = self._states[index] = _OptimizerClipState(self._make_rule(index), self._log_window)
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
        if clips_per_parameter(self._rule_template):
            self._agc_skip = self._resolve_agc_exclude(pl_module)

    def _resolve_agc_exclude(self, pl_module: nn.Module) -> set[int]:
        if self.agc_exclude is None:
            linears = [name for name, m in pl_module.named_modules() if isinstance(m, nn.Linear)]
            if not linears:
                rank_zero_info(
                    f"{type(self).__name__}(mode={self.mode!r}): no nn.Linear found; the rule's per-parameter "
                    "clipping covers every parameter."
                )
                return set()
            prefixes = [f"{linears[-1]}." if linears[-1] else ""]
            rank_zero_info(
                f"{type(self).__name__}(mode={self.mode!r}): leaving the output layer {linears[-1]!r} unclipped "
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

        norm_t = grad_norm([p.grad for p in params], self.norm_type).float()
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            # All-reduced gradients make the norm equal on every rank in exact arithmetic; taking the max
            # (one scalar collective) makes it equal bit for bit, so histories and decisions never drift.
            norm_t = torch.nan_to_num(norm_t, nan=math.inf)
            torch.distributed.all_reduce(norm_t, op=torch.distributed.ReduceOp.MAX)
        norm = float(norm_t)  # the one host sync per step
        self.last_norm = norm

        if not math.isfinite(norm):
            self._skip_nonfinite_step(trainer, pl_module, params, index, state, norm)
            return
        state.consecutive_nonfinite = 0
        state.steps += 1

        skip = self._agc_skip
        threshold, clipped = clip_with_rule_(
            state.rule,
            params,
            norm,
            max_norm=self.max_norm,
            norm_type=self.norm_type,
            rule_parameters=[p for p in params if id(p) not in skip] if skip else None,
        )
        state.clipped_steps += int(clipped)
        state.recent_clipped.append(clipped)
        self.last_threshold = threshold if math.isfinite(threshold) else None
        self.last_clipped = clipped
        self._log(trainer, pl_module, index, state, norm, self.last_threshold)

    def _skip_nonfinite_step(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        params: list[torch.Tensor],
        index: int,
        state: _OptimizerClipState,
        norm: float,
    ) -> None:
        """A non-finite norm: drop the gradients (the step changes nothing), count it, raise after too many."""
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

    def _log(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        index: int,
        state: _OptimizerClipState,
        norm: float,
        threshold: float | None,
    ) -> None:
        """One ``log_dict`` per optimizer step: Lightning decides which steps reach the loggers."""
        suffix = f"/opt{index}" if len(trainer.optimizers) > 1 else ""
        window = state.recent_clipped
        values = {
            "grad_clip/norm": norm,
            "grad_clip/clipped": sum(window) / max(len(window), 1),
            "grad_clip/nonfinite_steps": float(state.nonfinite_steps),
        }
        if threshold is not None:
            values["grad_clip/threshold"] = threshold
        pl_module.log_dict(
            {key + suffix: value for key, value in values.items()}, on_step=True, on_epoch=False, batch_size=1
        )
