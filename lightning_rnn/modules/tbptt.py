"""TBPTTModule: truncated backpropagation through time built into a LightningModule.

Lightning 2.0 removed ``truncated_bptt_steps``; its documented replacement is manual optimization inside
``training_step``. This base class is that loop, written once: a subclass says how one chunk is processed
(:meth:`TBPTTModule.tbptt_step`), the base splits every batch along time, carries and detaches the
recurrent state, takes one optimizer step per chunk that has a loss, steps the LR schedulers, clips, skips
non-finite steps, agrees with the other ranks under DDP, and evaluates arbitrarily long sequences in bounded
memory.
"""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lightning_rnn._validation import check_bool, check_float, check_int
from lightning_rnn.functional.clipping import grad_norm
from lightning_rnn.functional.tbptt import (
    _tensors,
    batch_time_length,
    chunk_bounds,
    slice_batch,
    variable_chunk_bounds,
    window_starts,
)
from lightning_rnn.nn.state import detach_state, map_state, reset_state_rows

__all__ = ["NonFiniteStepError", "TBPTTModule", "TBPTTStep"]

_CLIP_ALGORITHMS = ("norm", "value")
_LR_SCHEDULER_STEPS = ("auto", "batch", "optimizer_step")
_NONFINITE_INPUTS = ("error", "skip")
# Strategies whose manual-optimization path cannot run a TBPTT loop (Lightning #19626 for FSDP).
_REFUSED_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")


@dataclass
class TBPTTStep:
    """What :meth:`TBPTTModule.tbptt_step` returns for one chunk.

    Attributes:
        loss: scalar mean loss over the targets the chunk counts.
        state: the recurrent state after the chunk, with its graph attached (the base detaches it).
        weight: how many targets ``loss`` averages over (tokens, unmasked steps, rows); used to combine
            chunks into a batch mean, to weight the epoch mean and, under DDP, to weight each rank's loss so
            that the update equals one process's over the global batch. ``0`` means the chunk has no loss
            (no optimizer step). ``None`` means the chunk's time length.
        outputs: anything the subclass wants back in :meth:`TBPTTModule.on_eval_chunk_end` (e.g. logits).
        metrics: extra scalars to log for this chunk (``train/<name>`` in training).
        penalty: a regularization term (e.g. AR/TAR, :mod:`lightning_rnn.functional.activation_reg`) added to
            ``loss`` for the backward pass only (weighted across chunks like ``loss``); it is not part of the
            logged ``train/loss`` and not used in evaluation.
    """

    loss: Tensor
    state: Any
    weight: float | Tensor | None = None
    outputs: Any = None
    metrics: dict[str, Tensor | float] = field(default_factory=dict)
    penalty: Tensor | float = 0.0


class NonFiniteStepError(RuntimeError):
    """Raised by :class:`TBPTTModule` after ``max_consecutive_skips`` consecutive non-finite steps.

    Attributes:
        count: consecutive skipped steps.
        step: ``trainer.global_step`` (optimizer steps taken) when it was raised.
        reason: ``"loss"`` or ``"gradient"``, what was non-finite at the last skipped step.
    """

    def __init__(self, count: int, step: int, reason: str) -> None:
        self.count, self.step, self.reason = count, step, reason
        super().__init__(
            f"The {reason} was non-finite (NaN/inf) for {count} consecutive TBPTT chunks (the last at global step "
            f"{step}); each was skipped without touching the parameters. Training stopped instead of training on "
            "NaNs: lower the learning rate, clip gradients, or check the data. Raise the module's "
            "max_consecutive_skips to tolerate longer runs."
        )


def _check_dim_spec(spec: Any, path: str = "state_batch_dim") -> None:
    if spec is None or (isinstance(spec, int) and not isinstance(spec, bool)):
        return
    if isinstance(spec, Mapping):
        for key, value in spec.items():
            _check_dim_spec(value, f"{path}[{key!r}]")
        return
    if isinstance(spec, list | tuple):
        for i, value in enumerate(spec):
            _check_dim_spec(value, f"{path}[{i}]")
        return
    raise TypeError(
        f"Expected {path} to be an int, None, or a dict/tuple/list of those shaped like the state, got {spec!r}"
    )


def _state_leaves(state: Any, path: str = "state") -> list[tuple[str, Tensor]]:
    """Tensor leaves of a nested state with their paths, in :func:`~lightning_rnn.nn.state.map_state`'s order."""
    if state is None:
        return []
    if isinstance(state, Tensor):
        return [(path, state)]
    if isinstance(state, tuple | list):
        return [leaf for i, s in enumerate(state) for leaf in _state_leaves(s, f"{path}[{i}]")]
    if isinstance(state, dict):
        return [leaf for k, s in state.items() for leaf in _state_leaves(s, f"{path}[{k!r}]")]
    raise TypeError(f"Expected a Tensor, None or a nested tuple/list/dict of Tensors as state, got {type(state).__name__}")


def _spec_dims(spec: Any, state: Any, path: str = "state") -> list[int | None]:
    """One batch dim (or None: infer) per tensor leaf of ``state``; ``spec`` is a prefix of the state's nesting."""
    if state is None:
        return []
    if spec is None or isinstance(spec, int):
        return [spec] * len(_state_leaves(state, path))
    if isinstance(state, dict) and isinstance(spec, Mapping):
        out: list[int | None] = []
        for key, value in state.items():
            out.extend(_spec_dims(spec.get(key), value, f"{path}[{key!r}]"))
        return out
    if isinstance(state, tuple | list) and isinstance(spec, list | tuple) and len(spec) == len(state):
        return [d for s, v, i in zip(spec, state, range(len(state))) for d in _spec_dims(s, v, f"{path}[{i}]")]
    raise ValueError(f"Expected state_batch_dim to follow the nesting of the state at {path}, got {spec!r}")


