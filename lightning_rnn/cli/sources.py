"""Early, one-line checks of ``--data.source`` paths (before any data module reads them)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning_rnn.cli.errors import CLIError

__all__ = ["check_source"]


def _looks_like_path(source: str) -> bool:
    return "\n" not in source and len(source) < 4096 and (os.sep in source or Path(source).suffix != "")


def check_source(source: Any) -> None:
    """Raise :class:`CLIError` (one line, says what to do) for a ``data.source`` path that cannot be read."""
    if source is None or not isinstance(source, str | os.PathLike):
        return
    text = os.fspath(source)
    path = Path(text).expanduser()
    if not path.exists():
        if isinstance(source, os.PathLike) or _looks_like_path(text):
            raise CLIError(f"--data.source {text!r} does not exist: pass a UTF-8 text file or a directory of "
                           "text files (or leave it unset for the default corpus)")
        return
    files = [path] if path.is_file() else [p for p in sorted(path.rglob("*")) if p.is_file()]
    if not files or all(p.stat().st_size == 0 for p in files):
        raise CLIError(f"--data.source {text!r} is empty: pass a UTF-8 text file or a directory of text files "
                       "with some text in it")
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(1 << 16)
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as err:
            if err.start < len(head) - 4:  # not just a multi-byte character cut at the block end
                raise CLIError(f"--data.source {text!r} is not UTF-8 text (binary file?): pass a text file or "
                               "a directory of text files") from None
        if b"\x00" in head:
            raise CLIError(f"--data.source {text!r} is not UTF-8 text (binary file?): pass a text file or a "
                           "directory of text files")
