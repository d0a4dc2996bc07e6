"""Text sources (a file, a directory of files, a literal string, the Python standard library), read in
chunks, and their tokenised form: a compact, memory-mapped on-disk cache of token ids (:class:`TokenCorpus`)."""

from __future__ import annotations

import codecs
import hashlib
import itertools
import json
import os
import shutil
import sysconfig
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from lightning_rnn._validation import check_int
from lightning_rnn.data.vocab import CharVocab, Vocab, WordVocab

__all__ = [
    "PYDOC_TOPICS",
    "TokenCorpus",
    "default_cache_dir",
    "iter_text_pieces",
    "pydoc_topics_text",
    "read_text_source",
    "resolve_text_source",
    "split_sizes",
    "stdlib_corpus_files",
    "stdlib_source_dir",
    "token_dtype",
]

_CHUNK_BYTES = 1 << 22  # bytes read (and characters handed out) per piece: bounds the memory of a pass
_HASH_SEGMENT = 1 << 25  # bytes hashed per task of the parallel content digest
_FORMAT = 1  # on-disk layout version; part of every cache key
_LEVELS: dict[str, type[Vocab]] = {"char": CharVocab, "word": WordVocab}

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
    _check_max_bytes(max_bytes)
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


def resolve_text_source(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *, pattern: str = "*"
) -> list[Path | str]:
    """The documents of ``source`` in reading order, without reading them: file paths, or literal strings.

    The rules are those of :func:`read_text_source`: a directory gives its files matching ``pattern``
    (recursively, sorted, hidden entries and empty files skipped), a list gives the documents of its items
    in order, a string that is not an existing path and does not look like one is literal text.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: an empty file, a directory without (non-empty) files, an empty string.
    """
    if isinstance(source, str) and source == PYDOC_TOPICS:
        return [pydoc_topics_text()]
    if isinstance(source, list | tuple):
        parts: list[Path | str] = []
        for item in source:
            parts.extend(resolve_text_source(item, pattern=pattern))
        return parts
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
            files = [p for p in files if p.stat().st_size > 0]
            if not files:
                raise ValueError(f"Expected some text in directory {path}, got only empty files")
            return list(files)
        if path.stat().st_size == 0:
            raise ValueError(f"Expected a non-empty text file, got an empty file: {path}")
        return [path]
    if not str(source):
        raise ValueError("Expected a text source (file, directory or text), got an empty string")
    return [str(source)]


def _read_file(path: Path) -> str:
    """The whole UTF-8 text of one (small) file; errors as :func:`read_text_source`."""
    return "".join(_decode_file(path, max(path.stat().st_size, 1)))


def _decode_file(path: Path, chunk_bytes: int) -> Iterator[str]:
    """UTF-8 text of ``path`` in pieces of at most ``chunk_bytes`` characters (never the whole file)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # file offset of the next read
    with open(path, "rb") as f:
        while True:
            data = f.read(chunk_bytes)
            if offset == 0 and b"\x00" in data[:8192]:
                raise ValueError(f"Expected a UTF-8 text file, got a binary file: {path}")
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as err:
                at = offset - pending + err.start
                raise ValueError(
                    f"Expected a UTF-8 text file, got undecodable bytes at offset {at} in {path}"
                ) from err
            offset += len(data)
            if text:
                yield text
            if not data:
                return


def iter_text_pieces(
    parts: Sequence[Path | str], *, max_chars: int | None = None, chunk_bytes: int | None = None
) -> Iterator[tuple[int, str]]:
    """Stream the documents ``parts`` (see :func:`resolve_text_source`) as ``(document index, piece)``.

    Files are read and decoded ``chunk_bytes`` at a time, literal strings sliced, so a pass over a corpus
    holds one piece at a time. At most ``max_chars`` characters are handed out in total (the last document
    is cut); the pieces of one document, joined, are its text.

    Example::

        >>> list(iter_text_pieces(["hello", "world"], max_chars=7, chunk_bytes=3))
        [(0, 'hel'), (0, 'lo'), (1, 'wo')]
    """
    chunk_bytes = chunk_bytes or _CHUNK_BYTES
    remaining = max_chars
    for doc, part in enumerate(parts):
        if remaining is not None and remaining <= 0:
            return
        if isinstance(part, str):
            pieces: Iterator[str] = (part[i : i + chunk_bytes] for i in range(0, len(part), chunk_bytes))
        else:
            pieces = _decode_file(part, chunk_bytes)
        for piece in pieces:
            if remaining is not None:
                if remaining <= 0:
                    break
                piece = piece[:remaining]
                remaining -= len(piece)
            yield doc, piece


def read_text_source(
    source: str | os.PathLike[str] | list[str | os.PathLike[str]],
    *,
    pattern: str = "*",
    max_bytes: int | None = None,
) -> list[tuple[str, str]]:
    """Read ``source`` into a list of documents ``(name, text)`` (small sources; large ones are streamed by
    :func:`iter_text_pieces` and cached by :class:`TokenCorpus`).

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
    _check_max_bytes(max_bytes)
    parts = resolve_text_source(source, pattern=pattern)
    texts: list[list[str]] = [[] for _ in parts]
    for doc, piece in iter_text_pieces(parts, max_chars=max_bytes):
        texts[doc].append(piece)
    return [
        ("<string>" if isinstance(part, str) else str(part), "".join(pieces))
        for part, pieces in zip(parts, texts)
        if pieces
    ]


