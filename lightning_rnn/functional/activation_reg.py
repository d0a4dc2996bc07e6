"""Activation regularization (AR) and temporal activation regularization (TAR) of AWD-LSTM.

Merity, Keskar & Socher 2017 ("Regularizing and Optimizing LSTM Language Models", section 4.6) add two
penalties on the outputs of the last recurrent layer to the loss:

- AR  = alpha * mean(m_t ** 2) over the *dropped* outputs m_t (after the output dropout): keeps activations
  small;
- TAR = beta * mean((h_t - h_{t-1}) ** 2) over the *undropped* outputs h_t: penalises large changes of the
  hidden state from one step to the next.

Both are means over every (row, step, feature) element that counts; steps excluded by ``mask`` (padding)
count in neither the numerator nor the denominator. TAR pairs step t with step t-1 *of the same chunk*: the
first step of a truncated-BPTT chunk is not paired with the last output of the previous chunk (as in the
reference implementation, which computes TAR over each BPTT slice); a pair counts only when both of its
steps are valid.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_rnn._validation import check_float

__all__ = ["activation_regularization", "temporal_activation_regularization"]


def _check(outputs: Tensor, mask: Tensor | None, coefficient: float, name: str) -> None:
    if not isinstance(outputs, Tensor) or outputs.dim() != 3:
        shape = tuple(outputs.shape) if isinstance(outputs, Tensor) else type(outputs).__name__
        raise ValueError(f"Expected outputs of shape (N, L, H), got {shape}")
    check_float(name, coefficient, min=0.0)
    if mask is not None and tuple(mask.shape) != tuple(outputs.shape[:2]):
        raise ValueError(f"Expected mask of shape {tuple(outputs.shape[:2])} (N, L), got {tuple(mask.shape)}")


def _masked_mean(squares: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``squares`` (N, L, H) over the elements of the valid steps (``mask`` (N, L)); 0 if none."""
    if mask is None:
        return squares.mean() if squares.numel() else squares.sum()
    keep = mask.to(device=squares.device, dtype=torch.bool).unsqueeze(-1)  # (N, L, 1)
    count = keep.sum() * squares.shape[-1]
    total = torch.where(keep, squares, squares.new_zeros(())).sum()
    return total / count.clamp(min=1)


def activation_regularization(outputs: Tensor, alpha: float, mask: Tensor | None = None) -> Tensor:
    """AR: ``alpha * mean(outputs ** 2)`` over the valid steps.

    Args:
        outputs: the last layer's outputs **after** the output dropout, (N, L, H).
        alpha: the coefficient (AWD-LSTM: 2).
        mask: optional bool (N, L), True at the steps that count (e.g. ``targets != pad_id``).

    Returns:
        A scalar tensor (graph attached); 0 when no step counts.

    Example::

        >>> out = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # (N=1, L=2, H=2)
        >>> activation_regularization(out, alpha=2.0)  # 2 * (1 + 4 + 9 + 16) / 4
        tensor(15.)
        >>> activation_regularization(out, 2.0, mask=torch.tensor([[True, False]]))  # 2 * (1 + 4) / 2
        tensor(5.)
    """
    _check(outputs, mask, alpha, "alpha")
    if alpha == 0:
        return outputs.new_zeros(())
    return alpha * _masked_mean(outputs.float().pow(2), mask)


def temporal_activation_regularization(outputs: Tensor, beta: float, mask: Tensor | None = None) -> Tensor:
    """TAR: ``beta * mean((h_t - h_{t-1}) ** 2)`` over the pairs of consecutive valid steps of one chunk.

    Args:
        outputs: the last layer's outputs **before** the output dropout, (N, L, H).
        beta: the coefficient (AWD-LSTM: 1).
        mask: optional bool (N, L), True at the steps that count; the pair (t-1, t) counts when both do.

    Returns:
        A scalar tensor (graph attached); 0 when the chunk has fewer than two valid consecutive steps
        (the first step of a chunk is not paired with the previous chunk's last output).

    Example::

        >>> out = torch.tensor([[[0.0], [1.0], [3.0]]])  # (N=1, L=3, H=1)
        >>> temporal_activation_regularization(out, beta=1.0)  # (1 + 4) / 2
        tensor(2.5000)
        >>> temporal_activation_regularization(out, 1.0, mask=torch.tensor([[True, True, False]]))
        tensor(1.)
    """
    _check(outputs, mask, beta, "beta")
    if beta == 0:
        return outputs.new_zeros(())
    diff = outputs[:, 1:].float() - outputs[:, :-1].float()  # (N, L-1, H)
    pairs = None if mask is None else mask[:, 1:].bool() & mask[:, :-1].bool()  # (N, L-1)
    return beta * _masked_mean(diff.pow(2), pairs)
