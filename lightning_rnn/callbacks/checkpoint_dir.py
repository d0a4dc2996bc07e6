"""CheckpointDirCheck: a read-only or full checkpoint directory is an error before the first training step."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override

__all__ = ["CheckpointDirCheck", "check_checkpoint_dir"]


def check_checkpoint_dir(dirpath: str | os.PathLike[str], needed_bytes: int = 0) -> None:
    """Raise ``OSError`` (one line naming the directory) unless ``dirpath`` can be created, written and has
    ``needed_bytes`` free.

    Example::

        >>> check_checkpoint_dir(tempfile.mkdtemp())
        >>> check_checkpoint_dir(tempfile.mkdtemp(), needed_bytes=1 << 62)
        Traceback (most recent call last):
        ...
        OSError: Expected ... free for a checkpoint in ..., got ...
    """
    path = Path(dirpath)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise OSError(f"Expected a writable checkpoint directory, got {os.fspath(path)!r} ({err.strerror or err}): "
                      "choose another directory (ModelCheckpoint(dirpath=...), --trainer.default_root_dir)") from None
    free = shutil.disk_usage(path).free
    if free < needed_bytes:
        raise OSError(f"Expected {needed_bytes / 2**20:.1f} MiB free for a checkpoint in {os.fspath(path)!r}, got "
                      f"{free / 2**20:.1f} MiB: free some space or choose another directory")


class CheckpointDirCheck(Callback):
    """Checks, when ``fit`` starts, that every ``ModelCheckpoint`` directory is writable and has room for a
    checkpoint (the model's parameters and buffers, times 3 for Adam-like optimizer state).

    Added by the ``lightning-rnn`` CLI; add it to your own ``Trainer`` for the same early error.
    """

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        tensors = [*pl_module.parameters(), *pl_module.buffers()]
        needed = 3 * sum(t.numel() * t.element_size() for t in tensors)
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath and "://" not in str(cb.dirpath):
                check_checkpoint_dir(cb.dirpath, needed)
