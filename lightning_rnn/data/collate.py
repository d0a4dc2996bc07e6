"""Padding collate for datasets of variable-length sequences (token ids or feature vectors)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

__all__ = ["pad_collate"]


def pad_collate(
    batch: Sequence[Any],
    *,
    pad_value: float = 0,
    label_pad_value: int = -100,
    batch_first: bool = True,
) -> dict[str, Tensor]:
    """Pad a list of variable-length sequences into one batch.

    Items are a tensor ``(L,)`` (token ids) or ``(L, F)`` (features), or a tuple ``(sequence, label)`` where the
    label is per sequence (a scalar) or per step (a tensor ``(L,)``).

    Outputs (``batch_first``): ``{"inputs": (N, L_max[, F]), "lengths": (N,) long, "mask": (N, L_max) bool,
    "labels": (N,) or (N, L_max) padded with label_pad_value}`` (``labels`` only when items carry them).

    Example::

        >>> import torch
        >>> out = pad_collate([(torch.tensor([5, 6, 7]), 1), (torch.tensor([8]), 0)])
        >>> out["inputs"].tolist(), out["lengths"].tolist(), out["labels"].tolist()
        ([[5, 6, 7], [8, 0, 0]], [3, 1], [1, 0])
    """
    if len(batch) == 0:
        raise ValueError("Expected a non-empty list of sequences, got an empty batch")
    has_labels = isinstance(batch[0], tuple | list)
    seqs: list[Tensor] = []
    labels: list[Tensor] = []
    for i, item in enumerate(batch):
        if isinstance(item, tuple | list) != has_labels:
            raise TypeError(
                f"Expected every item to be {'a (sequence, label) pair' if has_labels else 'a tensor'}, "
                f"got item {i} of type {type(item).__name__}"
            )
        seq, label = (item[0], item[1]) if has_labels else (item, None)
        seq = torch.as_tensor(seq)
        if seq.dim() not in (1, 2):
            raise ValueError(f"Expected item {i} of shape (L,) or (L, F), got {tuple(seq.shape)}")
        if seq.shape[0] < 1:
            raise ValueError(f"Expected item {i} to have at least one step, got an empty sequence")
        if seqs and seq.shape[1:] != seqs[0].shape[1:]:
            raise ValueError(
                f"Expected every item to have feature shape {tuple(seqs[0].shape[1:])}, got {tuple(seq.shape[1:])} "
                f"for item {i}"
            )
        seqs.append(seq)
        if has_labels:
            label = torch.as_tensor(label)
            if label.dim() == 1 and label.shape[0] != seq.shape[0]:
                raise ValueError(
                    f"Expected the per-step labels of item {i} to have length {seq.shape[0]}, got {label.shape[0]}"
                )
            if label.dim() > 1:
                raise ValueError(
                    f"Expected item {i}'s label to be a scalar or (L,), got {tuple(label.shape)}"
                )
            labels.append(label)
    lengths = torch.tensor([s.shape[0] for s in seqs], dtype=torch.long)
    inputs = pad_sequence(seqs, batch_first=batch_first, padding_value=pad_value)
    mask = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]  # (N, L_max)
    out = {"inputs": inputs, "lengths": lengths, "mask": mask if batch_first else mask.T}
    if has_labels:
        if labels[0].dim() == 0:
            if any(lb.dim() != 0 for lb in labels):
                raise ValueError(
                    "Expected every label to be a scalar (per sequence), got a mix of scalars and tensors"
                )
            out["labels"] = torch.stack(labels)
        else:
            out["labels"] = pad_sequence(labels, batch_first=batch_first, padding_value=label_pad_value)
    return out
