"""Length bucketing: batches of similar lengths, to cut padding."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from lightning_rnn._validation import check_bool, check_int

__all__ = ["BucketBatchSampler"]


class BucketBatchSampler(Sampler[list[int]]):
    """Yield batches of indices whose sequences have similar lengths.

    Each epoch, the indices are shuffled (a generator seeded with ``seed + epoch``, see :meth:`set_epoch`),
    cut into pools of ``batch_size * bucket_size_multiplier``, each pool is sorted by length and cut into
    batches, and the order of the batches is shuffled again. Every index appears exactly once per epoch;
    only the very last batch can be smaller than ``batch_size`` (dropped with ``drop_last``). With
    ``shuffle=False`` there is no randomness: pools are consecutive indices. The same ``seed`` and epoch give
    the same batches on every machine.

    Use it as ``DataLoader(dataset, batch_sampler=BucketBatchSampler(lengths, 32), collate_fn=pad_collate)``.

    Distributed: pass ``num_replicas`` / ``rank``; every rank computes the same global batches and takes
    every ``num_replicas``-th one, so the ranks' batches are disjoint and equally many; the last
    ``len(batches) % num_replicas`` global batches of the epoch are left out (different ones every epoch when
    shuffling). With Lightning, also pass ``Trainer(use_distributed_sampler=False)`` so that Lightning does
    not try to re-wrap it.

    Epochs: Lightning calls ``set_epoch`` only on ``loader.sampler`` and ``loader.batch_sampler.sampler``, never
    on a batch sampler, so this class exposes a ``sampler`` attribute whose ``set_epoch`` forwards here: under
    ``Trainer.fit`` every epoch gets its own shuffle with nothing to call. Without Lightning call
    :meth:`set_epoch` yourself before each epoch.

    Args:
        lengths: the length of every item of the dataset.
        batch_size: items per batch.
        shuffle: shuffle within and between pools every epoch.
        bucket_size_multiplier: pool size in batches. Larger pools cut more padding but make batches less
            random.
        drop_last: drop the last batch when it is smaller than ``batch_size``.
        seed: base seed of the shuffling.
        num_replicas, rank: shard the batches over ranks.

    Example::

        >>> s = BucketBatchSampler([5, 1, 4, 2, 3, 6], batch_size=2, shuffle=False)
        >>> list(s)
        [[1, 3], [4, 2], [0, 5]]
        >>> s = BucketBatchSampler([5, 1, 4, 2, 3, 6], batch_size=2, seed=1)
        >>> first = list(s)
        >>> s.sampler.set_epoch(1)  # what Lightning calls at every epoch start
        >>> list(s) != first
        True
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
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        self.batch_size = check_int("batch_size", batch_size, min=1)
        check_int("bucket_size_multiplier", bucket_size_multiplier, min=1)
        self.lengths = [int(n) for n in (lengths.tolist() if isinstance(lengths, torch.Tensor) else lengths)]
        if any(n < 0 for n in self.lengths):
            raise ValueError(f"Expected lengths >= 0, got {min(self.lengths)}")
        if (num_replicas is None) != (rank is None):
            raise ValueError(
                f"Expected num_replicas and rank given together, got num_replicas={num_replicas!r}, rank={rank!r}"
            )
        if num_replicas is not None:
            check_int("num_replicas", num_replicas, min=1)
            check_int("rank", rank, min=0, max=num_replicas - 1)
        self.shuffle = check_bool("shuffle", shuffle)
        self.bucket_size_multiplier = bucket_size_multiplier
        self.pool = batch_size * bucket_size_multiplier  # a multiple of batch_size: only the last batch is short
        self.drop_last = check_bool("drop_last", drop_last)
        self.seed = check_int("seed", seed)
        self.num_replicas = num_replicas or 1
        self.rank = rank or 0
        self.epoch = 0
        self.sampler = _EpochRelay(self)

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffle of ``epoch`` (seeded with ``seed + epoch``) from the next iteration on."""
        self.epoch = epoch

    def _global_batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        n = len(self.lengths)
        order = torch.randperm(n, generator=g).tolist() if self.shuffle else list(range(n))
        batches: list[list[int]] = []
        for p in range(0, n, self.pool):
            pool = sorted(order[p : p + self.pool], key=lambda i: self.lengths[i])  # stable
            for b in range(0, len(pool), self.batch_size):
                batch = pool[b : b + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._global_batches()
        if self.num_replicas > 1:
            batches = batches[: len(self) * self.num_replicas][self.rank :: self.num_replicas]
        return iter(batches)

    def __len__(self) -> int:
        n = len(self.lengths)
        batches = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        return batches // self.num_replicas


class _EpochRelay:
    """Found by Lightning at ``loader.batch_sampler.sampler``: forwards ``set_epoch`` to the batch sampler."""

    def __init__(self, owner: BucketBatchSampler) -> None:
        self._owner = owner

    def set_epoch(self, epoch: int) -> None:
        self._owner.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self._owner.lengths)))

    def __len__(self) -> int:
        return len(self._owner.lengths)