def _check_max_bytes(max_bytes: object) -> None:
    if max_bytes is not None:  # the message says what None means: 0 or negative must not read as "no limit"
        try:
            check_int("max_bytes", max_bytes, min=1)
        except ValueError:
            raise ValueError(f"Expected max_bytes to be an int >= 1 or None (no limit), got {max_bytes!r}") from None


# ---------------------------------------------------------------------------------------------- token cache
def split_sizes(num_tokens: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """Token counts ``(train, val, test)`` of a contiguous split (train first, test last).

    Example::

        >>> split_sizes(1000, 0.05, 0.1)
        (850, 50, 100)
    """
    n_test = int(num_tokens * test_fraction)
    n_val = int(num_tokens * val_fraction)
    return num_tokens - n_val - n_test, n_val, n_test


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds the ids ``[0, vocab_size)``.

    Example::

        >>> token_dtype(256), token_dtype(257), token_dtype(70_000)
        (dtype('uint8'), dtype('uint16'), dtype('uint32'))
    """
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def default_cache_dir() -> Path:
    """Where tokenised corpora are cached: ``$LIGHTNING_RNN_CACHE``, else ``$XDG_CACHE_HOME/lightning-rnn/corpora``
    (``~/.cache/lightning-rnn/corpora``). Entries can be deleted at any time; they are rebuilt when needed."""
    if os.environ.get("LIGHTNING_RNN_CACHE"):
        return Path(os.environ["LIGHTNING_RNN_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lightning-rnn" / "corpora"


def _hash_segment(task: tuple[Path, int, int]) -> bytes:
    path, start, length = task
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        f.seek(start)
        while length > 0:
            data = f.read(min(length, 1 << 22))
            if not data:
                break
            h.update(data)  # releases the GIL: segments hash in parallel
            length -= len(data)
    return h.digest()


def _file_stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def source_digest(parts: Sequence[Path | str], *, max_chars: int | None = None, index_dir: Path | None = None) -> str:
    """Digest of the content of ``parts`` that a read capped at ``max_chars`` characters can reach.

    Files are hashed in parallel segments (BLAKE2b). With ``index_dir`` the digest of a list of files is
    remembered together with each file's size, modification time, change time and inode (as git's index
    does): an unchanged file is not read again, and any write to a file (which updates its change time,
    something user space cannot set back) makes it hashed anew.
    """
    # a capped read uses at most max_chars characters = at most 4 * max_chars bytes of each file, and no file
    # after those whose bytes already reach 4 * max_chars
    bound = None if max_chars is None else 4 * max_chars
    used: list[tuple[Path | str, int]] = []
    total = 0
    for part in parts:
        if bound is not None and total >= bound:
            break
        size = len(part.encode("utf-8", "surrogatepass")) if isinstance(part, str) else part.stat().st_size
        take = size if bound is None else min(size, bound)
        used.append((part, take))
        total += size
    files = [(p.resolve(), n) for p, n in used if isinstance(p, Path)]
    index = None
    if index_dir is not None and files and len(files) == len(used):
        spec = json.dumps([[str(p), n] for p, n in files])
        index = index_dir / (hashlib.blake2b(spec.encode(), digest_size=16).hexdigest() + ".json")
        stats = [_file_stat(p) for p, _ in files]
        try:
            known = json.loads(index.read_text())
            if known.get("spec") == spec and known.get("stats") == stats:
                return str(known["digest"])
        except (OSError, ValueError, KeyError, AttributeError):
            pass
    tasks = []
    for part, take in used:
        if isinstance(part, Path):
            tasks.extend((part, a, min(_HASH_SEGMENT, take - a)) for a in range(0, take, _HASH_SEGMENT))
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        segment_digests = iter(list(pool.map(_hash_segment, tasks)))
    h = hashlib.blake2b(digest_size=20)
    for part, take in used:
        if isinstance(part, str):
            h.update(b"S%d:" % take + part.encode("utf-8", "surrogatepass"))
        else:
            h.update(b"F%d:" % take)
            for _ in range(0, take, _HASH_SEGMENT):
                h.update(next(segment_digests))
    digest = h.hexdigest()
    if index is not None:
        try:
            index.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write_text(index, json.dumps({"spec": spec, "stats": stats, "digest": digest}))
        except OSError:
            pass
    return digest


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _char_codepoints(piece: str) -> np.ndarray:
    return np.frombuffer(piece.encode("utf-32-le", "surrogatepass"), dtype="<u4")


class TokenCorpus:
    """A tokenised corpus: token ids in the smallest integer dtype that holds the vocabulary
    (:func:`token_dtype`), the token offset where each document starts, and the vocabulary.

    Built by streaming passes over the source (never the whole text in memory) into a directory —
    ``tokens.bin`` (raw ids), ``docs.npy`` (document offsets), ``meta.json`` (dtype, length, vocabulary) —
    and opened memory-mapped (copy-on-write), so processes that open the same directory share its pages.
    :meth:`load` finds or builds the directory in a cache keyed by the content of the source and by the
    vocabulary (given, or how it is built), so a changed source is tokenised again.

    Attributes:
        ids: token ids ``(M,)`` (a read-mostly ``numpy.memmap`` or an in-memory array).
        doc_offsets: int64 ``(D,)``, non-decreasing: the token offset where each document starts.
        vocab: the vocabulary the ids index.
        path: the directory, or ``None`` for an in-memory corpus.

    Example::

        >>> corpus = TokenCorpus.load("abcab", level="char", cache_dir=None)
        >>> corpus.vocab.itos, corpus.ids.tolist(), corpus.ids.dtype
        (['<unk>', 'a', 'b', 'c'], [1, 2, 3, 1, 2], dtype('uint8'))
    """

    def __init__(self, ids: np.ndarray, doc_offsets: np.ndarray, vocab: Vocab, path: Path | None = None) -> None:
        self.ids = ids
        self.doc_offsets = doc_offsets
        self.vocab = vocab
        self.path = path

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def tensor(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Ids ``[start, stop)`` as a tensor sharing the memory (no copy; dtype as stored)."""
        return torch.from_numpy(self.ids[start:stop])

    # ------------------------------------------------------------------ on disk
    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> TokenCorpus:
        """Open a built corpus directory, memory-mapped (pages are read on use and shared between processes)."""
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        if meta.get("format") != _FORMAT:
            raise ValueError(f"Expected a token corpus of format {_FORMAT} in {path}, got {meta.get('format')!r}")
        n = int(meta["num_tokens"])
        dtype = np.dtype(meta["dtype"])
        ids = np.memmap(path / "tokens.bin", dtype=dtype, mode="c", shape=(n,)) if n else np.zeros(0, dtype)
        return cls(ids, np.load(path / "docs.npy"), Vocab.from_dict(meta["vocab"]), path)

    @classmethod
    def build(
        cls,
        parts: Sequence[Path | str],
        out_dir: str | os.PathLike[str],
        *,
        level: str = "char",
        vocab: Vocab | None = None,
        val_fraction: float = 0.0,
        test_fraction: float = 0.0,
        min_freq: int = 1,
        max_size: int | None = None,
        max_chars: int | None = None,
        chunk_bytes: int | None = None,
    ) -> TokenCorpus:
        """Tokenise ``parts`` into ``out_dir`` (created) and open it.

        Without ``vocab`` the vocabulary is built (``min_freq``, ``max_size``) from the training split only:
        the first ``split_sizes(M, val_fraction, test_fraction)[0]`` tokens. Memory is bounded by one piece
        of ``chunk_bytes`` plus, at word level, the table of distinct words; the ids go straight to disk.
        """
        if level not in _LEVELS:
            raise ValueError(f"Expected level in {sorted(_LEVELS)}, got {level!r}")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        build = cls._build_chars if level == "char" else cls._build_words
        vocab, n, offsets = build(
            parts, out, vocab, (val_fraction, test_fraction), min_freq, max_size, max_chars, chunk_bytes
        )
        np.save(out / "docs.npy", np.asarray(offsets, dtype=np.int64))
        meta = {"format": _FORMAT, "level": level, "dtype": token_dtype(len(vocab)).str, "num_tokens": n,
                "vocab": vocab.to_dict()}
        (out / "meta.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
        return cls.open(out)

    @staticmethod
    def _build_chars(parts, out, vocab, fractions, min_freq, max_size, max_chars, chunk_bytes):
        pieces = lambda: iter_text_pieces(parts, max_chars=max_chars, chunk_bytes=chunk_bytes)  # noqa: E731
        if vocab is None:
            n = sum(len(piece) for _, piece in pieces())  # pass 1: length, for the training split's end
            remaining = split_sizes(n, *fractions)[0]
            counts = np.zeros(0, dtype=np.int64)
            for _, piece in pieces():  # pass 2: character counts of the training split
                if remaining <= 0:
                    break
                cps = _char_codepoints(piece[:remaining])
                remaining -= cps.size
                bc = np.bincount(cps)
                if bc.size > counts.size:
                    counts = np.concatenate([counts, np.zeros(bc.size - counts.size, dtype=np.int64)])
                counts[: bc.size] += bc
            vocab = CharVocab.from_codepoint_counts(torch.from_numpy(counts), min_freq=min_freq, max_size=max_size)
        dtype = token_dtype(len(vocab))
        singles = {ord(t): i for i, t in enumerate(vocab.itos) if len(t) == 1}
        # code point -> id; one <unk> entry past the largest known code point catches every larger one (clip)
        table = np.full(max(singles, default=0) + 2, vocab.unk_id, dtype=dtype)
        table[list(singles)] = list(singles.values())
        offsets, n, last_doc = [], 0, -1
        with open(out / "tokens.bin", "wb") as f:
            for doc, piece in pieces():  # last pass: encode
                if doc != last_doc:
                    offsets.append(n)
                    last_doc = doc
                ids = np.take(table, _char_codepoints(piece), mode="clip")
                f.write(memoryview(ids))
                n += ids.size
        return vocab, n, offsets

    @staticmethod
    def _build_words(parts, out, vocab, fractions, min_freq, max_size, max_chars, chunk_bytes):
        # pass 1: whitespace tokens -> provisional ids (one per distinct word, in no particular order: the final
        # ids come from the vocabulary), written to disk as uint32
        first_seen: dict[str, int] = {}
        offsets, n, last_doc, carry = [], 0, -1, ""
        prov_path = out / "provisional.u32"

        def write(tokens: list[str], f) -> int:
            new = set(tokens).difference(first_seen)  # C-level loops only: set, dict update, map
            if new:
                first_seen.update(zip(new, range(len(first_seen), len(first_seen) + len(new))))
            ids = np.fromiter(map(first_seen.__getitem__, tokens), np.uint32, len(tokens))
            f.write(memoryview(ids))
            return len(tokens)

        with open(prov_path, "wb") as f:
            for doc, piece in iter_text_pieces(parts, max_chars=max_chars, chunk_bytes=chunk_bytes):
                if doc != last_doc:
                    if carry:  # the previous document's last word
                        n += write([carry], f)
                        carry = ""
                    offsets.append(n)
                    last_doc = doc
                text = carry + piece
                tokens = text.split()
                carry = tokens.pop() if tokens and not text[-1].isspace() else ""
                n += write(tokens, f)
            if carry:
                n += write([carry], f)
        words = list(first_seen)
        first_seen.clear()
        prov = np.memmap(prov_path, dtype=np.uint32, mode="r", shape=(n,)) if n else np.zeros(0, np.uint32)
        step = chunk_bytes or _CHUNK_BYTES
        if vocab is None:  # counts of the training split only
            n_train = split_sizes(n, *fractions)[0]
            counts = np.zeros(len(words), dtype=np.int64)
            for a in range(0, n_train, step):
                counts += np.bincount(prov[a : min(a + step, n_train)], minlength=len(words))
            vocab = WordVocab.from_counts(
                {w: int(c) for w, c in zip(words, counts.tolist()) if c}, min_freq=min_freq, max_size=max_size
            )
        dtype = token_dtype(len(vocab))
        table = np.fromiter(map(vocab.stoi.get, words, itertools.repeat(vocab.unk_id)), dtype, len(words))
        del words
        with open(out / "tokens.bin", "wb") as f:  # pass 2: provisional -> final ids
            for a in range(0, n, step):
                f.write(memoryview(table[prov[a : a + step]]))
        del prov
        prov_path.unlink()
        return vocab, n, offsets

    # ------------------------------------------------------------------ cache
    @classmethod
    def load(
        cls,
        source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        level: str = "char",
        vocab: Vocab | None = None,
        val_fraction: float = 0.0,
        test_fraction: float = 0.0,
        min_freq: int = 1,
        max_size: int | None = None,
        max_chars: int | None = None,
        pattern: str = "*",
        cache_dir: str | os.PathLike[str] | None = None,
        chunk_bytes: int | None = None,
    ) -> TokenCorpus:
        """The tokenised ``source``: opened from ``cache_dir`` when it was built before, else built there.

        The cache entry's key is the digest of the source's content (:func:`source_digest`), the level, the
        ``max_chars`` cap and the vocabulary: the given one's tokens, or the options that build it
        (``min_freq``, ``max_size`` and the split fractions, since it is built from the training split). A
        changed source therefore gets a new entry; entries are written to a temporary directory and renamed
        into place, so concurrent builders (e.g. one per node) never see a partial entry.

        With ``cache_dir=None``, or for a literal-string source, the corpus is built in a temporary directory
        and held in memory (ids in the compact dtype).
        """
        if level not in _LEVELS:
            raise ValueError(f"Expected level in {sorted(_LEVELS)}, got {level!r}")
        parts = resolve_text_source(source, pattern=pattern)
        options = dict(level=level, vocab=vocab, val_fraction=val_fraction, test_fraction=test_fraction,
                       min_freq=min_freq, max_size=max_size, max_chars=max_chars, chunk_bytes=chunk_bytes)
        root = Path(cache_dir).expanduser() if cache_dir is not None else None
        if root is not None and not any(isinstance(p, str) for p in parts):
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                warnings.warn(f"Cannot use the corpus cache directory {root} ({err}); tokenising in memory.",
                              stacklevel=2)
                root = None
        if root is None or any(isinstance(p, str) for p in parts):
            with tempfile.TemporaryDirectory(prefix="lightning-rnn-corpus-") as tmp:
                built = cls.build(parts, tmp, **options)  # type: ignore[arg-type]
                ids = np.array(built.ids)  # into memory before the directory goes
                return cls(ids, built.doc_offsets, built.vocab, None)
        entry = root / cls.cache_key(parts, index_dir=root / "index", **options)  # type: ignore[arg-type]
        if (entry / "meta.json").is_file():
            try:
                return cls.open(entry)
            except (OSError, ValueError, KeyError):
                pass  # a damaged entry: rebuild below
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
        try:
            cls.build(parts, tmp, **options)  # type: ignore[arg-type]
            try:
                if entry.exists():  # damaged, or built meanwhile by another process
                    if (entry / "meta.json").is_file():
                        return cls.open(entry)
                    shutil.rmtree(entry, ignore_errors=True)
                os.rename(tmp, entry)
            except OSError:
                if not (entry / "meta.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cls.open(entry)

    @staticmethod
    def cache_key(
        parts: Sequence[Path | str],
        *,
        level: str,
        vocab: Vocab | None,
        val_fraction: float,
        test_fraction: float,
        min_freq: int,
        max_size: int | None,
        max_chars: int | None,
        chunk_bytes: int | None = None,
        index_dir: Path | None = None,
    ) -> str:
        """The cache entry name for these options (see :meth:`load`)."""
        vocab_key: object
        if vocab is not None:
            vocab_key = hashlib.blake2b(json.dumps(vocab.to_dict()).encode(), digest_size=16).hexdigest()
        else:
            vocab_key = [min_freq, max_size, float(val_fraction), float(test_fraction)]
        spec = {"format": _FORMAT, "content": source_digest(parts, max_chars=max_chars, index_dir=index_dir),
                "level": level, "max_chars": max_chars, "vocab": vocab_key}
        return hashlib.blake2b(json.dumps(spec).encode(), digest_size=16).hexdigest()
