"""Length bucketing: batches of similar lengths, to cut padding."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

__all__ = ["BucketBatchSampler"]


class BucketBatchSampler(Sampler[list[int]]):
    """Yield batches of indices whose sequences have similar lengths.

    Indices are shuffled (seeded by ``seed + epoch``, see :meth:`set_epoch`), cut into pools of
    ``batch_size * bucket_size_multiplier``, each pool sorted by length and cut into batches; the batches are
    shuffled again. Every index appears exactly once per epoch (the last batch may be smaller unless
    ``drop_last``). Use as ``DataLoader(ds, batch_sampler=BucketBatchSampler(lengths, 32), collate_fn=pad_collate)``.

    Example::

        >>> s = BucketBatchSampler([5, 1, 4, 2, 3, 6], batch_size=2, shuffle=False)
        >>> list(s)
        [[1, 3], [4, 2], [0, 5]]
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool = True,
        bucket_size_multiplier: int = 50,
        drop_last: bool = False,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"Expected batch_size >= 1, got {batch_size}")
        if bucket_size_multiplier < 1:
            raise ValueError(f"Expected bucket_size_multiplier >= 1, got {bucket_size_multiplier}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.pool = batch_size * bucket_size_multiplier
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        n = len(self.lengths)
        order = torch.randperm(n, generator=g).tolist() if self.shuffle else list(range(n))
        batches: list[list[int]] = []
        for p in range(0, n, self.pool):
            pool = sorted(order[p : p + self.pool], key=lambda i: self.lengths[i])
            for b in range(0, len(pool), self.batch_size):
                batch = pool[b : b + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return iter(batches)

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)
