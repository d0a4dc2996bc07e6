"""The data modules' loaders: resumable training loaders, evaluation loaders that leave the global RNG alone.

Lightning 2.x saves a training loader's position in every checkpoint and restores it on resume when the
loader is stateful (``state_dict`` / ``load_state_dict``): torchdata's ``StatefulDataLoader`` is. A run
resumed from a mid-epoch checkpoint then continues with the batch after the checkpoint, in the same shuffled
order, instead of restarting the epoch.

Both kinds of loader draw their randomness from their own generators (seeded from the data module's
``seed``), never from the global RNG: the shuffle order is a function of the data seed and the epoch, and
creating or iterating a loader (validation, every epoch) does not move the global RNG that dropout draws
from — which is what lets a resumed run match the uninterrupted one draw for draw.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader

__all__ = ["EpochShuffleSampler", "eval_loader", "train_loader"]


class EpochShuffleSampler(Sampler[int]):
    """A random permutation of ``range(n)`` that is a pure function of ``seed`` and the epoch, resumable.

    Lightning calls :meth:`set_epoch` at every epoch start. Its state (epoch, items yielded) travels in the
    loader's state inside checkpoints, so a resumed run shuffles the interrupted epoch exactly as before and
    continues after the last item it yielded (Lightning creates the resumed iterator before it calls
    ``set_epoch``, so the epoch must come from the state).

    Example::

        >>> s = EpochShuffleSampler(5, seed=0)
        >>> first = list(s); s.set_epoch(1); second = list(s); s.set_epoch(0)
        >>> sorted(first) == list(range(5)), list(s) == first, second != first
        (True, True, True)
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = int(n), int(seed), 0
        self._yielded = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        skip, self._skip = self._skip, 0
        self._yielded = skip
        for index in order[skip:]:
            self._yielded += 1
            yield index

    def __len__(self) -> int:
        return self.n

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "yielded": self._yielded}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.epoch = int(state_dict.get("epoch", self.epoch))
        self._skip = int(state_dict.get("yielded", 0))
        if self._skip >= self.n:  # saved at the end of an epoch: the next iteration is the next epoch's
            self.epoch, self._skip = self.epoch + 1, 0


def train_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 collate_fn: Callable[[list[Any]], Any] | None = None, num_workers: int = 0,
                 **kwargs: Any) -> StatefulDataLoader:
    """A resumable (``StatefulDataLoader``) training loader, shuffled by :class:`EpochShuffleSampler`.

    Example::

        >>> loader = train_loader(list(range(6)), batch_size=2, seed=0)
        >>> it = iter(loader); first = next(it)
        >>> state = loader.state_dict()
        >>> rest = [b.tolist() for b in it]
        >>> again = train_loader(list(range(6)), batch_size=2, seed=0)
        >>> again.load_state_dict(state)
        >>> [b.tolist() for b in again] == rest
        True
    """
    sampler = EpochShuffleSampler(len(dataset), seed) if shuffle else None  # type: ignore[arg-type]
    return StatefulDataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
                              num_workers=num_workers, persistent_workers=num_workers > 0,
                              generator=torch.Generator().manual_seed(int(seed)), **kwargs)


def eval_loader(dataset: Dataset, batch_size: int | None, *, collate_fn: Callable[[list[Any]], Any] | None = None,
                num_workers: int = 0, **kwargs: Any) -> DataLoader:
    """An evaluation loader in dataset order whose iteration does not draw from the global RNG."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn,
                      num_workers=num_workers, persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(0), **kwargs)
