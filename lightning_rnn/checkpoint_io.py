"""Checkpoints are data, never code: loading with ``weights_only=True`` and one-line errors, atomic saving.

- :func:`load_checkpoint` reads a checkpoint file with ``torch.load(weights_only=True)`` (a file whose
  unpickling would call a function is refused before anything runs) and turns every way a file can be bad
  (missing, empty, truncated, random bytes, a pickle calling code, not a Lightning checkpoint) into a
  :class:`CheckpointError` with one line that names the file and what is wrong with it.
- :class:`SafeCheckpointIO` is Lightning's ``TorchCheckpointIO`` with both: loads go through
  :func:`load_checkpoint`, and saves write a temporary file in the checkpoint's own directory, ``fsync`` it
  and ``os.replace`` it onto the final name, so a full disk or a kill never leaves a truncated checkpoint
  under its final name. Pass it as ``Trainer(plugins=[SafeCheckpointIO()])`` (the ``lightning-rnn`` CLI does).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

__all__ = ["CheckpointError", "SafeCheckpointIO", "load_checkpoint"]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message is one line naming the file."""


def _describe_failure(err: BaseException) -> str:
    text = str(err)
    blocked = re.search(r"GLOBAL ([\w.]+)", text)
    if blocked is not None:
        return (f"its unpickling would call {blocked.group(1)} (refused: checkpoints are loaded with "
                "weights_only=True, as data only)")
    truncated = isinstance(err, EOFError) or (isinstance(err, OSError) and err.errno == 22)  # EINVAL: cut zip
    if truncated or "central directory" in text or "failed reading" in text:
        return "it is empty or truncated (an interrupted write?)"
    return f"it is not a PyTorch checkpoint ({type(err).__name__})"


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu", *,
                    what: str = "checkpoint") -> dict[str, Any]:
    """Load a Lightning checkpoint file as data only (``torch.load(weights_only=True)``).

    Args:
        path: the ``.ckpt`` file.
        map_location: passed to :func:`torch.load`.
        what: how the error names the file (e.g. ``"--ckpt_path"``).

    Returns:
        The checkpoint dict (it has a ``"state_dict"``).

    Raises:
        CheckpointError: one line naming the file: it does not exist, is empty, truncated, random bytes, a
            pickle that would run code, or not a Lightning checkpoint.

    Example::

        >>> import tempfile, torch
        >>> path = tempfile.mktemp(suffix=".ckpt")
        >>> torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
        >>> load_checkpoint(path)["state_dict"]["w"].tolist()
        [0.0, 0.0]
        >>> _ = open(path, "wb").write(b"")
        >>> load_checkpoint(path)
        Traceback (most recent call last):
        ...
        lightning_rnn.checkpoint_io.CheckpointError: checkpoint '...' cannot be loaded: it is empty or truncated (an interrupted write?)
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise CheckpointError(f"{what} {os.fspath(path)!r} does not exist (or is not a file)")
    try:
        checkpoint = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, EOFError, RuntimeError, ... for bad files
        raise CheckpointError(f"{what} {os.fspath(path)!r} cannot be loaded: {_describe_failure(err)}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{what} {os.fspath(path)!r} is not a Lightning checkpoint (no 'state_dict')")
    return checkpoint


class SafeCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that loads with ``weights_only=True`` (one-line :class:`CheckpointError` for bad
    files) and saves atomically (temporary file in the same directory, ``fsync``, ``os.replace``).

    Example::

        >>> import tempfile, torch
        >>> io = SafeCheckpointIO()
        >>> path = os.path.join(tempfile.mkdtemp(), "last.ckpt")
        >>> io.save_checkpoint({"state_dict": {"w": torch.ones(1)}}, path)
        >>> io.load_checkpoint(path)["state_dict"]["w"].tolist(), os.listdir(os.path.dirname(path))
        ([1.0], ['last.ckpt'])
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike[str],
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"Expected storage_options=None with {type(self).__name__}, got {storage_options!r}")
        if "://" in os.fspath(path):  # remote file systems: Lightning's own (fsspec transaction)
            super().save_checkpoint(checkpoint, path)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def load_checkpoint(self, path: str | os.PathLike[str], map_location: Any = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if weights_only is False:
            raise ValueError("Expected weights_only=True or None with SafeCheckpointIO (checkpoints are data), "
                             "got weights_only=False")
        if "://" in os.fspath(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return load_checkpoint(path, map_location if map_location is not None else "cpu",
                               what="checkpoint")
