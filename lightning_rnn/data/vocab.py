"""Vocabularies: characters or whitespace-separated words <-> token ids, saved as JSON."""

from __future__ import annotations

import json
import numbers
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_rnn._validation import check_int

__all__ = ["CharVocab", "WordVocab", "Vocab"]

UNK = "<unk>"


def _check_text(text: object) -> None:
    if not isinstance(text, str):
        raise TypeError(f"Expected text to be a str, got {type(text).__name__}")


def _check_build_args(min_freq: int, max_size: int | None) -> None:
    check_int("min_freq", min_freq, min=1)
    check_int("max_size", max_size, min=1, allow_none=True)


def _codepoints(text: str) -> Tensor:
    """Unicode code points of ``text`` as an int32 tensor ``(L,)`` (no Python loop over characters)."""
    if not text:
        return torch.zeros(0, dtype=torch.int32)
    return torch.frombuffer(bytearray(text.encode("utf-32-le", "surrogatepass")), dtype=torch.int32)


class Vocab:
    """Base vocabulary: an ordered list of tokens, id 0 is ``<unk>``.

    Subclasses define how text is split into tokens (:meth:`tokenize`) and joined back (:meth:`join`).
    """

    kind = "base"

    def __init__(self, tokens: Sequence[str]) -> None:
        if isinstance(tokens, str) or not all(isinstance(t, str) for t in tokens):
            raise ValueError(f"Expected tokens to be a sequence of strings, got {tokens!r}")
        tokens = list(tokens)
        if UNK not in tokens:
            tokens = [UNK, *tokens]
        if len(set(tokens)) != len(tokens):
            raise ValueError(f"Expected unique tokens, got {len(tokens) - len(set(tokens))} duplicates")
        self.itos: list[str] = tokens
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(tokens)}
        self.unk_id = self.stoi[UNK]

    # -- building
    @classmethod
    def tokenize(cls, text: str) -> list[str]:
        raise NotImplementedError

    @classmethod
    def join(cls, tokens: Iterable[str]) -> str:
        raise NotImplementedError

    @classmethod
    def build(cls, text: str, *, min_freq: int = 1, max_size: int | None = None) -> Vocab:
        """Build from text: tokens with at least ``min_freq`` occurrences, most frequent first (ties sorted),
        at most ``max_size`` of them (plus ``<unk>``)."""
        _check_text(text)
        return cls.from_counts(Counter(cls.tokenize(text)), min_freq=min_freq, max_size=max_size)

    from_text = build

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], *, min_freq: int = 1, max_size: int | None = None) -> Vocab:
        """Build from token counts (e.g. gathered in a streaming pass over a corpus): the same vocabulary
        :meth:`build` gives for a text with these counts.

        Example::

            >>> WordVocab.from_counts({"a": 3, "b": 1, "c": 3}, min_freq=2).itos
            ['<unk>', 'a', 'c']
        """
        _check_build_args(min_freq, max_size)
        kept = sorted((t for t, c in counts.items() if c >= min_freq and t != UNK), key=lambda t: (-counts[t], t))
        if max_size is not None:
            kept = kept[:max_size]
        return cls([UNK, *kept])

    # -- use
    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.itos == self.itos  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={len(self)})"

    def encode(self, text: str) -> Tensor:
        """Text -> LongTensor (L,) of ids; unseen tokens map to ``<unk>`` (id 0)."""
        _check_text(text)
        return torch.tensor([self.stoi.get(t, self.unk_id) for t in self.tokenize(text)], dtype=torch.long)

    def decode(self, ids: Tensor | Sequence[int]) -> str:
        """Ids ``(L,)`` -> text. Raises ValueError naming an id outside ``[0, len(vocab))``."""
        if isinstance(ids, Tensor):
            if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
                raise TypeError(f"Expected an integer tensor of token ids, got dtype {ids.dtype}")
            if ids.dim() > 1:
                raise ValueError(f"Expected token ids of shape (L,), got {tuple(ids.shape)}")
            values = ids.tolist()
        else:
            values = list(ids)
        size = len(self.itos)
        for j, i in enumerate(values):
            if isinstance(i, bool) or not isinstance(i, numbers.Integral):
                raise TypeError(f"Expected int token ids, got {i!r} ({type(i).__name__}) at position {j}")
            if not 0 <= i < size:
                raise ValueError(f"Expected token ids in [0, {size}), got id {i} at position {j} (vocabulary size {size})")
        return self.join(self.itos[int(i)] for i in values)

    # -- persistence
    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "tokens": self.itos}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Vocab:
        kinds = {"char": CharVocab, "word": WordVocab}
        if data.get("kind") not in kinds:
            raise ValueError(f"Expected a vocabulary kind in {sorted(kinds)}, got {data.get('kind')!r}")
        return kinds[data["kind"]](data["tokens"])

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        vocab = Vocab.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        if cls is not Vocab and not isinstance(vocab, cls):
            raise ValueError(f"Expected a {cls.__name__} in {path}, got {type(vocab).__name__}")
        return vocab


