"""TokensPerSecond: training throughput (tokens or time steps per second) in the progress bar and the logs."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from lightning_rnn._validation import check_bool, check_int

__all__ = ["TokensPerSecond"]


def _count_tokens(batch: Any) -> int:
    """N * L of the batch's first tensor with >= 2 dims (inputs of a ``(inputs, targets)`` or dict batch)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0] * batch.shape[1]) if batch.dim() >= 2 else int(batch.numel())
    if isinstance(batch, Mapping):
        items = [batch[k] for k in ("inputs", "input_ids", "src", "x") if k in batch] or list(batch.values())
    elif isinstance(batch, list | tuple):
        items = list(batch)
    else:
        return 0
    for item in items:
        n = _count_tokens(item)
        if n:
            return n
    return 0


class TokensPerSecond(Callback):
    """Logs ``throughput/tokens_per_sec``: N·L of every training batch over the wall time between batches.

    "Tokens" are the time steps of the batch's input tensor (N rows × L steps), i.e. characters for a
    character LM. The value is the mean over the last ``window`` batches, shown in the progress bar
    (``prog_bar=True``) and sent to the loggers every ``Trainer(log_every_n_steps)``. Validation time is
    excluded: the clock runs from ``on_train_batch_start`` to ``on_train_batch_end`` (forward, backward and
    optimizer steps of the batch; data loading is not counted).

    Args:
        window: number of recent batches averaged, ``>= 1``.
        prog_bar: show it in the progress bar.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_rnn.callbacks import TokensPerSecond
        >>> trainer = Trainer(callbacks=[TokensPerSecond(window=20)], logger=False)
    """

    def __init__(self, window: int = 20, prog_bar: bool = True) -> None:
        check_int("window", window, min=1)
        self.window = window
        self.prog_bar = check_bool("prog_bar", prog_bar)
        self._times: deque[tuple[float, int]] = deque(maxlen=window)
        self._start: float | None = None

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._start is None:
            return
        tokens = _count_tokens(batch) * max(1, trainer.world_size)
        self._times.append((time.perf_counter() - self._start, tokens))
        seconds = sum(t for t, _ in self._times)
        if seconds > 0:
            rate = sum(n for _, n in self._times) / seconds
            pl_module.log("throughput/tokens_per_sec", rate, prog_bar=self.prog_bar, on_step=True, on_epoch=False,
                          rank_zero_only=True)

