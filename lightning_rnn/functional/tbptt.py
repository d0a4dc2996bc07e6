"""Splitting a batch along time for truncated backpropagation through time (pure torch, no lightning).

A batch is any nesting of tuples, lists and dicts whose tensors either have a time dimension at ``dim=1``
(``(N, L, ...)``, split along time) or are per-row (0-D or 1-D, passed to every chunk unchanged). A
key named ``"lengths"`` in a dict batch is special: each chunk receives the lengths *inside* that
chunk, ``clamp(lengths - start, 0, end - start)``.

Example::

    >>> chunk_bounds(10, 4)
    [(0, 4), (4, 8), (8, 10)]
    >>> window_starts([(0, 4), (4, 8), (8, 10)], backprop_steps=6)
    [0, 2, 4]
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

__all__ = [
    "batch_time_length",
    "chunk_bounds",
    "lr_scale",
    "slice_batch",
    "variable_chunk_bounds",
    "window_starts",
]


def _tensors(batch: Any, path: str = "batch") -> list[tuple[str, Tensor]]:
    if isinstance(batch, Tensor):
        return [(path, batch)]
    if isinstance(batch, Mapping):
        out: list[tuple[str, Tensor]] = []
        for key, value in batch.items():
            out.extend(_tensors(value, f"{path}[{key!r}]"))
        return out
    if isinstance(batch, Sequence) and not isinstance(batch, str | bytes):
        out = []
        for i, value in enumerate(batch):
            out.extend(_tensors(value, f"{path}[{i}]"))
        return out
    return []


def batch_time_length(batch: Any, time_dim: int = 1) -> int:
    """Return the common time length of every tensor in ``batch`` that has a time dimension.

    Tensors with fewer than ``time_dim + 1`` dimensions are per-row and are ignored.

    Raises:
        ValueError: if two tensors disagree on their time length (both shapes are named), if no tensor has a
            time dimension, or if the time length is 0.
    """
    timed = [(name, t) for name, t in _tensors(batch) if t.dim() > time_dim]
    if not timed:
        raise ValueError(
            f"Expected at least one tensor with a time dimension (N, L, ...) at dim {time_dim} in the batch, "
            f"got tensors of shapes {[tuple(t.shape) for _, t in _tensors(batch)]}"
        )
    first_name, first = timed[0]
    length = first.shape[time_dim]
    for name, t in timed[1:]:
        if t.shape[time_dim] != length:
            raise ValueError(
                f"Expected every time-major tensor of the batch to have the same length at dim {time_dim}, got "
                f"{first_name} of shape {tuple(first.shape)} and {name} of shape {tuple(t.shape)}"
            )
    if length == 0:
        raise ValueError(f"Expected a batch with at least one time step, got {first_name} of shape {tuple(first.shape)}")
    return int(length)


def chunk_bounds(length: int, steps: int | None) -> list[tuple[int, int]]:
    """Split ``range(length)`` into consecutive chunks of ``steps`` (the last may be shorter).

    ``steps=None`` gives one chunk covering everything. Splits by length, not by count.
    """
    if length < 1:
        raise ValueError(f"Expected length >= 1, got {length}")
    if steps is None:
        return [(0, length)]
    if steps < 1:
        raise ValueError(f"Expected steps >= 1 or None, got {steps}")
    return [(start, min(start + steps, length)) for start in range(0, length, steps)]


def variable_chunk_bounds(
    length: int,
    steps: int,
    *,
    std: float = 5.0,
    half_prob: float = 0.05,
    min_steps: int = 5,
    rng: random.Random | None = None,
) -> list[tuple[int, int]]:
    """AWD-LSTM's variable-length BPTT: chunk lengths drawn around ``steps``.

    Each chunk's base length is ``steps`` (or ``steps / 2`` with probability ``half_prob``); its length is drawn
    from a normal distribution with that mean and standard deviation ``std``, rounded, at least ``min_steps``
    (or ``steps`` if smaller) and at most what is left of the sequence.
    """
    if steps < 1:
        raise ValueError(f"Expected steps >= 1, got {steps}")
    rng = rng or random
    floor = max(1, min(min_steps, steps))
    bounds: list[tuple[int, int]] = []
    start = 0
    while start < length:
        base = steps if rng.random() >= half_prob else steps / 2
        size = max(floor, int(round(rng.gauss(base, std))))
        end = min(start + size, length)
        bounds.append((start, end))
        start = end
    return bounds


def window_starts(bounds: Sequence[tuple[int, int]], backprop_steps: int | None, lower: int = 0) -> list[int]:
    """Start of the backpropagation window of each chunk for TBPTT(k1, k2).

    Chunk ``(start, end)`` advances the sequence to ``end`` and backpropagates ``k2 = backprop_steps`` steps:
    its window starts at ``max(lower, end - k2)``, never after ``start``. ``None`` means ``k2 = k1``: each
    window is its chunk.
    """
    if backprop_steps is None:
        return [start for start, _ in bounds]
    return [min(start, max(lower, end - backprop_steps)) for start, end in bounds]


def slice_batch(batch: Any, start: int, end: int, time_dim: int = 1) -> Any:
    """Return the part ``[start, end)`` of ``batch`` along time.

    Tensors with a time dimension are sliced (views, no copy); per-row tensors and non-tensors are passed
    through; a dict entry ``"lengths"`` becomes the number of valid steps inside the slice.
    """
    if isinstance(batch, Tensor):
        return batch.narrow(time_dim, start, end - start) if batch.dim() > time_dim else batch
    if isinstance(batch, Mapping):
        out = {}
        for key, value in batch.items():
            if key == "lengths" and isinstance(value, Tensor) and value.dim() == 1:
                out[key] = (value - start).clamp(min=0, max=end - start)
            else:
                out[key] = slice_batch(value, start, end, time_dim)
        return type(batch)(out) if not isinstance(batch, dict) else out
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(slice_batch(v, start, end, time_dim) for v in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(slice_batch(v, start, end, time_dim) for v in batch)
    return batch


def lr_scale(chunk_length: int, steps: int) -> float:
    """AWD-LSTM's learning-rate scale for a variable-length chunk: ``chunk_length / steps``."""
    return chunk_length / steps if steps > 0 else 1.0

