"""LastCheckpoint: ``last.ckpt`` every N optimizer steps, on an exception or Ctrl-C, and at the end of fit."""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_rnn._validation import check_int

__all__ = ["LastCheckpoint"]


class LastCheckpoint(ModelCheckpoint):
    """Keeps one resumable checkpoint, ``<dirpath>/<filename>.ckpt`` (``last.ckpt``), fresh.

    Written at the end of the first batch at which ``trainer.global_step`` reaches a new multiple of
    ``every_n_steps`` (under TBPTT a batch takes several optimizer steps, so Lightning's
    ``ModelCheckpoint(every_n_train_steps=N)``, which needs ``global_step % N == 0`` at a batch end, can skip
    saves), when ``fit`` stops on an exception or Ctrl-C (``KeyboardInterrupt``), and when ``fit`` ends.
    Resume with ``trainer.fit(..., ckpt_path="<dirpath>/last.ckpt")`` (or ``ckpt_path="last"``).

    Unlike Lightning's ``OnExceptionCheckpoint``, the file is not deleted when the run ends normally, and
    its presence does not turn every later ``fit`` into a resume. A kill (``SIGKILL``) loses at most
    ``every_n_steps`` steps; saves are atomic with :class:`~lightning_rnn.checkpoint_io.SafeCheckpointIO`.

    Args:
        dirpath: directory of the checkpoint (default: Lightning's, ``<log_dir>/checkpoints``).
        every_n_steps: optimizer steps between saves (>= 1).
        filename: file name without ``.ckpt``.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[LastCheckpoint("runs/checkpoints", every_n_steps=100)], logger=False)
    """

    def __init__(self, dirpath: str | os.PathLike[str] | None = None, every_n_steps: int = 100,
                 filename: str = "last") -> None:
        check_int("every_n_steps", every_n_steps, min=1)
        if dirpath is not None and not isinstance(dirpath, str | os.PathLike):
            raise ValueError(f"Expected dirpath to be a path (str or os.PathLike) or None, got {dirpath!r}")
        if not filename:
            raise ValueError(f"Expected a non-empty filename, got {filename!r}")
        super().__init__(dirpath=dirpath, filename=filename, save_top_k=0, every_n_epochs=0,
                         save_on_train_epoch_end=False)
        self.every_n_steps = every_n_steps
        self._saved_block = 0

    @property
    @override
    def state_key(self) -> str:
        key = {"dirpath": self.dirpath, "filename": self.filename, "every_n_steps": self.every_n_steps}
        return f"{type(self).__qualname__}{key!r}"  # the format of Lightning's own callbacks

    def _path(self) -> str:
        return os.path.join(str(self.dirpath), f"{self.filename}{self.FILE_EXTENSION}")

    def _save(self, trainer: Trainer) -> None:
        if self.dirpath is None or trainer.sanity_checking:
            return
        path = self._path()
        trainer.save_checkpoint(path, self.save_weights_only)
        self.last_model_path = path

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._saved_block = trainer.global_step // self.every_n_steps

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        block = trainer.global_step // self.every_n_steps
        if block > self._saved_block:
            self._saved_block = block
            self._save(trainer)

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Nothing: this callback saves by step count only."""

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Nothing: this callback saves by step count only."""

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._save(trainer)

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if trainer.state.fn != "fit" or trainer.global_step == 0:  # nothing trained yet: nothing to keep
            return
        try:
            self._save(trainer)
        except Exception as err:  # never hide the exception that stopped the run
            rank_zero_warn(f"{type(self).__name__} could not save {self._path()} after {type(exception).__name__}: "
                           f"{err}")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"dirpath": self.dirpath, "every_n_steps": self.every_n_steps, "last_model_path": self.last_model_path}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_model_path = state_dict.get("last_model_path", self.last_model_path)
