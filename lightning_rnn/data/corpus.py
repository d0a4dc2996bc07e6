"""Reading text sources: a file, a directory of files, a literal string, or the Python standard library."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

__all__ = ["PYDOC_TOPICS", "pydoc_topics_text", "read_text_source", "stdlib_source_dir", "stdlib_corpus_files"]

#: ``source`` name of a natural-language corpus present on every machine: the English text of the Python
#: documentation's help topics shipped with the standard library (``pydoc_data.topics``, ~465k characters).
PYDOC_TOPICS = "stdlib:pydoc_topics"


def pydoc_topics_text() -> str:
    """The help topics of ``pydoc_data.topics`` (prose of the Python reference), sorted by topic, joined by a
    blank line."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


def stdlib_source_dir() -> Path:
    """Directory of the Python standard library's own ``.py`` files: real text present on every machine."""
    path = Path(sysconfig.get_paths().get("stdlib") or os.path.dirname(os.__file__))
    if not (path / "os.py").is_file():
        path = Path(os.path.dirname(os.__file__))
    return path


def stdlib_corpus_files(max_bytes: int | None = 4_000_000) -> list[Path]:
    """The top-level ``*.py`` files of the standard library, sorted by name, up to ``max_bytes`` in total."""
    files = sorted(p for p in stdlib_source_dir().glob("*.py") if p.is_file())
    if max_bytes is None:
        return files
    out, total = [], 0
    for p in files:
        size = p.stat().st_size
        if out and total + size > max_bytes:
            break
        out.append(p)
        total += size
    return out


def _looks_like_path(source: str) -> bool:
    if "\n" in source or len(source) > 4096:
        return False
    return os.sep in source or source.startswith((".", "~")) or bool(Path(source).suffix) and " " not in source


def _read_file(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise ValueError(f"Expected a UTF-8 text file, got a binary file: {path}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"Expected a UTF-8 text file, got undecodable bytes at offset {err.start} in {path}") from err


def read_text_source(
    source: str | os.PathLike[str] | list[str | os.PathLike[str]],
    *,
    pattern: str = "*",
    max_bytes: int | None = None,
) -> list[tuple[str, str]]:
    """Read ``source`` into a list of documents ``(name, text)``.

    ``source`` is a text file, a directory (every file matching ``pattern`` — a glob such as ``"*.py"`` — below
    it, recursively, sorted by path; hidden files and directories skipped; empty files skipped; one document
    per file), a list of files, ``PYDOC_TOPICS`` (``"stdlib:pydoc_topics"``, English prose on every machine), or a
    literal string. A string that is not an existing path is
    text — unless it looks like a path (contains a path separator, starts with ``.``/``~``, or is a single
    word with a suffix such as ``corpus.txt``), in which case a missing path is an error, not text.

    Args:
        source: see above. A :class:`os.PathLike` is always a path.
        pattern: glob selecting the files of a directory.
        max_bytes: keep at most this many characters in total (the last document is cut).

    Returns:
        ``[(name, text), ...]``: the file path (or ``"<string>"``) and its text, in order.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: an empty file, a directory without text files, or a binary / non-UTF-8 file (named).
    """
    if isinstance(source, str) and source == PYDOC_TOPICS:
        return _cap([(PYDOC_TOPICS, pydoc_topics_text())], max_bytes)
    if isinstance(source, list):
        docs = []
        for item in source:
            docs.extend(read_text_source(item, pattern=pattern))
        return _cap(docs, max_bytes)
    if isinstance(source, os.PathLike) or os.path.exists(str(source)) or _looks_like_path(str(source)):
        path = Path(os.path.expanduser(str(source)))
        if not path.exists():
            raise FileNotFoundError(f"Expected an existing text file or directory, got {str(source)!r} (not found)")
        if path.is_dir():
            files = sorted(
                p
                for p in path.rglob(pattern)
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not files:
                raise ValueError(f"Expected text files matching {pattern!r} in directory {path}, got none")
            docs = [(str(p), _read_file(p)) for p in files]
            docs = [(n, t) for n, t in docs if t]
            if not docs:
                raise ValueError(f"Expected some text in directory {path}, got only empty files")
            return _cap(docs, max_bytes)
        text = _read_file(path)
        if not text:
            raise ValueError(f"Expected a non-empty text file, got an empty file: {path}")
        return _cap([(str(path), text)], max_bytes)
    if not str(source):
        raise ValueError("Expected a text source (file, directory or text), got an empty string")
    return [("<string>", str(source))]


def _cap(docs: list[tuple[str, str]], max_bytes: int | None) -> list[tuple[str, str]]:
    if max_bytes is None:
        return docs
    out, total = [], 0
    for name, text in docs:
        if total >= max_bytes:
            break
        out.append((name, text[: max_bytes - total]))
        total += len(text)
    return out