class _TBPTTEngine(Callback):
    """The engine's per-optimizer-step, per-batch and per-epoch work, kept out of the module's own hooks.

    :class:`TBPTTModule` adds it to ``trainer.callbacks`` at its first training step of a ``fit`` and it removes
    itself when the fit ends, so a subclass may override any Lightning hook without calling ``super()``.
    """

    def __init__(self, module: TBPTTModule) -> None:
        self.module = module

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        # inside optimizer.step(): after AMP's unscale_ and DDP's all-reduce, after the user's callbacks
        if pl_module is self.module and pl_module.gradient_clip_val is not None:
            pl_module.clip_gradients(
                optimizer,
                gradient_clip_val=pl_module.gradient_clip_val,
                gradient_clip_algorithm=pl_module.gradient_clip_algorithm,
            )

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if pl_module is self.module:
            pl_module._save_crossed_step_checkpoints(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if pl_module is self.module:
            pl_module._step_schedulers("epoch", trainer.current_epoch + 1)

    def _detach(self, trainer: Any) -> None:
        # a new list: Lightning may be iterating the old one while calling this hook
        trainer.callbacks = [c for c in trainer.callbacks if c is not self]

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._detach(trainer)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._detach(trainer)


_MIGRATION_HINT = " (Lightning 1.x TBPTT was removed in 2.0; lightning-rnn's replacement is named here)"


def _check_lightning_1x(cls: type) -> None:
    """Refuse the Lightning 1.x TBPTT spellings in a subclass, naming the lightning-rnn replacement."""
    if callable(getattr(cls, "tbptt_split_batch", None)):
        raise TypeError(
            f"{cls.__name__} defines tbptt_split_batch(batch, split_size), which lightning-rnn never calls"
            f"{_MIGRATION_HINT}: override slice_batch(batch, start, end) to return the part [start, end) of the "
            "batch along time, and set tbptt_steps=split_size."
        )
    static = inspect.getattr_static(cls, "truncated_bptt_steps", None)
    if static is not None and not isinstance(static, property):
        raise TypeError(
            f"{cls.__name__} sets truncated_bptt_steps = {static!r}, which lightning-rnn ignores{_MIGRATION_HINT}: "
            f"pass tbptt_steps={static!r} to TBPTTModule.__init__ instead."
        )
    if "hiddens" in inspect.signature(cls.training_step).parameters:
        raise TypeError(
            f"{cls.__name__}.training_step takes `hiddens`{_MIGRATION_HINT}: do not override training_step; "
            "implement tbptt_step(chunk, state) -> TBPTTStep(loss, state), which receives the carried state "
            "(the 1.x `hiddens`) and returns the new one instead of {'loss': ..., 'hiddens': ...}."
        )


class TBPTTModule(LightningModule):
    """Base LightningModule with truncated backpropagation through time built in.

    Subclass it and implement :meth:`tbptt_step` (chunk + carried state -> loss, new state); optionally
    :meth:`initial_state`. The base uses manual optimization: every training batch whose tensors have a time
    dimension ``(N, L, ...)`` is split along time into chunks of ``tbptt_steps`` (the last may be shorter), the
    state is carried from chunk to chunk and detached at every boundary, and there is **one optimizer step per
    chunk that has a loss** — so ``trainer.global_step`` counts optimizer steps (chunks), not batches. A chunk
    whose loss is not connected to any parameter or counts no target (``TBPTTStep.weight == 0``) is not an
    optimizer step: no ``global_step`` increment, no scheduler step.

    **Step accounting.** ``Trainer(max_steps=N)`` stops after exactly N optimizer steps (in the middle of a
    batch if need be). ``ModelCheckpoint(every_n_train_steps=n)`` saves at the end of every batch in which a
    multiple of n was reached. ``val_check_interval`` and ``log_every_n_steps`` count training batches, as
    Lightning documents them. ``interval="step"`` LR schedulers step once per training batch that took at least
    one optimizer step (``lr_scheduler_step="batch"``, Lightning 1.x's TBPTT semantics and what
    ``trainer.estimated_stepping_batches`` counts in a ``max_epochs`` run), or once per optimizer step with
    ``lr_scheduler_step="optimizer_step"`` (what ``estimated_stepping_batches`` counts in a ``max_steps`` run).
    The default ``"auto"`` picks, once per fit, the unit ``trainer.estimated_stepping_batches`` counts: per
    optimizer step when ``max_steps`` is what ends the estimate (``estimated_stepping_batches == max_steps``),
    per batch otherwise — so a schedule sized by it (OneCycleLR, a linear warm-up) runs to its last step in
    both kinds of run and never past it. ``frequency`` counts batches of the epoch (as Lightning does) or
    ``global_step`` respectively.

    **Non-finite steps.** A chunk whose loss or gradient is NaN/inf (on any rank) is skipped before
    ``optimizer.step()``: parameters and optimizer state stay bit-identical, ``train/skipped_steps`` counts it,
    the carried state's rows that hold NaN/inf are reset to zero (all rows when the layout is unknown), and after
    ``max_consecutive_skips`` skipped chunks in a row :class:`NonFiniteStepError` stops training. Under fp16 AMP
    with a GradScaler, overflowing gradients are left to the scaler (which skips the step and lowers its scale).
    A training batch holding NaN/inf in a floating tensor raises an error naming the batch, or is skipped with
    ``nonfinite_inputs="skip"``.

    **State layout.** Row resets (``"reset"`` entries, non-finite rows) act on the batch dimension of every
    tensor of the state: dim 1 for 3-D tensors, torch's RNN layout ``(D*num_layers, N, H)``; for other tensors the
    one dim of size N. Declare it with ``state_batch_dim`` (an int for every tensor, or a dict/tuple following the
    state's nesting, e.g. ``{"rnn": 1, "memory": 0}``) when the state is batch-first 3-D or when N could match
    another size; an undeclared state whose batch dim cannot be told is an error, never a guess.

    **DDP.** Ranks agree on the padded length of every batch (one small all-reduce) and so on the chunks; per
    chunk one all-reduce of the loss weights lets each rank weight its loss so that the update equals one
    process's over the global batch, and a chunk that has a loss on any rank is a step on every rank (ranks
    without one contribute zero gradients). Every trainable parameter takes part in every backward, so plain
    ``strategy="ddp"`` works for modules that leave parameters unused in a chunk. FSDP and DeepSpeed are refused.

    Args:
        tbptt_steps: k1, the chunk length. ``None``: no split (the whole batch is one chunk).
        tbptt_backprop_steps: k2 >= k1 (Sutskever 2013's TBPTT(k1, k2)). Each update advances k1 steps but
            backpropagates k2 steps, restarting from the saved, detached state k2 - k1 steps back; the loss
            counts only the k1 new steps. Windows never reach back across the start of a batch. Default k1.
        carry_state: carry the state across consecutive batches too (text streams such as
            :class:`~lightning_rnn.data.TextStreamDataModule`): reset at the start of every epoch, reset row by
            row where a dict batch's ``"reset"`` entry (bool ``(N,)``) is True, and reset whenever the batch
            size changes. Evaluation carries its own state the same way (reset at each loader's first batch).
        variable_bptt: AWD-LSTM's variable-length BPTT: chunk lengths drawn around ``tbptt_steps`` (normal
            with sd ``variable_bptt_std``, ``tbptt_steps / 2`` with probability 0.05, at least
            ``variable_bptt_min``), learning rate scaled by ``length / tbptt_steps`` for that step and restored
            after. Needs ``tbptt_steps``.
        gradient_clip_val: fixed clipping applied per chunk inside ``optimizer.step()``, i.e. after AMP
            unscaling and after DDP's all-reduce (Lightning #18089). ``Trainer(gradient_clip_val=...)`` is
            refused (Lightning cannot clip under manual optimization): set it here.
        gradient_clip_algorithm: ``"norm"`` or ``"value"``.
        eval_tbptt_steps: chunk length for validation/test/predict (no backward). ``None``: ``tbptt_steps``.
        lr_scheduler_step: ``"auto"`` (default), ``"batch"`` or ``"optimizer_step"``: when ``interval="step"``
            schedulers step (see *Step accounting*).
        state_batch_dim: where the batch dim of the state's tensors is (see *State layout*); ``None``: the
            documented default and inference.
        max_consecutive_skips: consecutive non-finite chunks tolerated before :class:`NonFiniteStepError`.
        nonfinite_inputs: ``"error"`` (default) or ``"skip"``: what a training batch with NaN/inf gets.

    Subclass API:
        - ``tbptt_step(chunk, state) -> TBPTTStep`` (required), used in training, validation, test and predict
        - ``initial_state(batch) -> state`` (default ``None``: the network starts from zeros)
        - ``slice_batch(batch, start, end)`` (default: tensors of 2+ dims sliced at dim 1, 1-D tensors passed
          through, a dict ``"lengths"`` entry clipped to the slice)
        - ``reset_mask(batch)`` (default: a dict batch's ``"reset"`` entry), ``state_batch_dim``
        - ``on_eval_chunk_end(stage, chunk, step)`` to update evaluation metrics over whole sequences.
        The engine's own work does not live in Lightning's hooks: override ``on_train_epoch_start``,
        ``on_train_epoch_end``, ``on_before_optimizer_step``, ``on_fit_start`` and the evaluation epoch hooks
        freely, without ``super()``. ``configure_callbacks`` gives the refusals of unsupported Trainer options
        their lightning-rnn wording and adds :class:`~lightning_rnn.callbacks.ExactResume`: an override should
        return ``super().configure_callbacks() + [...]``; without it Lightning's own errors refuse those options
        and ``fit`` warns that a resumed run will not be exact.
        Lightning 1.x's ``truncated_bptt_steps``, ``tbptt_split_batch`` and ``training_step(..., hiddens)`` are
        refused with the replacement named.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> from lightning_rnn import TBPTTModule, TBPTTStep
        >>> class Regressor(TBPTTModule):
        ...     def __init__(self):
        ...         super().__init__(tbptt_steps=16)
        ...         self.rnn = nn.GRU(3, 8, batch_first=True)
        ...         self.head = nn.Linear(8, 1)
        ...     def tbptt_step(self, chunk, state):
        ...         x, y = chunk                      # (N, L, 3), (N, L, 1)
        ...         out, state = self.rnn(x, state)   # (N, L, 8); state (1, N, 8)
        ...         return TBPTTStep(nn.functional.mse_loss(self.head(out), y), state)
        ...     def configure_optimizers(self):
        ...         return torch.optim.Adam(self.parameters(), 1e-2)
        >>> model = Regressor()
        >>> model.state_batch_dims(torch.zeros(1, 4, 8), rows=4)
        [1]
    """

    def __init__(
        self,
        *,
        tbptt_steps: int | None = None,
        tbptt_backprop_steps: int | None = None,
        carry_state: bool = False,
        variable_bptt: bool = False,
        variable_bptt_std: float = 5.0,
        variable_bptt_min: int = 5,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        eval_tbptt_steps: int | None = None,
        lr_scheduler_step: str = "auto",
        state_batch_dim: Any = None,
        max_consecutive_skips: int = 10,
        nonfinite_inputs: str = "error",
    ) -> None:
        super().__init__()
        _check_lightning_1x(type(self))
        self.automatic_optimization = False
        check_int("tbptt_steps", tbptt_steps, min=1, allow_none=True)
        check_int("tbptt_backprop_steps", tbptt_backprop_steps, min=1, allow_none=True)
        check_int("eval_tbptt_steps", eval_tbptt_steps, min=1, allow_none=True)
        self._tbptt_steps = tbptt_steps
        self.tbptt_backprop_steps = tbptt_backprop_steps  # validated by the setter
        if variable_bptt and tbptt_steps is None:
            raise ValueError("Expected tbptt_steps to be set when variable_bptt=True, got tbptt_steps=None")
        check_float("variable_bptt_std", variable_bptt_std, min=0.0)
        check_int("variable_bptt_min", variable_bptt_min, min=1)
        check_bool("carry_state", carry_state)
        check_bool("variable_bptt", variable_bptt)
        check_float("gradient_clip_val", gradient_clip_val, min=0.0, min_inclusive=False, allow_none=True)
        if gradient_clip_algorithm not in _CLIP_ALGORITHMS:
            raise ValueError(
                f"Expected gradient_clip_algorithm in {_CLIP_ALGORITHMS}, got {gradient_clip_algorithm!r}"
            )
        if lr_scheduler_step not in _LR_SCHEDULER_STEPS:
            raise ValueError(f"Expected lr_scheduler_step in {_LR_SCHEDULER_STEPS}, got {lr_scheduler_step!r}")
        _check_dim_spec(state_batch_dim)
        check_int("max_consecutive_skips", max_consecutive_skips, min=1, allow_none=True)
        if nonfinite_inputs not in _NONFINITE_INPUTS:
            raise ValueError(f"Expected nonfinite_inputs in {_NONFINITE_INPUTS}, got {nonfinite_inputs!r}")
        self.carry_state = carry_state
        self.variable_bptt = variable_bptt
        self.variable_bptt_std = variable_bptt_std
        self.variable_bptt_min = variable_bptt_min
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm
        self.eval_tbptt_steps = eval_tbptt_steps
        self.lr_scheduler_step = lr_scheduler_step
        self.state_batch_dim = state_batch_dim
        self.max_consecutive_skips = max_consecutive_skips
        self.nonfinite_inputs = nonfinite_inputs
        self.skipped_steps = 0  # non-finite chunks skipped so far (logged as train/skipped_steps)
        self._consecutive_skips = 0
        self._carried_state: Any = None
        self._carried_rows: int | None = None
        self._eval_state: Any = None
        self._eval_rows: int | None = None
        self._bptt_rng = random.Random(0)
        self._bptt_rng_seeded = False
        self._engine: _TBPTTEngine | None = None
        self._scheduler_unit = "batch"  # resolved from lr_scheduler_step at the start of every fit
        self._batch_first_step = 0

    # ------------------------------------------------------------------ options
    @property
    def tbptt_steps(self) -> int | None:
        """k1, the chunk length (settable, e.g. by :class:`~lightning_rnn.callbacks.AdaptiveTBPTT`)."""
        return self._tbptt_steps

    @tbptt_steps.setter
    def tbptt_steps(self, value: int | None) -> None:
        check_int("tbptt_steps", value, min=1, allow_none=True)
        if value is None and self.variable_bptt:
            raise ValueError("Expected tbptt_steps to be set when variable_bptt=True, got None")
        k2 = getattr(self, "_tbptt_backprop_steps", None)
        if value is not None and k2 is not None and k2 < value:
            raise ValueError(f"Expected tbptt_steps <= tbptt_backprop_steps ({k2}), got {value}")
        self._tbptt_steps = value

    @property
    def tbptt_backprop_steps(self) -> int | None:
        """k2 >= k1, the number of steps each update backpropagates (``None``: k2 = k1)."""
        return self._tbptt_backprop_steps

    @tbptt_backprop_steps.setter
    def tbptt_backprop_steps(self, value: int | None) -> None:
        check_int("tbptt_backprop_steps", value, min=1, allow_none=True)
        if value is not None and self._tbptt_steps is None:
            raise ValueError(f"Expected tbptt_steps to be set when tbptt_backprop_steps={value}, got None")
        if value is not None and value < self._tbptt_steps:  # type: ignore[operator]
            raise ValueError(
                f"Expected tbptt_backprop_steps >= tbptt_steps ({self._tbptt_steps}), got {value}"
            )
        self._tbptt_backprop_steps = value

    @property
    def truncated_bptt_steps(self) -> int | None:
        """Lightning 1.x's name: reading gives ``tbptt_steps``; setting it is an error naming ``tbptt_steps``."""
        return self._tbptt_steps

    @truncated_bptt_steps.setter
    def truncated_bptt_steps(self, value: Any) -> None:
        raise AttributeError(
            f"truncated_bptt_steps is Lightning 1.x's TBPTT option, which lightning-rnn does not read: pass "
            f"tbptt_steps={value!r} to TBPTTModule.__init__ (or set self.tbptt_steps = {value!r})."
        )

    # ------------------------------------------------------------------ subclass API
    def tbptt_step(self, chunk: Any, state: Any) -> TBPTTStep:
        """Process one chunk: ``chunk`` is the batch sliced along time, ``state`` the carried state.

        Return a :class:`TBPTTStep` with the chunk's mean loss and the new state (graph attached). Called in
        training (grad enabled) and evaluation (no grad); ``self.training`` tells which.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement tbptt_step(chunk, state) -> TBPTTStep")

    def initial_state(self, batch: Any) -> Any:
        """State at the start of a sequence (default ``None``: the network's zeros)."""
        return None

    def slice_batch(self, batch: Any, start: int, end: int) -> Any:
        """Return the part ``[start, end)`` of ``batch`` along time (see :func:`functional.tbptt.slice_batch`)."""
        return slice_batch(batch, start, end)

    def reset_mask(self, batch: Any) -> Tensor | None:
        """Rows whose carried state must be reset before this batch (a dict batch's ``"reset"`` entry)."""
        if isinstance(batch, Mapping) and isinstance(batch.get("reset"), Tensor):
            return batch["reset"].bool()
        return None

    def on_eval_chunk_end(self, stage: str, chunk: Any, step: TBPTTStep) -> None:
        """Hook after each evaluation chunk (``stage`` in ``"val"``, ``"test"``, ``"predict"``)."""

    # ------------------------------------------------------------------ state layout
    def state_batch_dims(self, state: Any, rows: int) -> list[int]:
        """The batch dim of every tensor of ``state`` (in :func:`~lightning_rnn.nn.state.map_state` order).

        Declared by ``state_batch_dim``; otherwise dim 1 for 3-D tensors (torch's ``(D*num_layers, N, H)``) and
        the one dim of size ``rows`` for the others.

        Raises:
            ValueError: a declared dim whose size is not ``rows``, or a tensor whose batch dim cannot be told.
        """
        leaves = _state_leaves(state)
        out: list[int] = []
        for (path, t), d in zip(leaves, _spec_dims(self.state_batch_dim, state)):
            hint = "declare it with state_batch_dim (an int, or a dict/tuple following the state's nesting)"
            if d is not None:
                if not -t.dim() <= d < t.dim() or t.shape[d] != rows:
                    raise ValueError(
                        f"Expected {path} of shape {tuple(t.shape)} to have the batch size {rows} at the declared "
                        f"state_batch_dim {d}, got {tuple(t.shape)}"
                    )
                out.append(d % t.dim())
            elif t.dim() == 3:
                if t.shape[1] != rows:
                    raise ValueError(
                        f"Expected the 3-D state tensor {path} laid out like torch's RNN state (D*num_layers, N, H) "
                        f"with N={rows} at dim 1, got shape {tuple(t.shape)}: {hint}"
                    )
                out.append(1)
            else:
                matches = [i for i in range(t.dim()) if t.shape[i] == rows]
                if len(matches) != 1:
                    raise ValueError(
                        f"Cannot tell the batch dim of the state tensor {path} of shape {tuple(t.shape)} with batch "
                        f"size {rows} ({'no dim' if not matches else 'several dims'} of that size): {hint}"
                    )
                out.append(matches[0])
        return out

    def reset_state_rows(self, state: Any, mask: Tensor, rows: int | None = None) -> Any:
        """Zero the rows of ``state`` where ``mask`` (bool ``(N,)``) is True, on each tensor's batch dim."""
        dims = iter(self.state_batch_dims(state, int(mask.shape[0]) if rows is None else rows))
        return map_state(lambda t: reset_state_rows(t, mask.to(t.device), dim=next(dims)), state)

    def keep_state_rows(self, new: Any, old: Any, mask: Tensor) -> Any:
        """``new`` with the rows where ``mask`` (bool ``(N,)``) is True taken from ``old`` (frozen rows)."""
        dims = iter(self.state_batch_dims(new, int(mask.shape[0])))
        olds = iter(t for _, t in _state_leaves(old))

        def keep(t: Tensor) -> Tensor:
            d, o = next(dims), next(olds)
            shape = [1] * t.dim()
            shape[d] = -1
            return torch.where(mask.to(t.device).view(shape), o, t)

        return map_state(keep, new)

    def _reset_nonfinite_rows(self, state: Any, rows: int) -> Any:
        leaves = _state_leaves(state)
        if not leaves or all(bool(torch.isfinite(t).all()) for _, t in leaves):
            return state
        try:
            dims = self.state_batch_dims(state, rows)
        except ValueError:
            return None  # the layout is unknown: reset every row
        bad = torch.zeros(rows, dtype=torch.bool, device=leaves[0][1].device)
        for (_, t), d in zip(leaves, dims):
            bad |= ~torch.isfinite(t.movedim(d, 0).reshape(rows, -1)).all(1).to(bad.device)
        return self.reset_state_rows(state, bad, rows)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _rows(batch: Any) -> int:
        timed = [t for _, t in _tensors(batch) if t.dim() >= 2]
        return int(timed[0].shape[0]) if timed else 0

    def _start_state(self, batch: Any, carried: Any, carried_rows: int | None) -> Any:
        rows = self._rows(batch)
        if not self.carry_state or carried is None:
            return self.initial_state(batch)
        if carried_rows != rows:
            rank_zero_warn(
                f"The batch size changed from {carried_rows} to {rows}: the carried recurrent state is reset.",
            )
            return self.initial_state(batch)
        mask = self.reset_mask(batch)
        if mask is not None and bool(mask.any()):
            return self.reset_state_rows(carried, mask.to(self.device), rows)
        return carried

    def _chunk_bounds(self, length: int) -> list[tuple[int, int]]:
        k = self._tbptt_steps
        if self.variable_bptt and k is not None:
            return variable_chunk_bounds(
                length, k, std=self.variable_bptt_std, min_steps=self.variable_bptt_min, rng=self._bptt_rng
            )
        return chunk_bounds(length, k)

    def _optimizers(self) -> list[Any]:
        opts = self.optimizers()
        return list(opts) if isinstance(opts, list | tuple) else [opts]

    @staticmethod
    def _combine(steps: list[TBPTTStep], lengths: list[int]) -> tuple[Tensor, Tensor]:
        weights = [
            torch.as_tensor(s.weight if s.weight is not None else n, dtype=torch.float32, device=s.loss.device)
            for s, n in zip(steps, lengths)
        ]
        if len(steps) == 1:
            return steps[0].loss, weights[0]
        total = sum(weights)
        loss = sum(s.loss * w for s, w in zip(steps, weights)) / total.clamp(min=1e-12)
        return loss, total

    def _distributed(self) -> bool:
        trainer = self._trainer
        return (
            trainer is not None
            and trainer.world_size > 1
            and torch.distributed.is_available()
            and torch.distributed.is_initialized()
        )

    @staticmethod
    def _nonfinite_entry(batch: Any) -> str | None:
        for name, t in _tensors(batch):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return name
        return None

    # ------------------------------------------------------------------ setup
    def _check_trainer(self, trainer: Any) -> None:
        name = type(self).__name__
        refused = [c.__name__ for c in type(trainer.strategy).__mro__ if c.__name__ in _REFUSED_STRATEGIES]
        if refused:
            raise ValueError(
                f"Expected a single-device or DDP strategy with {name}, got {refused[0]}: the TBPTT engine takes "
                "one manual optimizer step per chunk, which sharded strategies cannot run (Lightning #19626); use "
                'strategy="ddp".'
            )
        clip = trainer.gradient_clip_val
        if clip is not None and clip > 0:
            raise ValueError(
                f"Expected Trainer(gradient_clip_val=None) with {name}, got {clip}: a TBPTT module clips each chunk "
                f"itself (manual optimization), so pass gradient_clip_val={clip} (and gradient_clip_algorithm) to "
                f"{name} instead of the Trainer."
            )
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(
                f"Expected Trainer(accumulate_grad_batches=1) with {name}, got "
                f"{trainer.accumulate_grad_batches}: a TBPTT module takes one optimizer step per chunk "
                "(manual optimization). Use a larger batch size or a larger tbptt_steps instead."
            )

    def _setup_fit(self, trainer: Any) -> None:
        """Once per fit, at the first training step: checks, the chunk-length RNG, the engine callback."""
        if self._engine is not None and self._engine in trainer.callbacks:
            return
        self._check_trainer(trainer)
        seed = int(torch.initial_seed() % (2**31))
        if self._distributed():  # chunk lengths must agree across ranks or DDP hangs
            seed = int(trainer.strategy.broadcast(seed, src=0))
        if not self._bptt_rng_seeded:
            self._bptt_rng.seed(seed)
            self._bptt_rng_seeded = True
        self._scheduler_unit = self._resolve_scheduler_unit(trainer)
        from lightning_rnn.callbacks.resume import ExactResume

        if not any(isinstance(c, ExactResume) for c in trainer.callbacks):
            rank_zero_warn(
                f"{type(self).__name__}.configure_callbacks() does not return TBPTTModule's (ExactResume): a fit "
                "resumed from a checkpoint of this run will not restore the random number generators nor the "
                "carried recurrent state. Call super().configure_callbacks() in your override, or pass "
                "lightning_rnn.callbacks.ExactResume() to the Trainer."
            )
        self._engine = _TBPTTEngine(self)
        trainer.callbacks.append(self._engine)

    def _resolve_scheduler_unit(self, trainer: Any) -> str:
        """``"batch"`` or ``"optimizer_step"``: what one ``interval="step"`` scheduler step follows in this fit."""
        if self.lr_scheduler_step != "auto":
            return self.lr_scheduler_step
        if not trainer.lr_scheduler_configs or trainer.max_steps in (None, -1):
            return "batch"
        # Lightning's estimate counts batches, capped by max_steps: when the cap binds, the run ends after
        # max_steps optimizer steps, which is what the schedule was sized for
        return "optimizer_step" if trainer.estimated_stepping_batches == trainer.max_steps else "batch"

    def configure_callbacks(self) -> Any:  # runs before Lightning's own manual-optimization checks
        trainer = self._trainer
        if trainer is not None and trainer.state.fn == "fit":
            self._check_trainer(trainer)
        from lightning_rnn.callbacks.resume import ExactResume  # RNG + carried state on resume

        return [ExactResume()]

    # ------------------------------------------------------------------ training
    def _optimizer_update(
        self, steps: list[TBPTTStep], lengths: list[int], optimizers: list[Any], lr_scale: float
    ) -> tuple[str, Tensor | None, Tensor | None]:
        """Backward and step for one chunk. Returns ``("step" | "none" | "skip:<reason>", loss, weight)``."""
        distributed = self._distributed()
        penalty: Tensor | None = None
        if steps:
            loss, weight = self._combine(steps, lengths)
            connected = loss.grad_fn is not None
            if any(isinstance(s.penalty, Tensor) or s.penalty for s in steps):  # e.g. AR/TAR: backward only
                penalties = [replace(s, loss=torch.as_tensor(s.penalty, device=loss.device)) for s in steps]
                penalty = self._combine(penalties, lengths)[0]
        else:
            loss, weight, connected = None, None, False
        if not connected and not distributed:
            return "none", loss, weight
        device = loss.device if loss is not None else self.device
        zero = torch.zeros((), device=device)
        w = weight.detach().float().to(device) if connected else zero  # type: ignore[union-attr]
        bad = (~torch.isfinite(loss.detach())).float().to(device) if connected else zero  # type: ignore[union-attr]
        stats = torch.stack([w, torch.ones((), device=device) if connected else zero, bad])
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        params = [p for p in self.parameters() if p.requires_grad]
        if distributed:
            torch.distributed.all_reduce(stats)  # (total weight, ranks with a loss, ranks with a NaN loss)
            # each rank's share of the global weighted mean (DDP averages over ranks); the zero term makes every
            # parameter take part in every backward, so plain "ddp" never meets an unused parameter
            objective = sum(p.sum() for p in params) * 0.0
            if connected:
                world = self.trainer.world_size
                share = w * world / stats[0].clamp(min=1e-12)
                objective = objective + loss * share  # type: ignore[operator]
                if penalty is not None:
                    objective = objective + penalty * share
        else:
            objective = loss if penalty is None else loss + penalty  # type: ignore[operator]
        self.manual_backward(objective)
        grads = [p.grad for p in params if p.grad is not None]
        norm = grad_norm(grads).float().to(device) if grads else zero
        total_w, n_connected, n_bad, norm_value = torch.cat([stats, norm.reshape(1)]).tolist()  # one host sync
        outcome = "step"
        if n_connected == 0 or total_w <= 0 or not grads:
            outcome = "none"
        elif n_bad > 0:
            outcome = "skip:loss"
        elif not math.isfinite(norm_value):
            scaler = getattr(self.trainer.precision_plugin, "scaler", None) if self._trainer is not None else None
            if scaler is None:  # a GradScaler skips its overflowing steps itself and lowers its scale
                outcome = "skip:gradient"
        if outcome != "step":
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            return outcome, loss, weight
        for opt in optimizers:
            if lr_scale != 1.0:
                for group in opt.param_groups:
                    group["lr"] = group["lr"] * lr_scale
            opt.step()
            if lr_scale != 1.0:
                for group in opt.param_groups:
                    group["lr"] = group["lr"] / lr_scale
        return "step", loss, weight

    def _note_skip(self, reason: str) -> None:
        self.skipped_steps += 1
        self._consecutive_skips += 1
        step = self.trainer.global_step if self._trainer is not None else 0
        rank_zero_warn(
            f"Skipped a TBPTT chunk at global step {step}: its {reason} was NaN/inf (parameters untouched; "
            f"{self.skipped_steps} skipped so far)."
        )
        if self._consecutive_skips >= self.max_consecutive_skips:
            raise NonFiniteStepError(self._consecutive_skips, step, reason)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        trainer = self._trainer
        if trainer is not None:
            self._setup_fit(trainer)
            self._batch_first_step = trainer.global_step
        if batch_idx == 0:  # a new epoch: the carried state starts afresh
            self._carried_state, self._carried_rows = None, None
        local_length = batch_time_length(batch)
        bad_entry = self._nonfinite_entry(batch)
        length, any_bad = local_length, bad_entry is not None
        if self._distributed():  # agree on the padded length (hence the chunks) and on skipping the batch
            agreed = torch.tensor([local_length, int(any_bad)], device=self.device, dtype=torch.long)
            torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MAX)
            length, any_bad = int(agreed[0]), bool(agreed[1])
        if any_bad:
            where = f"in {bad_entry}" if bad_entry is not None else "on another rank"
            if self.nonfinite_inputs == "error":
                raise ValueError(
                    f"Expected finite values in training batch {batch_idx}, got NaN/inf {where}: clean the data, or "
                    f'pass nonfinite_inputs="skip" to {type(self).__name__} to skip such batches.'
                )
            self.skipped_steps += 1
            rank_zero_warn(f"Skipped training batch {batch_idx}: NaN/inf {where} (nonfinite_inputs='skip').")
            self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
            return torch.full((), float("nan"), device=self.device)

        rows = self._rows(batch)
        bounds = self._chunk_bounds(length)
        starts = window_starts(bounds, self.tbptt_backprop_steps)
        # positions where a detached state is needed later: chunk starts and window starts
        needed = set(starts) | {s for s, _ in bounds}
        saved: dict[int, Any] = {0: self._start_state(batch, self._carried_state, self._carried_rows)}
        optimizers = self._optimizers()
        k = self._tbptt_steps
        max_steps = trainer.max_steps if trainer is not None else -1
        losses: list[Tensor] = []
        weights: list[Tensor] = []
        stepped = stopped = False
        skipped_before = self.skipped_steps
        for j, ((start, end), w0) in enumerate(zip(bounds, starts)):
            state = saved[w0]
            cuts = sorted(p for p in needed if w0 < p < end) + [end]
            new_steps: list[TBPTTStep] = []
            new_lengths: list[int] = []
            pos = w0
            for cut in cuts:
                lo, hi = min(pos, local_length), min(cut, local_length)  # this rank's rows end at local_length
                if hi > lo:
                    step = self.tbptt_step(self.slice_batch(batch, lo, hi), state)
                    if pos >= start:
                        new_steps.append(step)
                        new_lengths.append(hi - lo)
                    state = step.state
                saved[cut] = detach_state(state)
                pos = cut
            scale = (end - start) / k if (self.variable_bptt and k) else 1.0
            outcome, loss, weight = self._optimizer_update(new_steps, new_lengths, optimizers, scale)

            if outcome.startswith("skip"):
                for p in list(saved):
                    saved[p] = self._reset_nonfinite_rows(saved[p], rows)
                self._note_skip(outcome.split(":", 1)[1])
            else:
                if loss is not None and weight is not None:
                    detached = loss.detach()
                    losses.append(detached)
                    weights.append(weight.detach().float())
                    if outcome == "step":
                        self.log("train/loss_chunk", detached, on_step=True, on_epoch=False)
                        for name, value in new_steps[-1].metrics.items():
                            self.log(f"train/{name}", value, on_step=True, on_epoch=False)
                if outcome == "step":
                    stepped = True
                    self._consecutive_skips = 0
                    if self._scheduler_unit == "optimizer_step" and trainer is not None:
                        self._step_schedulers("step", trainer.global_step)
                    if max_steps is not None and max_steps >= 0 and trainer.global_step >= max_steps:
                        stopped = True  # Trainer(max_steps) counts optimizer steps: stop inside the batch
                        break
            # drop saved states no later window needs
            future = min(starts[j + 1 :], default=end)
            for pos_saved in [p for p in saved if p < future]:
                del saved[pos_saved]

        if self.carry_state:
            self._carried_state = None if stopped else saved[length]
            self._carried_rows = rows
        if stepped and self._scheduler_unit == "batch":
            self._step_schedulers("step", batch_idx + 1)
        if self.skipped_steps != skipped_before or self.skipped_steps:
            self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
        if not losses:
            return torch.full((), float("nan"), device=self.device)
        w = torch.stack(weights)
        batch_loss = (torch.stack(losses) * w).sum() / w.sum().clamp(min=1e-12)
        self.log("train/loss", batch_loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=rows)
        return batch_loss

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, batch: Any, stage: str, batch_idx: int | None = None) -> tuple[Tensor, Tensor]:
        if batch_idx == 0:  # a new pass over a loader: the carried evaluation state starts afresh
            self._eval_state, self._eval_rows = None, None
        length = batch_time_length(batch)
        k = self.eval_tbptt_steps or self._tbptt_steps
        state = self._start_state(batch, self._eval_state, self._eval_rows)
        losses: list[Tensor] = []
        weights: list[Tensor] = []
        for start, end in chunk_bounds(length, k):
            chunk = self.slice_batch(batch, start, end)
            step = self.tbptt_step(chunk, state)
            state = detach_state(step.state)
            w = step.weight if step.weight is not None else end - start
            losses.append(step.loss.detach().float())
            weights.append(torch.as_tensor(w, dtype=torch.float32, device=step.loss.device))
            self.on_eval_chunk_end(stage, chunk, step)
        if self.carry_state:
            self._eval_state = state
            self._eval_rows = self._rows(batch)
        w = torch.stack(weights)
        return (torch.stack(losses) * w).sum() / w.sum().clamp(min=1e-12), w.sum()

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss, weight = self._evaluate(batch, "val", batch_idx)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=max(int(weight.item()), 1), sync_dist=True)
        return loss

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss, weight = self._evaluate(batch, "test", batch_idx)
        self.log("test/loss", loss, on_epoch=True, batch_size=max(int(weight.item()), 1), sync_dist=True)
        return loss

    # ------------------------------------------------------------------ predict
    def predict_chunk(self, chunk: Any, state: Any) -> tuple[Any, Any]:
        """One chunk of :meth:`predict_step`: ``(prediction, new state)``.

        Default: :meth:`tbptt_step`'s ``outputs`` and ``state``, so a subclass that returns its predictions in
        ``TBPTTStep.outputs`` predicts with no more code. The shipped modules override it (no targets needed).
        """
        step = self.tbptt_step(chunk, state)
        return step.outputs, step.state

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        """The batch run chunk by chunk as in evaluation (``eval_tbptt_steps``, else ``tbptt_steps``; the state
        carried across chunks, and across batches with ``carry_state``); returns the list of
        :meth:`predict_chunk` predictions, one per chunk. The shipped modules join them (see theirs)."""
        if batch_idx == 0:  # a new pass over a loader: the carried prediction state starts afresh
            self._eval_state, self._eval_rows = None, None
        state = self._start_state(batch, self._eval_state, self._eval_rows)
        predictions = []
        for start, end in chunk_bounds(batch_time_length(batch), self.eval_tbptt_steps or self._tbptt_steps):
            prediction, state = self.predict_chunk(self.slice_batch(batch, start, end), state)
            state = detach_state(state)
            predictions.append(prediction)
        if self.carry_state:
            self._eval_state, self._eval_rows = state, self._rows(batch)
        return predictions

    # ------------------------------------------------------------------ schedulers and step cadences
    def _step_schedulers(self, interval: str, index: int) -> None:
        trainer = self._trainer
        if trainer is None:
            return
        for config in trainer.lr_scheduler_configs:
            if config.interval != interval or index % config.frequency != 0:
                continue
            if config.reduce_on_plateau:
                value = trainer.callback_metrics.get(config.monitor)
                if value is None:
                    if config.strict:
                        raise ValueError(
                            f"Expected the metric {config.monitor!r} monitored by ReduceLROnPlateau to be logged, "
                            f"got only {sorted(trainer.callback_metrics)}"
                        )
                    continue
                config.scheduler.step(value)
            else:
                config.scheduler.step()

    def _save_crossed_step_checkpoints(self, trainer: Any) -> None:
        """``ModelCheckpoint(every_n_train_steps=n)`` saves when ``global_step % n == 0`` at a batch end; a TBPTT
        batch takes several steps, so save at the end of a batch that passed a multiple of n without ending on one.

        Uses ModelCheckpoint's private ``_every_n_train_steps``, ``_should_skip_saving_checkpoint``,
        ``_monitor_candidates``, ``_save_topk_checkpoint`` and ``_save_last_checkpoint``: Lightning has no public
        way to ask a checkpoint callback to save now with its own naming, top-k and ``last`` rules.
        """
        start, now = self._batch_first_step, trainer.global_step
        for cb in trainer.checkpoint_callbacks:
            n = getattr(cb, "_every_n_train_steps", 0)
            if not n or n < 1 or now % n == 0 or now // n == start // n:
                continue  # no multiple passed, or ModelCheckpoint saves by itself
            if cb._should_skip_saving_checkpoint(trainer):
                continue
            candidates = cb._monitor_candidates(trainer)
            if cb.monitor is not None and cb.monitor not in candidates:
                continue
            cb._save_topk_checkpoint(trainer, candidates)
            cb._save_last_checkpoint(trainer, candidates)

    # ------------------------------------------------------------------ checkpointing
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Saves the settings a callback may change (``tbptt_steps``), the chunk-length RNG and the recurrent
        state carried across batches (``carry_state=True``), all as plain data (tensors, ints, tuples)."""
        carried = detach_state(self._carried_state) if self._carried_state is not None else None
        checkpoint["lightning_rnn_tbptt"] = {
            "tbptt_steps": self._tbptt_steps,
            "bptt_rng": self._bptt_rng.getstate(),
            "bptt_rng_seeded": self._bptt_rng_seeded,
            "carried_state": carried,
            "carried_rows": self._carried_rows,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restores what :meth:`on_save_checkpoint` saved. The carried state is handed back just before the
        first training batch of a resumed ``fit`` (by :class:`~lightning_rnn.callbacks.ExactResume`); the
        process's RNG is never touched here (``load_from_checkpoint`` must not reseed the caller)."""
        saved = checkpoint.get("lightning_rnn_tbptt")
        if not saved:
            return
        if saved.get("tbptt_steps", self._tbptt_steps) is not None:
            self._tbptt_steps = saved.get("tbptt_steps", self._tbptt_steps)
        if "bptt_rng" in saved:
            version, internal, gauss = saved["bptt_rng"]
            self._bptt_rng.setstate((version, tuple(internal), gauss))
            self._bptt_rng_seeded = saved.get("bptt_rng_seeded", True)
        self._resumed_carry = (saved.get("carried_state"), saved.get("carried_rows"))

    def _restore_resumed_state(self, mid_epoch: bool) -> None:
        """Put the carried state of the checkpoint back (called at the first batch of a resumed fit; a run
        resumed at an epoch start starts from a fresh state, as the uninterrupted run did)."""
        carried, rows = getattr(self, "_resumed_carry", (None, None))
        self._resumed_carry = (None, None)
        if carried is not None and self.carry_state and mid_epoch:
            self._carried_state = map_state(lambda t: t.to(self.device), carried)
            self._carried_rows = rows

    # ------------------------------------------------------------------ gradient-flow probe (default)
    def gradient_flow_probe(self, batch: Any, max_steps: int | None = None) -> tuple[list[Any], Tensor]:
        """Per-step states and losses for the gradient-flow callbacks, derived from :meth:`tbptt_step`.

        Runs ``tbptt_step`` one time step at a time (``slice_batch(batch, t, t + 1)``) from
        ``initial_state(batch)`` over the first ``max_steps`` steps (None: the whole batch), keeping the
        state in the autograd graph from step to step, so each step's loss hangs off the states before it.
        Inside, one-step outputs of unidirectional ``RNNStack`` / ``torch.nn.RNN/LSTM/GRU`` layers are the
        very tensors of their new state (:func:`~lightning_rnn.functional.gradient_flow.unrolled_recurrence`),
        so the loss at t reads the state after step t as well, and torchmetrics metrics are not updated. Any
        state structure works (tensor, tuple, dict). :func:`~lightning_rnn.functional.measure_gradient_flow`
        calls it in training mode with dropout off.

        Override it with a faster probe when the model can unroll itself (``RNNLanguageModel`` does); see
        :class:`~lightning_rnn.functional.gradient_flow.SupportsGradientFlowProbe`.

        Outputs:
            step_states: list of L states, ``step_states[t]`` the state after step t (graph attached).
            step_losses: ``(L,)`` each step's ``loss * weight`` (the loss summed over its targets, when
            ``TBPTTStep.weight`` counts them), NaN at steps without a target (weight 0).
        """
        from torchmetrics import Metric

        from lightning_rnn.functional.gradient_flow import unrolled_recurrence

        length = batch_time_length(batch)
        steps = length if max_steps is None else min(int(max_steps), length)
        metrics = [m for m in self.modules() if isinstance(m, Metric)]
        updates = [(m, m.__dict__.get("update")) for m in metrics]
        state = self.initial_state(batch)
        step_states: list[Any] = []
        losses: list[Tensor] = []
        try:
            for m in metrics:  # the probe's steps are not training steps: keep metric states as they are
                m.__dict__["update"] = lambda *args, **kwargs: None
            with unrolled_recurrence(self):
                for t in range(steps):
                    step = self.tbptt_step(self.slice_batch(batch, t, t + 1), state)
                    weight = torch.as_tensor(1.0 if step.weight is None else step.weight, device=step.loss.device)
                    loss = step.loss.float() * weight.float()
                    losses.append(torch.where(weight > 0, loss, torch.full_like(loss, float("nan"))))
                    state = step.state
                    step_states.append(state)
        finally:
            for m, update in updates:
                if update is None:
                    m.__dict__.pop("update", None)
                else:
                    m.__dict__["update"] = update
        return step_states, torch.stack(losses)
