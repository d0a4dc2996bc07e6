"""Padding collate for datasets of variable-length sequences (token ids or feature vectors)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

__all__ = ["pad_collate"]


def _is_pair(item: Any) -> bool:
    """A ``(sequence, label)`` pair: a tuple, or a 2-list whose first element is itself a sequence."""
    if isinstance(item, tuple):
        if len(item) != 2:
            raise ValueError(f"Expected a (sequence, label) pair, got a tuple of {len(item)} elements")
        return True
    return isinstance(item, list) and len(item) == 2 and not isinstance(item[0], numbers.Number)


def pad_collate(
    batch: Sequence[Any],
    *,
    pad_value: float = 0,
    label_pad_value: int = -100,
    batch_first: bool = True,
) -> dict[str, Tensor]:
    """Pad a list of variable-length sequences into one batch (a ``DataLoader`` ``collate_fn``).

    Inputs: ``batch``, a list of N items, each a sequence ``(L_i,)`` (token ids) or ``(L_i, F)`` (features) —
    a tensor, or anything ``torch.as_tensor`` takes — or a tuple ``(sequence, label)`` where the label is per
    sequence (a scalar) or per step (``(L_i,)``). All items have the same form; ``L_i >= 1``.

    Outputs (``batch_first=True``; with ``batch_first=False`` the first two dimensions of ``inputs``, ``mask``
    and per-step ``labels`` are swapped, as in :func:`torch.nn.utils.rnn.pad_sequence`), a dict:

    - ``"inputs"``: ``(N, L_max)`` or ``(N, L_max, F)``, padded with ``pad_value``;
    - ``"lengths"``: ``(N,)`` long, the true lengths ``L_i`` (what ``pack_padded_sequence`` wants);
    - ``"mask"``: ``(N, L_max)`` bool, True on real steps;
    - ``"labels"`` (only when items carry labels): ``(N,)`` per sequence, or ``(N, L_max)`` per step padded
      with ``label_pad_value`` (``-100`` is ``cross_entropy``'s default ``ignore_index`` and the default
      ``pad_id`` of :class:`~lightning_rnn.RNNTagger`).

    Args:
        batch: the items.
        pad_value: value of padded input steps (e.g. a vocabulary's pad id).
        label_pad_value: value of padded per-step labels.
        batch_first: layout of the outputs.

    Raises:
        ValueError: an empty batch, an empty sequence, mismatched feature sizes, a per-step label whose length
            differs from its sequence's, or a mix of per-sequence and per-step labels (the item is named).
        TypeError: a mix of labelled and unlabelled items.

    Example::

        >>> import torch
        >>> out = pad_collate([(torch.tensor([5, 6, 7]), 1), (torch.tensor([8]), 0)])
        >>> out["inputs"].tolist(), out["lengths"].tolist(), out["labels"].tolist()
        ([[5, 6, 7], [8, 0, 0]], [3, 1], [1, 0])
        >>> out["mask"].tolist()
        [[True, True, True], [True, False, False]]
    """
    if len(batch) == 0:
        raise ValueError("Expected a non-empty list of sequences, got an empty batch")
    has_labels = _is_pair(batch[0])
    seqs: list[Tensor] = []
    labels: list[Tensor] = []
    for i, item in enumerate(batch):
        if _is_pair(item) != has_labels:
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
            if label.dim() > 1:
                raise ValueError(f"Expected item {i}'s label to be a scalar or (L,), got {tuple(label.shape)}")
            if labels and label.dim() != labels[0].dim():
                kinds = ("a scalar (per sequence)", "a (L,) tensor (per step)")
                raise ValueError(
                    f"Expected every label to be {kinds[labels[0].dim()]} like item 0's, got {kinds[label.dim()]} "
                    f"for item {i}"
                )
            if label.dim() == 1 and label.shape[0] != seq.shape[0]:
                raise ValueError(
                    f"Expected the per-step labels of item {i} to have length {seq.shape[0]}, got {label.shape[0]}"
                )
            labels.append(label)
    lengths = torch.tensor([s.shape[0] for s in seqs], dtype=torch.long)
    inputs = pad_sequence(seqs, batch_first=batch_first, padding_value=pad_value)
    mask = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]  # (N, L_max)
    out = {"inputs": inputs, "lengths": lengths, "mask": mask if batch_first else mask.T}
    if has_labels:
        if labels[0].dim() == 0:
            out["labels"] = torch.stack(labels)  # (N,)
        else:
            out["labels"] = pad_sequence(labels, batch_first=batch_first, padding_value=label_pad_value)
    return out
