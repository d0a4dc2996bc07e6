"""Sequence-to-sequence batches: a padding collate with BOS/EOS, and a generated reversal task (dataset and
data module).

Batch layout used by :class:`lightning_rnn.Seq2SeqAttention` (a dict with these keys, or the same four
tensors as a tuple in this order)::

    src          (N, S) long   source ids, padded with pad_id
    src_lengths  (N,)   long   true source lengths (>= 1)
    tgt_in       (N, T) long   [BOS, y_1, ..., y_m] padded with pad_id   (decoder input)
    tgt_out      (N, T) long   [y_1, ..., y_m, EOS] padded with pad_id   (what is predicted)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_rnn._validation import check_bool, check_int
from lightning_rnn.data.synthetic import _GeneratedDataModule

__all__ = ["SPECIALS", "Seq2SeqCollate", "ReversalDataModule", "ReversalDataset", "seq2seq_collate"]

#: default special ids used by the helpers here: PAD=0, BOS=1, EOS=2 (symbols start at 3)
SPECIALS = {"pad": 0, "bos": 1, "eos": 2}


def _check_ids(pad_id: int, bos_id: int, eos_id: int, src_eos: bool) -> None:
    check_bool("src_eos", src_eos)
    for name, value in (("pad_id", pad_id), ("bos_id", bos_id), ("eos_id", eos_id)):
        check_int(name, value, min=0)
    if pad_id == eos_id:
        raise ValueError(f"Expected pad_id different from eos_id (padding would hide every EOS), got {pad_id} for both")


def seq2seq_collate(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    pad_id: int = 0,
    bos_id: int = 1,
    eos_id: int = 2,
    src_eos: bool = False,
) -> dict[str, Tensor]:
    """Pad a list of ``(source ids, target ids)`` pairs into a seq2seq batch.

    Args:
        pairs: token-id sequences without specials; every source must be non-empty.
        pad_id / bos_id / eos_id: special ids.
        src_eos: append EOS to every source too.

    Returns:
        dict with ``src`` (N, S), ``src_lengths`` (N,), ``tgt_in`` (N, T), ``tgt_out`` (N, T).

    Example::

        >>> b = seq2seq_collate([([5, 6, 7], [7, 6, 5]), ([8], [8])])
        >>> b["src"].tolist(), b["src_lengths"].tolist()
        ([[5, 6, 7], [8, 0, 0]], [3, 1])
        >>> b["tgt_in"].tolist(), b["tgt_out"].tolist()
        ([[1, 7, 6, 5], [1, 8, 0, 0]], [[7, 6, 5, 2], [8, 2, 0, 0]])
    """
    _check_ids(pad_id, bos_id, eos_id, src_eos)
    if len(pairs) == 0:
        raise ValueError("Expected at least one (source, target) pair, got an empty list")
    srcs = [list(s) + ([eos_id] if src_eos else []) for s, _ in pairs]
    tgts = [list(t) for _, t in pairs]
    for i, s in enumerate(srcs):
        if len(s) == 0:
            raise ValueError(f"Expected non-empty source sequences, got an empty one at index {i}")
    n, s_len, t_len = len(pairs), max(map(len, srcs)), max(map(len, tgts)) + 1
    src = torch.full((n, s_len), pad_id, dtype=torch.long)
    tgt_in = torch.full((n, t_len), pad_id, dtype=torch.long)
    tgt_out = torch.full((n, t_len), pad_id, dtype=torch.long)
    for i, (s, t) in enumerate(zip(srcs, tgts)):
        src[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        tgt_in[i, : len(t) + 1] = torch.as_tensor([bos_id, *t], dtype=torch.long)
        tgt_out[i, : len(t) + 1] = torch.as_tensor([*t, eos_id], dtype=torch.long)
    lengths = torch.as_tensor([len(s) for s in srcs], dtype=torch.long)
    return {"src": src, "src_lengths": lengths, "tgt_in": tgt_in, "tgt_out": tgt_out}


class Seq2SeqCollate:
    """Picklable ``collate_fn`` wrapper around :func:`seq2seq_collate` (for ``DataLoader(num_workers>0)``)."""

    def __init__(self, pad_id: int = 0, bos_id: int = 1, eos_id: int = 2, src_eos: bool = False) -> None:
        _check_ids(pad_id, bos_id, eos_id, src_eos)
        self.kwargs = {"pad_id": pad_id, "bos_id": bos_id, "eos_id": eos_id, "src_eos": src_eos}

    def __call__(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> dict[str, Tensor]:
        return seq2seq_collate(pairs, **self.kwargs)


class ReversalDataset(Dataset):
    """Generated reversal task (joeynmt's): the target is the source read backwards.

    Symbols are integers ``0 .. num_symbols-1`` shifted by ``offset`` (3 by default: PAD/BOS/EOS come
    first), lengths uniform in ``[min_len, max_len]``. Item ``i`` is deterministic given ``seed``.

    Example::

        >>> ds = ReversalDataset(4, num_symbols=10, min_len=2, max_len=5, seed=0)
        >>> src, tgt = ds[0]
        >>> tgt == src[::-1] and 2 <= len(src) <= 5 and min(src) >= 3
        True
    """

    def __init__(
        self,
        num_samples: int,
        *,
        num_symbols: int = 50,
        min_len: int = 1,
        max_len: int = 25,
        offset: int = 3,
        seed: int = 0,
    ) -> None:
        check_int("num_samples", num_samples, min=1)
        check_int("num_symbols", num_symbols, min=1)
        check_int("min_len", min_len, min=1)
        check_int("max_len", max_len, min=1)
        check_int("offset", offset, min=0)
        check_int("seed", seed)
        if not 1 <= min_len <= max_len:
            raise ValueError(f"Expected 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(min_len, max_len + 1, (num_samples,), generator=g)
        self.samples: list[list[int]] = [
            (torch.randint(0, num_symbols, (int(n),), generator=g) + offset).tolist() for n in lengths
        ]
        self.vocab_size = num_symbols + offset

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[list[int], list[int]]:
        src = self.samples[index]
        return src, src[::-1]


class ReversalDataModule(_GeneratedDataModule):
    """The reversal task (joeynmt's) as a data module for :class:`~lightning_rnn.Seq2SeqAttention`.

    Sources are integers ``0 .. num_symbols-1`` (ids shifted by 3: PAD=0, BOS=1, EOS=2 come first), the
    target is the source read backwards. Train and validation lengths are uniform in ``[1, train_max_len]``;
    test lengths in ``[1, test_max_len]``, so with the defaults (25 / 30) the test set also has lengths the
    model never saw. The three splits use seeds ``seed + 1``, ``seed + 2``, ``seed + 3`` (the validation
    set is a fresh sample, not a slice of the training set). Batches are :func:`seq2seq_collate` dicts
    ``{"src" (N, S), "src_lengths" (N,), "tgt_in" (N, T), "tgt_out" (N, T)}``; the training set is
    shuffled every epoch; ``predict_dataloader`` hands out the test split.

    ``src_vocab_size`` / ``tgt_vocab_size`` (``num_symbols + 3``) and ``pad_id`` / ``bos_id`` / ``eos_id``
    fill in the model's ``src_vocab`` / ``tgt_vocab`` / special ids in the ``lightning-rnn`` CLI.

    Args:
        num_train, num_val, num_test: pairs per split (``num_val`` / ``num_test`` may be 0: no loader).
        num_symbols: size of the symbol alphabet (50: integers 0-49).
        train_max_len: longest training / validation source.
        test_max_len: longest test source (>= 1).
        batch_size: pairs per training batch; eval_batch_size: per validation / test batch.
        seed: the data is a deterministic function of the arguments.
        num_workers: passed to the ``DataLoader``.

    Example::

        >>> dm = ReversalDataModule(num_train=8, num_val=4, num_test=4, batch_size=4)
        >>> dm.setup("fit")
        >>> b = next(iter(dm.val_dataloader()))
        >>> n = int(b["src_lengths"][0])
        >>> b["tgt_out"][0, :n].tolist() == b["src"][0, :n].flip(0).tolist(), dm.src_vocab_size
        (True, 53)
    """

    pad_id = SPECIALS["pad"]
    bos_id = SPECIALS["bos"]
    eos_id = SPECIALS["eos"]

    def __init__(
        self,
        num_train: int = 20_000,
        num_val: int = 500,
        num_test: int = 1_000,
        num_symbols: int = 50,
        train_max_len: int = 25,
        test_max_len: int = 30,
        batch_size: int = 64,
        eval_batch_size: int = 250,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        check_int("num_symbols", num_symbols, min=1)
        check_int("train_max_len", train_max_len, min=1)
        check_int("test_max_len", test_max_len, min=1)
        super().__init__(num_train, num_val, num_test, batch_size, eval_batch_size, seed, num_workers)
        self.num_symbols = num_symbols
        self.train_max_len, self.test_max_len = train_max_len, test_max_len

    @property
    def src_vocab_size(self) -> int:
        """Source vocabulary size: the symbols plus PAD/BOS/EOS."""
        return self.num_symbols + len(SPECIALS)

    @property
    def tgt_vocab_size(self) -> int:
        """Target vocabulary size (the source's: the target is the reversed source)."""
        return self.src_vocab_size

    def _make_split(self, name: str, n: int) -> ReversalDataset:
        """The :class:`ReversalDataset` of a split (seeds ``seed + 1``, ``+ 2``, ``+ 3``)."""
        max_len = self.test_max_len if name == "test" else self.train_max_len
        offset = {"train": 1, "val": 2, "test": 3}[name]
        return ReversalDataset(n, num_symbols=self.num_symbols, min_len=1, max_len=max_len, offset=len(SPECIALS),
                               seed=self.seed + offset)

    def collate_fn(self, batch: list[tuple[list[int], list[int]]]) -> dict[str, Tensor]:
        """:class:`Seq2SeqCollate` with this data module's special ids."""
        return Seq2SeqCollate(pad_id=self.pad_id, bos_id=self.bos_id, eos_id=self.eos_id)(batch)
