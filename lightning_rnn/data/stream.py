"""Text streams for truncated BPTT: B contiguous streams per rank, consecutive chunks, never shuffled."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_rnn._validation import check_bool, check_int, check_probability
from lightning_rnn.data.corpus import (
    TokenCorpus,
    _check_max_bytes,
    default_cache_dir,
    resolve_text_source,
    split_sizes,
    stdlib_corpus_files,
)
from lightning_rnn.data.vocab import CharVocab, Vocab, WordVocab

__all__ = ["StreamChunks", "TextStreamDataModule", "batchify"]

_LEVELS: dict[str, type[Vocab]] = {"char": CharVocab, "word": WordVocab}
_SPLITS = ("train", "val", "test")
_DEFAULT_CORPUS_BYTES = 4_000_000


def batchify(tokens: Tensor, rows: int) -> Tensor:
    """Lay a 1-D token stream out as ``rows`` contiguous streams.

    Row ``b`` holds tokens ``[b*n, (b+1)*n)`` with ``n = len // rows``; the tail that does not fill a row is
    dropped (AWD-LSTM's ``batchify``).

    Inputs: tokens ``(M,)``.
    Outputs: a view ``(rows, M // rows)``.
    """
    check_int("rows", rows, min=1)
    if tokens.dim() != 1:
        raise ValueError(f"Expected a 1-D token stream, got shape {tuple(tokens.shape)}")
    if tokens.numel() < rows:
        raise ValueError(f"Expected rows <= the number of tokens ({tokens.numel()}), got {rows}")
    n = tokens.numel() // rows
    return tokens[: n * rows].view(rows, n)


class StreamChunks(Dataset):
    """Consecutive chunks of a batchified stream: item ``i`` is chunk ``i`` of every row.

    Chunk ``i`` is columns ``[i*bptt, (i+1)*bptt)`` of ``streams`` as inputs and the same columns shifted by
    one as targets, so chunk ``i+1`` of every row starts exactly where chunk ``i`` ended and a model can carry
    its recurrent state from one chunk to the next. A stream of ``n`` tokens gives ``(n - 1) // bptt`` full
    chunks; with ``drop_last=False`` a final shorter chunk (``(n - 1) % bptt`` steps, when that is not 0)
    follows them.

    With ``doc_starts`` (bool ``(B, n)``, True at the first token of every document; or, equivalently and in
    less memory, a sorted int64 ``(D,)`` of document-start positions counted row-major over the ``(B, n)``
    layout, i.e. ``b * n + column``) items are dicts with a ``"reset"`` entry ``(B,)``: True for rows where a document started inside the previous chunk (after its
    first position) or at this chunk's first position. A model resets those rows' state before this chunk,
    so the state never carries from one document into the next by more than one chunk (the tokens of a new
    document inside the chunk where it begins are read with the old document's state).

    Args:
        streams: token ids ``(B, n)``, one contiguous stream per row (see :func:`batchify`); any integer
            dtype (a compact ``uint8``/``uint16`` view of a memory-mapped corpus is read chunk by chunk).
        bptt: chunk length.
        doc_starts: optional document starts: bool ``(B, n)``, or sorted int64 positions ``(D,)``.
        drop_last: drop the final chunk when it is shorter than ``bptt`` (default) or hand it out.

    Outputs (item ``i``): ``(inputs, targets)`` LongTensors ``(B, T)`` with ``T = bptt`` (``T < bptt`` only for
    the final chunk with ``drop_last=False``), or ``{"inputs", "targets", "reset"}`` with ``doc_starts``.

    Example::

        >>> ds = StreamChunks(torch.arange(14).view(2, 7), bptt=3)
        >>> len(ds), ds[1][0].tolist(), ds[1][1].tolist()
        (2, [[3, 4, 5], [10, 11, 12]], [[4, 5, 6], [11, 12, 13]])
    """

    def __init__(self, streams: Tensor, bptt: int, doc_starts: Tensor | None = None, *, drop_last: bool = True):
        super().__init__()
        if streams.dim() != 2:
            raise ValueError(f"Expected streams of shape (B, n), got {tuple(streams.shape)}")
        check_int("bptt", bptt, min=1)
        if streams.is_floating_point() or streams.is_complex() or streams.dtype == torch.bool:
            raise TypeError(f"Expected integer token ids as streams, got dtype {streams.dtype}")
        if doc_starts is not None and doc_starts.dtype == torch.bool and doc_starts.shape != streams.shape:
            raise ValueError(
                f"Expected doc_starts of the streams' shape {tuple(streams.shape)}, got {tuple(doc_starts.shape)}"
            )
        if doc_starts is not None and doc_starts.dtype != torch.bool and (
            doc_starts.dim() != 1 or doc_starts.is_floating_point()
        ):
            raise ValueError(
                f"Expected doc_starts as bool (B, n) or sorted integer positions (D,), got dtype {doc_starts.dtype}"
                f" and shape {tuple(doc_starts.shape)}"
            )
        self.streams = streams
        self.bptt = bptt
        self.doc_starts = doc_starts
        self.drop_last = check_bool("drop_last", drop_last)

    def __len__(self) -> int:
        steps = max(0, self.streams.shape[1] - 1)  # positions that have a target
        return steps // self.bptt if self.drop_last else -(-steps // self.bptt)

    def __getitem__(self, i: int) -> Any:
        if not -len(self) <= i < len(self):
            raise IndexError(f"Expected a chunk index in [0, {len(self)}), got {i}")
        i %= len(self)
        k = self.bptt
        end = min((i + 1) * k, self.streams.shape[1] - 1)
        window = self.streams[:, i * k : end + 1].long()  # (B, T + 1): one read of the (compact) streams
        inputs, targets = window[:, :-1], window[:, 1:]  # (B, T) each, targets shifted by one
        if self.doc_starts is None:
            return inputs, targets
        lo, hi = max(0, (i - 1) * k + 1), i * k + 1
        if self.doc_starts.dtype == torch.bool:
            reset = self.doc_starts[:, lo:hi].any(dim=1)  # (B,)
        else:  # a document starts in row b's columns [lo, hi) <=> a position in [b*n + lo, b*n + hi)
            base = torch.arange(self.streams.shape[0], dtype=torch.long) * self.streams.shape[1]  # (B,)
            first = torch.searchsorted(self.doc_starts, base + lo)
            reset = torch.searchsorted(self.doc_starts, base + hi) > first  # (B,)
        return {"inputs": inputs, "targets": targets, "reset": reset}

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self[i]


class _InOrderStreamSampler(DistributedSampler):
    """Yields ``0, 1, ..., len(dataset) - 1`` in order, every epoch.

    A :class:`DistributedSampler` subclass only so that Lightning (``use_distributed_sampler=True``, the
    default) sees the loader as already distributed and does not replace it: the rank's share of the data
    is already decided by :class:`TextStreamDataModule` (its own rows), and a ``DistributedSampler`` would
    deal chunk ``i`` to rank ``i % world_size`` and break every stream.
    """

    def __init__(self, dataset: StreamChunks, rank: int, world_size: int) -> None:
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self.dataset)))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]


class _StreamLoader(StatefulDataLoader):
    """The training loader: torchdata's :class:`StatefulDataLoader` (Lightning saves its ``state_dict`` in
    checkpoints and restores it on resume, so a run resumed mid-epoch gets the remaining batches in order).

    A state saved after the epoch's last batch (the checkpoint of the final step of an epoch) is not
    restored: the next epoch starts at batch 0 instead of being empty.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        with warnings.catch_warnings():  # torchdata 0.11 calls the deprecated torch.set_vital here
            warnings.filterwarnings("ignore", message=".*set_vital.*")
            super().__init__(*args, **kwargs)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "_snapshot" in state_dict:  # state of a loader with workers
            yielded = state_dict["_snapshot"].get("_snapshot_step", 0) + state_dict.get("_steps_since_snapshot", 0)
        else:
            yielded = state_dict.get("_num_yielded", 0)
        if int(yielded) >= len(self):
            return
        super().load_state_dict(state_dict)


class TextStreamDataModule(LightningDataModule):
    """A text corpus as streams of token ids for truncated-BPTT language modelling.

    The source is tokenised (characters by default, or whitespace words), split contiguously into
    train / val / test by fraction (train first, test last), and each split is laid out as
    ``G = batch_size x world_size`` contiguous streams (:func:`batchify`). Batches are consecutive
    ``(inputs, targets)`` LongTensor chunks ``(batch_size, bptt)``, targets shifted by one: batch ``i+1`` of
    every row begins exactly where batch ``i`` ended, so a model can carry its state across batches
    (``RNNLanguageModel(carry_state=True)``). Nothing is ever shuffled; every epoch starts at the beginning
    of the streams, so the stream position at an epoch boundary needs no state to resume.

    **Distributed.** Rank ``r`` owns rows ``[r*batch_size, (r+1)*batch_size)`` of the ``G``-row layout: a
    contiguous block of the corpus (fairseq-style). The union of the ranks' batches is the one-process batch
    with ``batch_size x world_size`` rows, and every rank yields the same number of batches. Rank and world
    size come from ``self.trainer`` (set by Lightning before ``setup``), else from an initialised
    ``torch.distributed`` group, else ``0`` / ``1``; ``rank`` / ``world_size`` arguments override them. The
    dataloaders are map-style (item ``i`` = chunk ``i``, :class:`StreamChunks`) with an in-order sampler that
    Lightning leaves alone: ``Trainer(use_distributed_sampler=True)`` (the default) does not inject a
    ``DistributedSampler`` into them, and ``num_workers > 0`` keeps the order.

    **Documents.** With ``mark_documents=True`` (one document per file of a directory / list source)
    batches are dicts ``{"inputs", "targets", "reset"}``; ``reset`` (bool ``(batch_size,)``) marks rows whose
    state should be reset before this batch (see :class:`StreamChunks` for the exact rule).

    **Large corpora.** A file or directory source is tokenised once, in streaming passes (chunked reads; the
    text is never held whole), into an on-disk cache (:class:`~lightning_rnn.data.corpus.TokenCorpus`): token
    ids in the smallest integer dtype that holds the vocabulary (``uint8`` for most character vocabularies,
    ``uint16`` up to 65,536 tokens), memory-mapped when used, so memory stays flat in the corpus size. The
    cache entry is keyed by the source's content and the vocabulary (given, or the options that build it): a
    changed file is tokenised again. :meth:`prepare_data` (one process per node under DDP) builds the entry;
    :meth:`setup` opens it on every rank, and all ranks of a node share its pages. Literal-string sources and
    ``cache=False`` tokenise into memory (still in the compact dtype).

    **Resuming.** The training loader is a :class:`torchdata.stateful_dataloader.StatefulDataLoader`: Lightning
    stores its position in checkpoints, and a run resumed from a mid-epoch checkpoint continues with the
    epoch's remaining batches, in order.

    **Predicting.** :meth:`predict_dataloader` gives the ``predict_split`` split (default: test) in the same
    stream layout as :meth:`test_dataloader`: consecutive chunks, so a model can carry its state through it.

    **Chunk length.** ``bptt`` and ``batch_size`` are plain attributes, read when a dataloader is built: a
    change (e.g. by an adaptive-truncation callback) takes effect at the next ``train_dataloader()`` call. A
    ``Trainer`` builds its dataloaders once unless ``Trainer(reload_dataloaders_every_n_epochs=1)``, which
    makes a change take effect from the next epoch. The final chunk of a split, when shorter than ``bptt``,
    is dropped unless ``drop_last=False``.

    Args:
        source: a text file, a directory of text files (``pattern`` selects them; one document per file), a
            list of files, a literal string (see :func:`read_text_source` for when a string is a path), or
            ``None`` for the default corpus: the Python standard library's own top-level ``*.py`` files
            (:func:`stdlib_corpus_files`), a few MB of real text present on every machine.
        batch_size: B, streams per rank.
        bptt: chunk length handed out.
        vocab: a :class:`Vocab` or a path to a saved one; ``None`` builds it from the training split only.
        level: ``"char"`` or ``"word"`` (whitespace tokens); ``None`` means the given vocabulary's kind, else
            ``"char"``.
        val_fraction, test_fraction: fractions of the token stream for validation / test, in ``[0, 1)``,
            summing to less than 1. A split of fraction 0 has no dataloader (``[]``).
        min_freq, max_size: vocabulary-building options.
        max_bytes: read at most this many characters of the source (default for the stdlib corpus: 4 MB).
        pattern: glob selecting the files of a directory source.
        mark_documents: give batches as dicts with a ``"reset"`` entry at document (file) boundaries.
        eval_batch_size: streams per rank for validation / test (default ``batch_size``).
        drop_last: drop the final chunk of each split when it is shorter than ``bptt``.
        num_workers, pin_memory: passed to the ``DataLoader``.
        rank, world_size: override the distributed layout (for use without a ``Trainer``).
        cache: keep the tokenised corpus of a file / directory source in an on-disk cache (default) or
            tokenise it into memory at every ``setup``.
        cache_dir: the cache directory (default :func:`~lightning_rnn.data.corpus.default_cache_dir`:
            ``$LIGHTNING_RNN_CACHE`` or ``~/.cache/lightning-rnn/corpora``). Under multi-node DDP, a directory
            every node can reach, or one local to each node.
        predict_split: the split :meth:`predict_dataloader` streams: ``"train"``, ``"val"`` or ``"test"``.

    Raises:
        ValueError: ``batch_size``/``bptt`` not positive, fractions out of range, an unknown ``level``, a
            level that contradicts the vocabulary, and (when a dataloader is built) a split too short for its
            streams — the message gives the tokens needed and the tokens there are.

    Example::

        >>> dm = TextStreamDataModule("abcdefghij" * 40, batch_size=2, bptt=8, val_fraction=0.1, test_fraction=0.1)
        >>> dm.setup("fit")
        >>> inputs, targets = next(iter(dm.train_dataloader()))
        >>> tuple(inputs.shape), bool((inputs[:, 1:] == targets[:, :-1]).all())
        ((2, 8), True)
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        batch_size: int = 32,
        bptt: int = 64,
        vocab: Vocab | str | None = None,
        level: str | None = None,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        min_freq: int = 1,
        max_size: int | None = None,
        max_bytes: int | None = None,
        pattern: str = "*",
        mark_documents: bool = False,
        eval_batch_size: int | None = None,
        drop_last: bool = True,
        num_workers: int = 0,
        pin_memory: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        cache: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        predict_split: str = "test",
    ) -> None:
        super().__init__()
        _check_max_bytes(max_bytes)  # 0 or negative must not mean "everything"
        if predict_split not in _SPLITS:
            raise ValueError(f"Expected predict_split in {list(_SPLITS)}, got {predict_split!r}")
        check_bool("cache", cache)
        for name, value in (("batch_size", batch_size), ("bptt", bptt), ("eval_batch_size", eval_batch_size)):
            if name == "eval_batch_size" and value is None:
                continue
            check_int(name, value, min=1)
        check_int("num_workers", num_workers, min=0)
        check_int("min_freq", min_freq, min=1)
        check_int("max_size", max_size, min=1, allow_none=True)
        if level is not None and level not in _LEVELS:
            raise ValueError(f"Expected level in {sorted(_LEVELS)}, got {level!r}")
        for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            check_probability(name, frac)
        if val_fraction + test_fraction >= 1:
            raise ValueError(f"Expected val_fraction + test_fraction < 1, got {val_fraction + test_fraction}")
        check_int("world_size", world_size, min=1, allow_none=True)
        if (rank is None) != (world_size is None):
            raise ValueError(f"Expected rank and world_size given together, got rank={rank!r}, world_size={world_size!r}")
        if rank is not None:
            check_int("rank", rank, min=0, max=world_size - 1)
        if isinstance(vocab, str | Path):
            vocab = Vocab.load(vocab)
        if vocab is not None and not isinstance(vocab, Vocab):
            raise TypeError(f"Expected vocab to be a Vocab, a path to a saved one, or None, got {type(vocab).__name__}")
        if vocab is not None:
            kind = vocab.kind
            if level is not None and level != kind:
                raise ValueError(f"Expected level={kind!r} for the given {type(vocab).__name__}, got level={level!r}")
            level = kind
        self.source = source
        self.batch_size = batch_size
        self.bptt = bptt
        self.level: str = level or "char"
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.min_freq = min_freq
        self.max_size = max_size
        self.max_bytes = max_bytes
        self.pattern = pattern
        self.mark_documents = check_bool("mark_documents", mark_documents)
        self.eval_batch_size = eval_batch_size
        self.drop_last = check_bool("drop_last", drop_last)
        self.num_workers = num_workers
        self.pin_memory = check_bool("pin_memory", pin_memory)
        self.rank = rank
        self.world_size = world_size
        self.cache = cache
        self.cache_dir = cache_dir
        self.predict_split = predict_split
        self.vocab: Vocab | None = vocab
        # {"train" | "val" | "test": (ids (M,) in the corpus's compact dtype, document-start offsets (D,) int64
        # relative to the split)}, filled once by setup()
        self._splits: dict[str, tuple[Tensor, Tensor]] | None = None

    # ------------------------------------------------------------------ setup
    @property
    def vocab_size(self) -> int:
        """Size of the vocabulary (reads the source and builds it if needed)."""
        self._load()
        return len(self.vocab)  # type: ignore[arg-type]

    def _source_spec(self) -> tuple[Any, int | None]:
        """The source to read and the character cap."""
        if self.source is None:
            cap = self.max_bytes or _DEFAULT_CORPUS_BYTES
            return [str(p) for p in stdlib_corpus_files(cap)], cap
        source = self.source
        if isinstance(source, tuple):
            source = list(source)
        return source, self.max_bytes

    def _corpus(self) -> TokenCorpus:
        """The tokenised source: from the cache when built before (see the class docstring)."""
        source, cap = self._source_spec()
        cache_dir = (self.cache_dir if self.cache_dir is not None else default_cache_dir()) if self.cache else None
        return TokenCorpus.load(
            source,
            level=self.level,
            vocab=self.vocab,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            min_freq=self.min_freq,
            max_size=self.max_size,
            max_chars=cap,
            pattern=self.pattern,
            cache_dir=cache_dir,
        )

    def _load(self) -> None:
        """Tokenise (or open the cached tokens of) the source and split it, once (idempotent)."""
        if self._splits is not None:
            return
        corpus = self._corpus()
        n = len(corpus)
        if n == 0:
            raise ValueError(f"Expected some {self.level} tokens in the source, got none (read: {self._describe()})")
        if self.vocab is None:
            self.vocab = corpus.vocab
        n_train, n_val, _ = split_sizes(n, self.val_fraction, self.test_fraction)
        offsets = torch.from_numpy(np.unique(corpus.doc_offsets))
        bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}
        self._splits = {
            name: (corpus.tensor(a, b), offsets[(offsets >= a) & (offsets < b)] - a) for name, (a, b) in bounds.items()
        }

    def _describe(self) -> str:
        source, _ = self._source_spec()
        items = source if isinstance(source, list) else [source]
        return ", ".join(str(x)[:80] for x in items[:3])

    def prepare_data(self) -> None:
        """Tokenise a file / directory source into the on-disk cache (once; Lightning runs this on one process
        per node, before :meth:`setup` on every rank)."""
        if self.cache and self._splits is None:
            source, _ = self._source_spec()
            if not any(isinstance(part, str) for part in resolve_text_source(source, pattern=self.pattern)):
                self._corpus()  # a literal-string source is tokenised in memory by setup() instead

    def setup(self, stage: str | None = None) -> None:
        """Open the tokenised source (building it when :meth:`prepare_data` did not), split it, and set
        ``dm.vocab`` when it was built from the training split (once; later calls do nothing)."""
        self._load()

    def _rank_world(self) -> tuple[int, int]:
        if self.world_size is not None:
            return int(self.rank), self.world_size  # type: ignore[arg-type]
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return int(trainer.global_rank), int(trainer.world_size)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def streams(self, split: str) -> tuple[Tensor, Tensor]:
        """This rank's streams of ``split``: token ids (a view in the corpus's compact integer dtype) and
        document starts (bool), both ``(B, n)``.

        Raises:
            ValueError: the split is too short for ``B x world_size`` streams of ``bptt + 1`` tokens.
        """
        ids, positions = self._rank_streams(split)
        starts = torch.zeros(ids.numel(), dtype=torch.bool)
        starts[positions] = True
        return ids, starts.view(ids.shape)

    def _rank_streams(self, split: str) -> tuple[Tensor, Tensor]:
        """This rank's token ids ``(B, n)`` (a view) and its document starts as sorted positions ``b * n + c``."""
        if split not in _SPLITS:
            raise ValueError(f"Expected split in {list(_SPLITS)}, got {split!r}")
        self._load()
        ids, offsets = self._splits[split]  # type: ignore[index]
        rank, world = self._rank_world()
        per_rank = self.batch_size if split == "train" else (self.eval_batch_size or self.batch_size)
        rows = per_rank * world
        needed = rows * (self.bptt + 1)
        if ids.numel() < needed:
            raise ValueError(
                f"Expected at least {needed} tokens in the {split} split for {rows} streams "
                f"(batch size {per_rank} x world size {world}) of bptt + 1 = {self.bptt + 1} tokens, got "
                f"{ids.numel()} tokens. Use a longer corpus, a smaller batch_size/bptt, or change the fractions."
            )
        streams = batchify(ids, rows)  # (rows, n)
        n = streams.shape[1]
        lo, hi = rank * per_rank * n, (rank + 1) * per_rank * n  # this rank's block, row-major
        mine = offsets[(offsets >= lo) & (offsets < hi)] - lo
        return streams[rank * per_rank : (rank + 1) * per_rank], mine

    def dataset(self, split: str) -> StreamChunks:
        """This rank's chunks of ``split`` with the current ``bptt`` (item ``i`` = batch ``i``)."""
        ids, positions = self._rank_streams(split)
        return StreamChunks(ids, self.bptt, positions if self.mark_documents else None, drop_last=self.drop_last)

    def _loader(self, split: str, loader_class: type[DataLoader] = DataLoader) -> DataLoader:
        dataset = self.dataset(split)
        rank, world = self._rank_world()
        return loader_class(  # its own generator: no draw from the global RNG per epoch (exact resume)
            dataset,
            batch_size=None,  # items are whole (B, bptt) batches
            generator=torch.Generator(),
            sampler=_InOrderStreamSampler(dataset, rank, world),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """The training split's chunks, in order; a stateful loader (``state_dict`` / ``load_state_dict``)."""
        return self._loader("train", _StreamLoader)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val") if self.val_fraction > 0 else []

    def test_dataloader(self) -> DataLoader | list:
        return self._loader("test") if self.test_fraction > 0 else []

    def predict_dataloader(self) -> DataLoader:
        """The ``predict_split`` split (default: test) as consecutive chunks, like :meth:`test_dataloader`.

        Raises:
            ValueError: that split is empty (its fraction is 0).
        """
        fraction = {"train": 1.0, "val": self.val_fraction, "test": self.test_fraction}[self.predict_split]
        if fraction <= 0:
            raise ValueError(
                f"Expected predict_split={self.predict_split!r} to name a non-empty split, got "
                f"{self.predict_split}_fraction=0; set predict_split or the fraction."
            )
        return self._loader(self.predict_split)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The vocabulary and chunk length travel with Lightning checkpoints (a trained model can be sampled
        later, and a resumed run encodes the text as the first one did)."""
        return {"vocab": self.vocab.to_dict() if self.vocab is not None else None, "bptt": self.bptt}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("vocab") is not None:
            vocab = Vocab.from_dict(state_dict["vocab"])
            if vocab != self.vocab:
                self.vocab = vocab
                self.level = vocab.kind
                self._splits = None  # re-encode with the restored vocabulary on next use
        self.bptt = state_dict.get("bptt", self.bptt)
