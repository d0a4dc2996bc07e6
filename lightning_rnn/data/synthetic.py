"""Generated bit streams tagged step by step: running parity and delayed copy (long-range dependencies).

Each item is a random bit stream ``x_1..x_T`` (``T`` uniform in ``[length // 2, length]``) with one label per
step:

- ``"parity"``: ``y_t = x_1 xor ... xor x_t`` — one bit of memory updated every step; truncated BPTT with a
  small chunk length learns it (the update rule only needs one step of gradient);
- ``"delay"``: ``y_t = x_{t-d}`` (``0`` for ``t <= d``) — the label depends on the input ``d`` steps back, so
  TBPTT with ``tbptt_steps <= d`` cannot learn it (``x_{t-d}`` is never in ``y_t``'s chunk; accuracy stays
  near 0.5) and ``tbptt_steps > d`` can.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_rnn._validation import check_int
from lightning_rnn.data.collate import pad_collate
from lightning_rnn.data.loaders import eval_loader, train_loader

__all__ = ["BIT_TASKS", "BitStreamTaggingDataModule", "make_bit_streams"]

#: the tasks :func:`make_bit_streams` generates
BIT_TASKS = ("parity", "delay")


class _GeneratedDataModule(LightningDataModule):
    """Base of the generated-data modules: each split made once by :meth:`split`, one loader per split.

    Subclasses define ``_make_split(name, n)`` (the dataset of a split) and ``collate_fn``. ``predict`` uses
    the test split.
    """

    _STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}

    def __init__(self, num_train: int, num_val: int, num_test: int, batch_size: int, eval_batch_size: int,
                 seed: int, num_workers: int) -> None:
        super().__init__()
        check_int("num_train", num_train, min=1)
        check_int("num_val", num_val, min=0)
        check_int("num_test", num_test, min=0)
        check_int("batch_size", batch_size, min=1)
        check_int("eval_batch_size", eval_batch_size, min=1)
        check_int("num_workers", num_workers, min=0)
        check_int("seed", seed)
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.seed, self.num_workers = seed, num_workers
        self._splits: dict[str, Any] = {}

    def _make_split(self, name: str, n: int) -> Any:
        """The dataset of split ``name`` with ``n >= 1`` items."""
        raise NotImplementedError

    def split(self, name: str) -> Any:
        """The dataset of ``"train"``, ``"val"`` or ``"test"`` (made once; None for 0 items)."""
        sizes = {"train": self.num_train, "val": self.num_val, "test": self.num_test}
        if name not in sizes:
            raise ValueError(f"Expected a split in {list(sizes)}, got {name!r}")
        if name not in self._splits:
            self._splits[name] = self._make_split(name, sizes[name]) if sizes[name] else None
        return self._splits[name]

    def collate_fn(self, batch: list[Any]) -> dict[str, Tensor]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Generate the splits the stage needs (once; later calls reuse them)."""
        for name in self._STAGE_SPLITS.get(stage or "", ("train", "val", "test")):
            self.split(name)

    def _loader(self, name: str, batch_size: int, shuffle: bool) -> DataLoader | list:
        items = self.split(name)
        if items is None or len(items) == 0:
            return []
        if shuffle:  # training: resumable mid-epoch (Lightning saves its position in checkpoints)
            return train_loader(items, batch_size, seed=self.seed, collate_fn=self.collate_fn,
                                num_workers=self.num_workers)
        return eval_loader(items, batch_size, collate_fn=self.collate_fn, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader | list:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader | list:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader | list:
        """The test split's batches (``trainer.predict`` ignores their labels / targets)."""
        return self._loader("test", self.eval_batch_size, shuffle=False)


def make_bit_streams(task: str, n: int, length: int, delay: int = 15, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """``n`` random bit streams of random length in ``[length // 2, length]``, tagged for ``task``.

    Args:
        task: ``"parity"`` (running xor) or ``"delay"`` (the input ``delay`` steps back).
        n: number of streams.
        length: maximum length ``T`` (>= 2).
        delay: ``d >= 1`` of the ``"delay"`` task (ignored for ``"parity"``).
        seed: the streams are a deterministic function of all arguments.

    Returns:
        ``[(x, y), ...]``: ``x`` and ``y`` long tensors ``(T_i,)`` with values in ``{0, 1}``.

    Example::

        >>> (x, y), = make_bit_streams("delay", 1, length=10, delay=2, seed=0)
        >>> bool((y[2:] == x[:-2]).all()) and y[:2].tolist() == [0, 0]
        True
        >>> (x, y), = make_bit_streams("parity", 1, length=10)
        >>> torch.equal(y, x.cumsum(0) % 2)
        True
    """
    if task not in BIT_TASKS:
        raise ValueError(f"Expected task in {BIT_TASKS}, got {task!r}")
    check_int("n", n, min=1)
    check_int("length", length, min=2)
    check_int("delay", delay, min=1)
    check_int("seed", seed)
    if task == "delay" and delay >= length:
        raise ValueError(f"Expected delay < length ({length}) for task='delay' (else every label is 0), got {delay}")
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        t = int(torch.randint(length // 2, length + 1, (1,), generator=g))
        x = torch.randint(0, 2, (t,), generator=g)  # (T,)
        if task == "parity":
            y = torch.cumsum(x, 0) % 2
        else:
            y = torch.zeros_like(x)
            if t > delay:
                y[delay:] = x[:-delay]
        items.append((x, y))
    return items


class BitStreamTaggingDataModule(_GeneratedDataModule):
    """Generated bit-stream tagging (running parity or delayed copy) for :class:`~lightning_rnn.RNNTagger`.

    Train / val / test are :func:`make_bit_streams` with seeds ``seed``, ``seed + 1``, ``seed + 2``; batches
    are :func:`~lightning_rnn.data.pad_collate` dicts ``{"inputs" (N, L), "lengths" (N,), "mask" (N, L),
    "labels" (N, L)}`` (labels padded with ``-100``, the tagger's default ``pad_id``). The training
    set is shuffled every epoch. ``vocab_size`` (2, the input bits) and ``num_classes`` (2) fill in the
    tagger's arguments in the ``lightning-rnn`` CLI.

    Args:
        task: ``"parity"`` or ``"delay"``.
        length: maximum stream length ``T`` (each stream has a random length in ``[T // 2, T]``).
        delay: ``d`` of the delay task.
        num_train, num_val, num_test: streams per split (``num_val`` / ``num_test`` may be 0: no loader).
        batch_size: streams per training batch; eval_batch_size: per validation / test batch.
        seed: the data is a deterministic function of the arguments.
        num_workers: passed to the ``DataLoader``.

    Example::

        >>> dm = BitStreamTaggingDataModule("delay", length=20, delay=3, num_train=8, batch_size=4)
        >>> dm.setup("fit")
        >>> batch = next(iter(dm.train_dataloader()))
        >>> tuple(batch["inputs"].shape[:1]), dm.vocab_size, dm.num_classes
        ((4,), 2, 2)
    """

    vocab_size = 2
    num_classes = 2

    def __init__(
        self,
        task: str = "parity",
        length: int = 200,
        delay: int = 15,
        num_train: int = 512,
        num_val: int = 128,
        num_test: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        if task not in BIT_TASKS:
            raise ValueError(f"Expected task in {BIT_TASKS}, got {task!r}")
        check_int("length", length, min=2)
        check_int("delay", delay, min=1)
        if task == "delay" and delay >= length:
            raise ValueError(f"Expected delay < length ({length}) for task='delay' (else every label is 0), got {delay}")
        super().__init__(num_train, num_val, num_test, batch_size, eval_batch_size, seed, num_workers)
        self.task, self.length, self.delay = task, length, delay

    def _make_split(self, name: str, n: int) -> list[tuple[Tensor, Tensor]]:
        """The ``(x, y)`` streams of a split (seeds ``seed``, ``seed + 1``, ``seed + 2``)."""
        offset = {"train": 0, "val": 1, "test": 2}[name]
        return make_bit_streams(self.task, n, self.length, self.delay, self.seed + offset)

    def collate_fn(self, batch: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        """:func:`~lightning_rnn.data.pad_collate` (labels padded with ``-100``)."""
        return pad_collate(batch)
