"""TBPTTModule: truncated backpropagation through time built into a LightningModule.

Lightning 2.0 removed ``truncated_bptt_steps``; its documented replacement is manual optimization inside
``training_step``. This base class is that loop, written once: a subclass says how one chunk is processed
(:meth:`TBPTTModule.tbptt_step`), the base splits every batch along time, carries and detaches the
recurrent state, takes one optimizer step per chunk, steps the LR schedulers, clips, logs, and evaluates
arbitrarily long sequences in bounded memory.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from lightning_rnn.functional.tbptt import (
    _tensors,
    batch_time_length,
    chunk_bounds,
    slice_batch,
    variable_chunk_bounds,
    window_starts,
)
from lightning_rnn.nn.state import detach_state, reset_state_rows

__all__ = ["TBPTTModule", "TBPTTStep"]

_CLIP_ALGORITHMS = ("norm", "value")


@dataclass
class TBPTTStep:
    """What :meth:`TBPTTModule.tbptt_step` returns for one chunk.

    Attributes:
        loss: scalar mean loss over the targets the chunk counts.
        state: the recurrent state after the chunk, with its graph attached (the base detaches it).
        weight: how many targets ``loss`` averages over (tokens, unmasked steps, rows); used to combine
            chunks into a batch mean and to weight the epoch mean. ``None`` means the chunk's time length.
        outputs: anything the subclass wants back in :meth:`TBPTTModule.on_eval_chunk_end` (e.g. logits).
        metrics: extra scalars to log for this chunk (``train/<name>`` in training).
    """

    loss: Tensor
    state: Any
    weight: float | Tensor | None = None
    outputs: Any = None
    metrics: dict[str, Tensor | float] = field(default_factory=dict)


def _check_steps(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"Expected {name} to be a positive int or None, got {value!r}")


class TBPTTModule(LightningModule):
    """Base LightningModule with truncated backpropagation through time built in.

    Subclass it and implement :meth:`tbptt_step` (chunk + carried state -> loss, new state); optionally
    :meth:`initial_state`. The base uses manual optimization: every training batch whose tensors have a time
    dimension ``(N, L, ...)`` is split along time into chunks of ``tbptt_steps`` (the last may be shorter), the
    state is carried from chunk to chunk and detached at every boundary, and there is **one optimizer step per
    chunk** — so ``trainer.global_step`` counts chunks, not batches.

    Args:
        tbptt_steps: k1, the chunk length. ``None``: no split (the whole batch is one chunk).
        tbptt_backprop_steps: k2 >= k1 (Sutskever 2013's TBPTT(k1, k2)). Each update advances k1 steps but
            backpropagates k2 steps, restarting from the saved, detached state k2 - k1 steps back; the loss
            counts only the k1 new steps. Windows never reach back across the start of a batch. Default k1.
        carry_state: carry the state across consecutive batches too (text streams such as
            :class:`~lightning_rnn.data.TextStreamDataModule`): reset at the start of every epoch, reset row by
            row where a dict batch's ``"reset"`` entry (bool ``(N,)``) is True, and reset whenever the batch
            size changes. Evaluation carries its own state the same way.
        variable_bptt: AWD-LSTM's variable-length BPTT: chunk lengths drawn around ``tbptt_steps`` (normal
            with sd ``variable_bptt_std``, ``tbptt_steps / 2`` with probability 0.05, at least
            ``variable_bptt_min``), learning rate scaled by ``length / tbptt_steps`` for that step and restored
            after. Needs ``tbptt_steps``.
        gradient_clip_val: fixed clipping applied per chunk in :meth:`on_before_optimizer_step`, i.e. after AMP
            unscaling and after DDP's all-reduce (Lightning #18089). ``Trainer(gradient_clip_val=...)`` is moved
            here with an info message, because Lightning cannot clip under manual optimization.
        gradient_clip_algorithm: ``"norm"`` or ``"value"``.
        eval_tbptt_steps: chunk length for validation/test/predict (no backward). ``None``: ``tbptt_steps``.

    Subclass API:
        - ``tbptt_step(chunk, state) -> TBPTTStep`` (required)
        - ``initial_state(batch) -> state`` (default ``None``: the network starts from zeros)
        - ``slice_batch(batch, start, end)`` (default: tensors of 2+ dims sliced at dim 1, 1-D tensors passed
          through, a dict ``"lengths"`` entry clipped to the slice)
        - ``on_eval_chunk_end(stage, chunk, step)`` to update evaluation metrics over whole sequences.
        If you override ``on_before_optimizer_step``, ``on_train_epoch_start`` or ``configure_callbacks``, call
        ``super()``.

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
        ...         out, state = self.rnn(x, state)   # (N, L, 8)
        ...         return TBPTTStep(nn.functional.mse_loss(self.head(out), y), state)
        ...     def configure_optimizers(self):
        ...         return torch.optim.Adam(self.parameters(), 1e-2)
        >>> model = Regressor()
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
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        _check_steps("tbptt_steps", tbptt_steps)
        _check_steps("tbptt_backprop_steps", tbptt_backprop_steps)
        _check_steps("eval_tbptt_steps", eval_tbptt_steps)
        self._tbptt_steps = tbptt_steps
        self.tbptt_backprop_steps = tbptt_backprop_steps  # validated by the setter
        if variable_bptt and tbptt_steps is None:
            raise ValueError("Expected tbptt_steps to be set when variable_bptt=True, got tbptt_steps=None")
        if variable_bptt_std < 0:
            raise ValueError(f"Expected variable_bptt_std >= 0, got {variable_bptt_std}")
        if variable_bptt_min < 1:
            raise ValueError(f"Expected variable_bptt_min >= 1, got {variable_bptt_min}")
        if gradient_clip_val is not None and not gradient_clip_val > 0:
            raise ValueError(f"Expected gradient_clip_val > 0 or None, got {gradient_clip_val}")
        if gradient_clip_algorithm not in _CLIP_ALGORITHMS:
            raise ValueError(
                f"Expected gradient_clip_algorithm in {_CLIP_ALGORITHMS}, got {gradient_clip_algorithm!r}"
            )
        self.carry_state = carry_state
        self.variable_bptt = variable_bptt
        self.variable_bptt_std = variable_bptt_std
        self.variable_bptt_min = variable_bptt_min
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm
        self.eval_tbptt_steps = eval_tbptt_steps
        self._carried_state: Any = None
        self._carried_rows: int | None = None
        self._eval_state: Any = None
        self._eval_rows: int | None = None
        self._bptt_rng = random.Random(0)
        self._bptt_rng_seeded = False

    # ------------------------------------------------------------------ options
    @property
    def tbptt_steps(self) -> int | None:
        """k1, the chunk length (settable, e.g. by :class:`~lightning_rnn.callbacks.AdaptiveTBPTT`)."""
        return self._tbptt_steps

    @tbptt_steps.setter
    def tbptt_steps(self, value: int | None) -> None:
        _check_steps("tbptt_steps", value)
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
        _check_steps("tbptt_backprop_steps", value)
        if value is not None and self._tbptt_steps is None:
            raise ValueError(f"Expected tbptt_steps to be set when tbptt_backprop_steps={value}, got None")
        if value is not None and value < self._tbptt_steps:  # type: ignore[operator]
            raise ValueError(
                f"Expected tbptt_backprop_steps >= tbptt_steps ({self._tbptt_steps}), got {value}"
            )
        self._tbptt_backprop_steps = value

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
            return reset_state_rows(carried, mask.to(self.device))
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

    # ------------------------------------------------------------------ Lightning hooks
    def configure_callbacks(self) -> Any:  # runs before Lightning's manual-optimization checks
        trainer = self._trainer
        if trainer is not None and trainer.state.fn == "fit":
            clip = trainer.gradient_clip_val
            if clip is not None and clip > 0:
                if self.gradient_clip_val is not None:
                    raise ValueError(
                        f"Expected gradient clipping to be set once, got Trainer(gradient_clip_val={clip}) and "
                        f"{type(self).__name__}(gradient_clip_val={self.gradient_clip_val}). TBPTT modules clip "
                        "per chunk themselves: remove the Trainer option."
                    )
                self.gradient_clip_val = float(clip)
                self.gradient_clip_algorithm = trainer.gradient_clip_algorithm or "norm"
                trainer.gradient_clip_val = None
                rank_zero_info(
                    f"{type(self).__name__} uses manual optimization (one optimizer step per TBPTT chunk): "
                    f"Trainer(gradient_clip_val={clip}) is applied per chunk as the module's "
                    f"gradient_clip_val={clip} (algorithm {self.gradient_clip_algorithm!r})."
                )
            if trainer.accumulate_grad_batches != 1:
                raise ValueError(
                    f"Expected Trainer(accumulate_grad_batches=1) with {type(self).__name__}, got "
                    f"{trainer.accumulate_grad_batches}: a TBPTT module takes one optimizer step per chunk "
                    "(manual optimization). Use a larger batch size or a larger tbptt_steps instead."
                )
        return []

    def on_fit_start(self) -> None:
        seed = int(torch.initial_seed() % (2**31))
        if self.trainer.world_size > 1:  # chunk lengths must agree across ranks or DDP hangs
            seed = int(self.trainer.strategy.broadcast(seed, src=0))
        if not self._bptt_rng_seeded:
            self._bptt_rng.seed(seed)
            self._bptt_rng_seeded = True

    def on_train_epoch_start(self) -> None:
        self._carried_state = None
        self._carried_rows = None

    def on_validation_epoch_start(self) -> None:
        self._eval_state = None
        self._eval_rows = None

    on_test_epoch_start = on_validation_epoch_start
    on_predict_epoch_start = on_validation_epoch_start

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        length = batch_time_length(batch)
        bounds = self._chunk_bounds(length)
        starts = window_starts(bounds, self.tbptt_backprop_steps)
        # positions where a detached state is needed later: chunk starts and window starts
        needed = set(starts) | {s for s, _ in bounds}
        saved: dict[int, Any] = {0: self._start_state(batch, self._carried_state, self._carried_rows)}
        optimizers = self._optimizers()
        k = self._tbptt_steps
        losses: list[Tensor] = []
        weights: list[Tensor] = []
        for j, ((start, end), w0) in enumerate(zip(bounds, starts)):
            state = saved[w0]
            cuts = sorted(p for p in needed if w0 < p < end) + [end]
            new_steps: list[TBPTTStep] = []
            new_lengths: list[int] = []
            pos = w0
            for cut in cuts:
                step = self.tbptt_step(self.slice_batch(batch, pos, cut), state)
                if pos >= start:
                    new_steps.append(step)
                    new_lengths.append(cut - pos)
                state = step.state
                saved[cut] = detach_state(state)
                pos = cut
            loss, weight = self._combine(new_steps, new_lengths)

            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            scale = (end - start) / k if (self.variable_bptt and k) else 1.0
            for opt in optimizers:
                if scale != 1.0:
                    for group in opt.param_groups:
                        group["lr"] = group["lr"] * scale
                opt.step()
                if scale != 1.0:
                    for group in opt.param_groups:
                        group["lr"] = group["lr"] / scale
            self._step_schedulers("step")

            detached = loss.detach()
            losses.append(detached)
            weights.append(weight.detach().float())
            self.log("train/loss_chunk", detached, on_step=True, on_epoch=False)
            for name, value in new_steps[-1].metrics.items():
                self.log(f"train/{name}", value, on_step=True, on_epoch=False)
            # drop saved states no later window needs
            future = min(starts[j + 1 :], default=end)
            for pos_saved in [p for p in saved if p < future]:
                del saved[pos_saved]

        if self.carry_state:
            self._carried_state = saved[length]
            self._carried_rows = self._rows(batch)
        w = torch.stack(weights)
        batch_loss = (torch.stack(losses) * w).sum() / w.sum().clamp(min=1e-12)
        self.log("train/loss", batch_loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=self._rows(batch))
        return batch_loss

    def _evaluate(self, batch: Any, stage: str) -> tuple[Tensor, Tensor]:
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
        loss, weight = self._evaluate(batch, "val")
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=max(int(weight.item()), 1), sync_dist=True)
        return loss

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss, weight = self._evaluate(batch, "test")
        self.log("test/loss", loss, on_epoch=True, batch_size=max(int(weight.item()), 1), sync_dist=True)
        return loss

    # ------------------------------------------------------------------ schedulers and clipping
    def _step_schedulers(self, interval: str) -> None:
        trainer = self._trainer
        if trainer is None:
            return
        for config in trainer.lr_scheduler_configs:
            if config.interval != interval:
                continue
            index = trainer.global_step if interval == "step" else trainer.current_epoch + 1
            if index % config.frequency != 0:
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

    def on_train_epoch_end(self) -> None:
        self._step_schedulers("epoch")

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        # Runs inside optimizer.step(): after AMP's unscale_ and DDP's all-reduce, after callbacks' hooks.
        if self.gradient_clip_val is not None:
            self.clip_gradients(
                optimizer,
                gradient_clip_val=self.gradient_clip_val,
                gradient_clip_algorithm=self.gradient_clip_algorithm,
            )

    # ------------------------------------------------------------------ checkpointing
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lightning_rnn_tbptt"] = {
            "tbptt_steps": self._tbptt_steps,
            "bptt_rng": self._bptt_rng.getstate(),
            "torch_rng": torch.get_rng_state(),
            "bptt_rng_seeded": self._bptt_rng_seeded,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("lightning_rnn_tbptt")
        if not saved:
            return
        if saved.get("tbptt_steps", self._tbptt_steps) is not None:
            self._tbptt_steps = saved.get("tbptt_steps", self._tbptt_steps)
        if "bptt_rng" in saved:
            self._bptt_rng.setstate(saved["bptt_rng"])
            self._bptt_rng_seeded = saved.get("bptt_rng_seeded", True)
        if "torch_rng" in saved:
            torch.set_rng_state(saved["torch_rng"])

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
