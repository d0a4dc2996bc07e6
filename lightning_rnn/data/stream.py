"""Text streams for truncated BPTT: B contiguous streams per rank, consecutive chunks, never shuffled."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from lightning_rnn.data.corpus import read_text_source, stdlib_corpus_files
from lightning_rnn.data.vocab import CharVocab, Vocab, WordVocab

__all__ = ["StreamChunks", "TextStreamDataModule", "batchify"]

_LEVELS = {"char": CharVocab, "word": WordVocab}


def batchify(tokens: Tensor, rows: int) -> Tensor:
    """Lay a 1-D token stream out as ``rows`` contiguous streams: ``(rows, n)`` with ``n = len // rows``.

    Row ``b`` holds tokens ``[b*n, (b+1)*n)``; the tail that does not fill a row is dropped (AWD-LSTM).
    """
    n = tokens.numel() // rows
    return tokens[: n * rows].view(rows, n)


class StreamChunks(IterableDataset):
    """Consecutive ``(inputs, targets)`` chunks ``(B, bptt)`` of a batchified stream ``(B, n)``.

    Chunk ``i`` is columns ``[i*bptt, (i+1)*bptt)``; targets are shifted by one, so chunk ``i+1`` of every row
    starts exactly where chunk ``i`` ended. Only full chunks are produced (``(n - 1) // bptt`` of them).
    With ``resets`` (bool ``(B, n)``, True where a document starts), batches are dicts with a ``"reset"``
    entry ``(B,)``: True for rows where a document started inside the previous chunk or at this chunk's
    first position — the model then restarts those rows' state at this chunk (at most ``bptt`` tokens of
    the new document are read with the old document's state).

    An ``IterableDataset``, so Lightning never injects a (shuffling) ``DistributedSampler``: each rank is
    given its own streams by :class:`TextStreamDataModule`.
    """

    def __init__(self, streams: Tensor, bptt: int, resets: Tensor | None = None) -> None:
        super().__init__()
        self.streams = streams
        self.bptt = bptt
        self.resets = resets

    def __len__(self) -> int:
        return max(0, (self.streams.shape[1] - 1) // self.bptt)

    def __iter__(self) -> Iterator[Any]:
        k = self.bptt
        for i in range(len(self)):
            inputs = self.streams[:, i * k : (i + 1) * k]
            targets = self.streams[:, i * k + 1 : (i + 1) * k + 1]
            if self.resets is None:
                yield inputs, targets
            else:
                lo = max(0, (i - 1) * k + 1)
                reset = self.resets[:, lo : i * k + 1].any(dim=1)
                yield {"inputs": inputs, "targets": targets, "reset": reset}


class TextStreamDataModule(LightningDataModule):
    """A text corpus as streams of token ids for truncated-BPTT language modelling.

    The source is tokenised (characters by default), split contiguously into train / val / test (by
    fraction), and each split is laid out as ``batch_size x world_size`` contiguous streams. Batches are
    consecutive ``(inputs, targets)`` LongTensor chunks ``(batch_size, bptt)`` (targets shifted by one): batch
    ``i+1`` of every row begins exactly where batch ``i`` ended, so a model can carry its state across batches
    (``RNNLanguageModel(carry_state=True)``). Nothing is ever shuffled. Under DDP, rank ``r`` owns rows
    ``[r*batch_size, (r+1)*batch_size)`` of the global layout (contiguous blocks of the corpus, fairseq-style)
    and every rank yields the same number of batches.

    Args:
        source: a text file, a directory of text files (``pattern`` selects them; one document per file), a
            literal string, or ``None`` for the default corpus: the Python standard library's own ``*.py``
            files (:func:`stdlib_corpus_files`, a few MB of real text present on every machine).
        batch_size: B, streams per rank.
        bptt: chunk length handed out. Changing it takes effect when the dataloaders are rebuilt.
        vocab: a :class:`Vocab` or a path to a saved one; ``None`` builds it from the training split.
        level: ``"char"`` or ``"word"`` (whitespace tokens) when the vocabulary is built here.
        val_fraction, test_fraction: contiguous tail fractions of the token stream.
        min_freq, max_size: vocabulary-building options.
        max_bytes: read at most this many characters of the source (default: 4 MB for the stdlib corpus).
        mark_documents: give batches as dicts with a ``"reset"`` entry at document (file) boundaries.

    Example::

        >>> dm = TextStreamDataModule("abcdefghij" * 40, batch_size=2, bptt=8, val_fraction=0.1, test_fraction=0.1)
        >>> dm.setup("fit")
        >>> inputs, targets = next(iter(dm.train_dataloader()))
        >>> tuple(inputs.shape), bool((inputs[:, 1:] == targets[:, :-1]).all())
        ((2, 8), True)
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | None = None,
        batch_size: int = 32,
        bptt: int = 64,
        vocab: Vocab | str | None = None,
        level: str = "char",
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        min_freq: int = 1,
        max_size: int | None = None,
        max_bytes: int | None = None,
        pattern: str = "*",
        mark_documents: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("bptt", bptt)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Expected {name} to be a positive int, got {value!r}")
        if level not in _LEVELS:
            raise ValueError(f"Expected level in {sorted(_LEVELS)}, got {level!r}")
        for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 <= frac < 1:
                raise ValueError(f"Expected {name} in [0, 1), got {frac}")
        if val_fraction + test_fraction >= 1:
            raise ValueError(f"Expected val_fraction + test_fraction < 1, got {val_fraction + test_fraction}")
        self.source = source
        self.batch_size = batch_size
        self.bptt = bptt
        self.level = level
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.min_freq = min_freq
        self.max_size = max_size
        self.max_bytes = max_bytes
        self.pattern = pattern
        self.mark_documents = mark_documents
        self.vocab: Vocab | None = Vocab.load(vocab) if isinstance(vocab, str | Path) else vocab
        self._splits: dict[str, tuple[Tensor, Tensor]] | None = None

    # ------------------------------------------------------------------ setup
    @property
    def vocab_size(self) -> int:
        """Size of the vocabulary (builds it from the source if needed)."""
        if self.vocab is None:
            self._load()
        return len(self.vocab)  # type: ignore[arg-type]

    def _documents(self) -> list[tuple[str, str]]:
        if self.source is None:
            files = stdlib_corpus_files(self.max_bytes or 4_000_000)
            return read_text_source([str(p) for p in files], max_bytes=self.max_bytes or 4_000_000)
        return read_text_source(self.source, pattern=self.pattern, max_bytes=self.max_bytes)

    def _load(self) -> None:
        if self._splits is not None:
            return
        docs = self._documents()
        text = "".join(t for _, t in docs) if self.level == "char" else "\n".join(t for _, t in docs)
        cls = _LEVELS[self.level]
        toks = cls.tokenize(text)
        n = len(toks)
        n_test = int(n * self.test_fraction)
        n_val = int(n * self.val_fraction)
        n_train = n - n_val - n_test
        if self.vocab is None:
            self.vocab = cls.build(cls.join(toks[:n_train]), min_freq=self.min_freq, max_size=self.max_size)
        vocab = self.vocab
        ids = torch.tensor([vocab.stoi.get(t, vocab.unk_id) for t in toks], dtype=torch.long)
        starts = torch.zeros(n, dtype=torch.bool)
        pos = 0
        for _, doc in docs:
            starts[min(pos, n - 1)] = True
            pos += len(cls.tokenize(doc)) + (0 if self.level == "char" else 0)
        bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}
        self._splits = {name: (ids[a:b], starts[a:b]) for name, (a, b) in bounds.items()}

    def setup(self, stage: str | None = None) -> None:
        self._load()

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def streams(self, split: str) -> tuple[Tensor, Tensor]:
        """This rank's streams of ``split``: ``(batch_size, n)`` token ids and document starts."""
        self._load()
        ids, starts = self._splits[split]  # type: ignore[index]
        rank, world = self._rank_world()
        rows = self.batch_size * world
        needed = rows * (self.bptt + 1)
        if ids.numel() < needed:
            raise ValueError(
                f"Expected at least {needed} tokens in the {split} split for {rows} streams "
                f"(batch_size={self.batch_size} x world_size={world}) of bptt + 1 = {self.bptt + 1} tokens, got "
                f"{ids.numel()} tokens. Use a longer corpus, a smaller batch_size/bptt, or change the fractions."
            )
        block = slice(rank * self.batch_size, (rank + 1) * self.batch_size)
        return batchify(ids, rows)[block], batchify(starts, rows)[block]

    def _loader(self, split: str) -> DataLoader:
        ids, starts = self.streams(split)
        dataset = StreamChunks(ids, self.bptt, starts if self.mark_documents else None)
        return DataLoader(dataset, batch_size=None)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val") if self.val_fraction > 0 else []

    def test_dataloader(self) -> DataLoader | list:
        return self._loader("test") if self.test_fraction > 0 else []

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The vocabulary travels with Lightning checkpoints, so a trained model can be sampled later."""
        return {"vocab": self.vocab.to_dict() if self.vocab is not None else None, "bptt": self.bptt}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("vocab") is not None:
            self.vocab = Vocab.from_dict(state_dict["vocab"])
        self.bptt = state_dict.get("bptt", self.bptt)