class CharVocab(Vocab):
    """Character vocabulary.

    Example::

        >>> v = CharVocab.build("hello world")
        >>> v.decode(v.encode("low"))
        'low'
        >>> v.decode(v.encode("lox"))  # unseen 'x' -> <unk>
        'lo<unk>'
    """

    kind = "char"

    def __init__(self, tokens: Sequence[str]) -> None:
        super().__init__(tokens)
        # dense code point -> id table for the single-character tokens (unk elsewhere)
        singles = {ord(t): i for i, t in enumerate(self.itos) if len(t) == 1}
        self._table = torch.full((max(singles, default=0) + 1,), self.unk_id, dtype=torch.long)
        if singles:
            self._table[torch.tensor(list(singles))] = torch.tensor(list(singles.values()))

    @classmethod
    def tokenize(cls, text: str) -> list[str]:
        return list(text)

    @classmethod
    def build(cls, text: str, *, min_freq: int = 1, max_size: int | None = None) -> CharVocab:
        """Build from text: characters with at least ``min_freq`` occurrences, most frequent first (ties by
        code point), at most ``max_size`` of them (plus ``<unk>``)."""
        _check_text(text)
        return cls.from_codepoint_counts(torch.bincount(_codepoints(text)), min_freq=min_freq, max_size=max_size)

    from_text = build

    @classmethod
    def from_codepoint_counts(
        cls, counts: Tensor, *, min_freq: int = 1, max_size: int | None = None
    ) -> CharVocab:
        """Build from a histogram over code points (``counts[c]`` = occurrences of ``chr(c)``, e.g. summed
        ``torch.bincount`` of chunks): the same vocabulary :meth:`build` gives for a text with these counts.

        Example::

            >>> CharVocab.from_codepoint_counts(torch.bincount(torch.tensor([98, 97, 98]))).itos
            ['<unk>', 'b', 'a']
        """
        _check_build_args(min_freq, max_size)
        counts = torch.as_tensor(counts)
        present = (counts >= min_freq).nonzero().flatten()  # code points, ascending
        kept = [(chr(c), n) for c, n in zip(present.tolist(), counts[present].tolist())]
        kept.sort(key=lambda tc: -tc[1])  # stable: ties stay in code-point order
        chars = [t for t, _ in kept]
        if max_size is not None:
            chars = chars[:max_size]
        return cls([UNK, *chars])

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], *, min_freq: int = 1, max_size: int | None = None) -> CharVocab:
        """Build from character counts: ties are broken by code point, as in :meth:`build`."""
        for t in counts:
            if len(t) != 1:
                raise ValueError(f"Expected single characters as CharVocab counts keys, got {t!r}")
        return super().from_counts(counts, min_freq=min_freq, max_size=max_size)  # type: ignore[return-value]

    def encode(self, text: str) -> Tensor:
        """Text -> LongTensor (L,) of ids, one per character; unseen characters map to ``<unk>``."""
        _check_text(text)
        cps = _codepoints(text).long()
        if cps.numel() == 0:
            return torch.zeros(0, dtype=torch.long)
        known = cps < self._table.numel()
        return torch.where(known, self._table[cps.clamp(max=self._table.numel() - 1)], self.unk_id)

    @classmethod
    def join(cls, tokens: Iterable[str]) -> str:
        return "".join(tokens)


class WordVocab(Vocab):
    """Whitespace-token vocabulary with ``min_freq`` / ``max_size`` and ``<unk>``.

    Example::

        >>> v = WordVocab.build("the cat the dog", min_freq=2)
        >>> v.decode(v.encode("the cat"))
        'the <unk>'
    """

    kind = "word"

    @classmethod
    def tokenize(cls, text: str) -> list[str]:
        return text.split()

    @classmethod
    def join(cls, tokens: Iterable[str]) -> str:
        return " ".join(tokens)
