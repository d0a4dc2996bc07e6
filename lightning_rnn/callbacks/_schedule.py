"""When a periodic callback fires, and at which step it logs (shared by the monitoring callbacks)."""

from __future__ import annotations

from lightning.pytorch import Trainer


def logger_step(trainer: Trainer) -> int:
    """The step Lightning itself logs training metrics at (what ``LearningRateMonitor`` uses)."""
    return int(getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step))


def next_bucket(global_step: int, every_n_steps: int, last_bucket: int | None) -> int | None:
    """The new bucket ``global_step // every_n_steps`` if it was not handled yet, else ``None``.

    A TBPTT module makes several optimizer steps per batch, so ``global_step`` can jump over an exact
    multiple of ``every_n_steps``; firing when the bucket changes (and at the first call) never misses one.

    Example::

        >>> next_bucket(7, 5, None), next_bucket(9, 5, 1), next_bucket(10, 5, 1)
        (1, None, 2)
    """
    bucket = global_step // every_n_steps
    if last_bucket is not None and bucket <= last_bucket:
        return None
    return bucket
