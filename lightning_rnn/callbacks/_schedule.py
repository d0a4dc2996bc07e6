"""When a periodic callback fires, and at which step it logs (shared by the monitoring callbacks)."""

from __future__ import annotations

from lightning.pytorch import Trainer


def logger_step(trainer: Trainer) -> int:
    """The step Lightning itself writes training metrics at, for callbacks that call ``logger.log_metrics``.

    Metrics logged through ``pl_module.log`` / ``log_dict`` need none of this (Lightning picks the step and
    which steps reach the loggers): prefer them. Writing to the loggers directly (images, tables, metrics
    measured on another schedule) needs the step of Lightning's own rows, which no public property exposes:
    this reads the private ``fit_loop.epoch_loop._batches_that_stepped`` (batches with an optimizer step; under
    TBPTT a batch holds several optimizer steps, so ``trainer.global_step`` is another axis), as Lightning's
    own ``LearningRateMonitor`` and ``DeviceStatsMonitor`` do. Tested with Lightning 2.6; if a version renames
    it, ``trainer.global_step`` is used.
    """
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
