"""NTASGD: non-monotonically triggered averaged SGD (Merity, Keskar & Socher 2017) as a Lightning callback."""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from typing_extensions import override

from lightning_rnn._validation import check_int

__all__ = ["NTASGD"]

_MODES = ("min", "max")


class _Parameters(nn.Module):
    """The parameters of a module, and nothing else (what :class:`AveragedModel` copies and averages)."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        super().__init__()
        self.params = nn.ParameterList(params)


class NTASGD(Callback):
    r"""Train with SGD, then average the iterates once validation stops improving (NT-ASGD).

    Merity et al. 2017 (AWD-LSTM), section 3: at every evaluation the validation metric ``v_t`` is compared
    with the best of the evaluations *before the last* ``n``: the averaging is triggered when ``t > n`` and
    ``v_t`` is worse than ``best(v_0 .. v_{t-n-1})`` (non-monotone: ``n`` later evaluations may be worse
    before it triggers), exactly as the reference code's ``len(history) > nonmono and val_loss >
    min(history[:-nonmono])``. From then on the optimizer keeps taking its ordinary steps (the reference code
    switches to ``torch.optim.ASGD(t0=0, lambd=0)``, whose steps are plain SGD steps) and the callback keeps
    the running mean of the iterates in a :class:`torch.optim.swa_utils.AveragedModel` (equal weights: after
    ``m`` steps the average is the mean of the ``m`` parameter vectors those steps produced).

    **Where the average is updated.** A :class:`~lightning_rnn.TBPTTModule` takes one optimizer step per
    TBPTT chunk (several per batch, manual optimization), and no Lightning hook fires *after* an optimizer
    step; the callback therefore registers torch's ``optimizer.register_step_post_hook`` on the module's
    optimizer, so the average is updated after every ``optimizer.step()`` (every chunk), like ``torch.optim.ASGD``.
    A step skipped by AMP's gradient scaler calls no ``step()`` and adds nothing.

    **What uses the averaged weights** (once at least one step has been averaged): validation during ``fit``
    (the weights are swapped in at validation start and swapped back at its end, so the metric that
    ``ModelCheckpoint`` and this callback see is the averaged model's), every checkpoint's ``state_dict`` (so
    ``Module.load_from_checkpoint`` gives the averaged model), and the module itself after ``fit`` ends (as
    Lightning's ``StochasticWeightAveraging`` does), so a following ``trainer.test`` uses them. The training
    iterate, the average (with its count), the history of the metric and the switch are in the callback's
    ``state_dict`` (in the checkpoint): ``fit(ckpt_path=...)`` resumes training from the training iterate with
    the average intact.

    **Logged**: ``nt_asgd/switch_step`` (the ``global_step`` at the switch, logged once at that step through
    the Trainer's loggers), and an info line. ``switch_step`` is also an attribute (``None`` before).

    **Distributed**: the decision is taken on rank 0 and broadcast, so every rank switches at the same
    evaluation even when the monitored metric is not synchronised; each rank then averages its own (identical)
    parameters.

    Args:
        n: the non-monotone interval (the reference code's ``nonmono``, default 5), >= 1.
        monitor: the validation metric (default ``"val/loss"``).
        mode: ``"min"`` or ``"max"``: whether smaller or larger ``monitor`` is better.

    Raises:
        ValueError: bad arguments; at setup: a second ``NTASGD``, ``ModelCheckpoint(save_weights_only=True)``
            (Lightning skips the hook that writes the averaged weights into such checkpoints), an FSDP or
            DeepSpeed strategy (sharded parameters), or a module with other than one optimizer; at a
            validation end: ``monitor`` was not logged.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_rnn import RNNConfig, RNNLanguageModel
        >>> from lightning_rnn.callbacks import NTASGD
        >>> model = RNNLanguageModel(100, 32, RNNConfig(hidden_size=32), tbptt_steps=35, optimizer="sgd", lr=30, gradient_clip_val=0.25)
        >>> trainer = Trainer(callbacks=[NTASGD(n=5)], logger=False)
    """

    def __init__(self, n: int = 5, monitor: str = "val/loss", mode: str = "min") -> None:
        super().__init__()
        check_int("n", n, min=1)
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"Expected monitor to be a metric name, got {monitor!r}")
        if mode not in _MODES:
            raise ValueError(f"Expected mode in {_MODES}, got {mode!r}")
        self.n = n
        self.monitor = monitor
        self.mode = mode
        self.history: list[float] = []
        self.switch_step: int | None = None
        self._module: LightningModule | None = None
        self._holder: _Parameters | None = None
        self._average: AveragedModel | None = None
        self._hook: Any = None
        self._backup: list[Tensor] | None = None  # training weights while the averaged ones are swapped in
        self._pending: dict[str, Any] | None = None

    @property
    def switched(self) -> bool:
        """Whether averaging has started."""
        return self.switch_step is not None

    @property
    def n_averaged(self) -> int:
        """How many iterates the average holds (0 before the switch and right after it)."""
        return 0 if self._average is None else int(self._average.n_averaged)

    def averaged_parameters(self) -> list[Tensor]:
        """The averaged tensors, in ``pl_module.parameters()`` order (empty before the switch)."""
        return [] if self._average is None else [p.detach() for p in self._average.module.parameters()]

    # ------------------------------------------------------------------ setup
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if sum(isinstance(cb, NTASGD) for cb in trainer.callbacks) > 1:
            raise ValueError("Expected one NTASGD callback per Trainer, got several: keep one.")
        for cb in trainer.callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.save_weights_only:
                raise ValueError(
                    "Expected ModelCheckpoint(save_weights_only=False) with NTASGD, got save_weights_only=True: "
                    "Lightning skips the callback hook that writes the averaged weights into such checkpoints."
                )
        name = type(trainer.strategy).__name__
        if "FSDP" in name or "DeepSpeed" in name:
            raise ValueError(f"Expected a strategy with whole parameters on every rank for NTASGD, got {name}.")
        self._module = pl_module

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        optimizers = trainer.optimizers
        if len(optimizers) != 1:
            raise ValueError(f"Expected one optimizer with NTASGD, got {len(optimizers)}.")
        if not isinstance(optimizers[0], torch.optim.SGD):
            rank_zero_warn(
                f"NTASGD averages the iterates of {type(optimizers[0]).__name__}; NT-ASGD (Merity et al.) is "
                "defined for plain SGD (e.g. RNNLanguageModel(optimizer='sgd'))."
            )
        self._apply_pending(pl_module)
        self._hook = optimizers[0].register_step_post_hook(self._after_step)

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._apply_pending(pl_module)  # strategies that restore checkpoints after on_fit_start

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.n_averaged > 0:
            self._copy_into(pl_module, self.averaged_parameters())
            rank_zero_info(f"NTASGD: the module now holds the average of {self.n_averaged} iterates.")

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._backup is not None:  # an exception during validation: put the training weights back
            self._copy_into(pl_module, self._backup)
            self._backup = None

    # ------------------------------------------------------------------ averaging
    def _params(self, pl_module: LightningModule) -> list[nn.Parameter]:
        return list(pl_module.parameters())

    def _start_average(self, pl_module: LightningModule) -> None:
        self._holder = _Parameters(self._params(pl_module))
        self._average = AveragedModel(self._holder, use_buffers=False)

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._average is not None and self._holder is not None:
            self._average.update_parameters(self._holder)

    @staticmethod
    @torch.no_grad()
    def _copy_into(pl_module: LightningModule, values: list[Tensor]) -> None:
        for p, v in zip(pl_module.parameters(), values, strict=True):
            p.copy_(v)

    # ------------------------------------------------------------------ validation
    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn != "fit":
            return
        self._apply_pending(pl_module)
        if self.n_averaged > 0 and self._backup is None:
            self._backup = [p.detach().clone() for p in pl_module.parameters()]
            self._copy_into(pl_module, self.averaged_parameters())

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn != "fit":
            return
        if self._backup is not None:
            self._copy_into(pl_module, self._backup)
            self._backup = None
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise ValueError(
                f"Expected the metric {self.monitor!r} monitored by NTASGD to be logged in validation, got only "
                f"{sorted(trainer.callback_metrics)}"
            )
        current = float(value)
        switch = not self.switched and self._triggered(current)
        switch = bool(trainer.strategy.broadcast(switch, src=0))
        self.history.append(current)
        if switch:
            self.switch_step = int(trainer.global_step)
            self._start_average(pl_module)
            for logger in trainer.loggers:
                logger.log_metrics({"nt_asgd/switch_step": float(self.switch_step)}, step=self.switch_step)
            rank_zero_info(
                f"NTASGD: {self.monitor} = {current:.4f} is worse than the best before the last {self.n} "
                f"evaluations ({self._best(self.history[: -self.n - 1]):.4f}): averaging from step {self.switch_step}."
            )

    def _best(self, values: list[float]) -> float:
        return min(values) if self.mode == "min" else max(values)

    def _triggered(self, current: float) -> bool:
        """The reference rule: ``len(history) > n and current worse than best(history[:-n])``."""
        if len(self.history) <= self.n or math.isnan(current):
            return False
        best = self._best(self.history[: -self.n])
        return current > best if self.mode == "min" else current < best

    # ------------------------------------------------------------------ checkpoints
    @override
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.n_averaged == 0 or "state_dict" not in checkpoint:
            return
        averaged = {id(p): a for p, a in zip(pl_module.parameters(), self.averaged_parameters(), strict=True)}
        state = checkpoint["state_dict"]
        for name, p in pl_module.named_parameters(remove_duplicate=False):
            if name in state and id(p) in averaged:
                state[name] = averaged[id(p)].clone().to(state[name].dtype)

    @override
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "n": self.n,
            "monitor": self.monitor,
            "mode": self.mode,
            "history": list(self.history),
            "switch_step": self.switch_step,
            "average": None,
            "training_weights": None,
        }
        if self._average is not None and self._module is not None:
            state["average"] = {k: v.detach().clone() for k, v in self._average.state_dict().items()}
            current = self._backup or [p.detach() for p in self._module.parameters()]
            state["training_weights"] = [t.clone() for t in current]
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [float(v) for v in state_dict.get("history", [])]
        self.switch_step = state_dict.get("switch_step")
        self._pending = state_dict

    def _apply_pending(self, pl_module: LightningModule) -> None:
        """Rebuild the average and put the training iterate back into the module after a checkpoint load."""
        state, self._pending = self._pending, None
        if state is None:
            return
        self._module = pl_module
        self._average = self._holder = None
        if state.get("average") is not None:
            self._start_average(pl_module)
            if self._average is None:  # _start_average always builds it; a subclass override might not
                raise RuntimeError("Expected NTASGD._start_average to build the averaged model, got None")
            self._average.load_state_dict(state["average"])
        if state.get("training_weights") is not None:
            self._copy_into(pl_module, state["training_weights"])
