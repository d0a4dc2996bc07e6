"""Masked pooling over time: mean, max and attention, whole-sequence or chunk by chunk (pure PyTorch).

Every pooling here ignores padded steps exactly (a mask, not a multiplication by zero after the fact), and
can be computed over a sequence split into consecutive chunks with a small running accumulator, giving the
same result as over the whole sequence (:func:`pool_update` / :func:`pool_finalize`): a sum and a count
for ``"mean"``, a running maximum for ``"max"``, and the online-softmax triple (running max score, running
normaliser, running weighted sum) for ``"attention"``. This is what lets :class:`~lightning_rnn.RNNClassifier`
pool under truncated BPTT.

Symbols: N batch, L length, F features (D*H for RNN outputs).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lightning_rnn._validation import check_int

__all__ = ["POOLINGS", "AttentionPooling", "length_mask", "masked_max", "masked_mean", "pool_finalize", "pool_update"]

#: Poolings handled by :func:`pool_update`.
POOLINGS = ("mean", "max", "attention")


def length_mask(lengths: Tensor, max_length: int) -> Tensor:
    """Inputs: lengths (N,) integer. Outputs: (N, max_length) bool, True at the first ``lengths[i]`` steps."""
    steps = torch.arange(max_length, device=lengths.device)
    return steps.unsqueeze(0) < lengths.unsqueeze(1)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over the True steps. Inputs: x (N, L, F), mask (N, L) bool. Outputs: (N, F) (0 for empty rows)."""
    m = mask.unsqueeze(-1).to(x.dtype)  # (N, L, 1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def masked_max(x: Tensor, mask: Tensor) -> Tensor:
    """Max over the True steps. Inputs: x (N, L, F), mask (N, L) bool. Outputs: (N, F) (-inf for empty rows)."""
    return x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)


class AttentionPooling(nn.Module):
    """Additive attention pooling: ``a = softmax_t(v^T tanh(W x_t))`` over the unmasked steps, ``sum_t a_t x_t``.

    Args:
        input_size: F.
        attention_size: width of the tanh projection (default F).

    Inputs: x (N, L, F), mask (N, L) bool (every row needs at least one True step).
    Outputs: (N, F).
    """

    def __init__(self, input_size: int, attention_size: int | None = None) -> None:
        super().__init__()
        check_int("input_size", input_size, min=1)
        attention_size = attention_size or input_size
        self.proj = nn.Linear(input_size, attention_size)
        self.score = nn.Linear(attention_size, 1, bias=False)

    def scores(self, x: Tensor, mask: Tensor) -> Tensor:
        """Unnormalised scores (N, L), ``-inf`` at masked steps."""
        e = self.score(torch.tanh(self.proj(x))).squeeze(-1)  # (N, L)
        return e.masked_fill(~mask, float("-inf"))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        weights = torch.softmax(self.scores(x, mask), dim=1)  # (N, L)
        return (weights.unsqueeze(-1) * x).sum(1)  # (N, F)


def pool_update(kind: str, acc: Any, x: Tensor, mask: Tensor, scores: Tensor | None = None) -> Any:
    """Fold one chunk into a running pooling accumulator.

    Args:
        kind: ``"mean"``, ``"max"`` or ``"attention"``.
        acc: the accumulator from the previous chunk, or ``None`` at the start of the sequence.
        x: (N, L, F) chunk outputs; mask: (N, L) bool valid steps (each row needs >= 1 valid step, or an
            accumulator from earlier chunks).
        scores: (N, L) attention scores with ``-inf`` at masked steps (``"attention"`` only).

    Returns:
        ``(sum (N, F), count (N, 1))`` for mean, ``max (N, F)`` for max, ``(m (N, 1), s (N, 1), v (N, F))``
        for attention (online softmax: running max score, normaliser, weighted sum).
    """
    if kind == "mean":
        m = mask.unsqueeze(-1).to(x.dtype)
        total, count = (x * m).sum(1), m.sum(1)
        return (total, count) if acc is None else (acc[0] + total, acc[1] + count)
    if kind == "max":
        cur = masked_max(x, mask)
        return cur if acc is None else torch.maximum(acc, cur)
    if kind == "attention":
        if scores is None:
            raise ValueError("Expected attention scores for kind='attention', got None")
        cur_max = scores.amax(1, keepdim=True)  # (N, 1)
        m_new = cur_max if acc is None else torch.maximum(acc[0], cur_max)
        w = torch.exp(scores - m_new)  # (N, L), 0 at masked steps
        s, v = w.sum(1, keepdim=True), (w.unsqueeze(-1) * x).sum(1)
        if acc is not None:
            decay = torch.exp(acc[0] - m_new)  # (N, 1)
            s, v = acc[1] * decay + s, acc[2] * decay + v
        return (m_new, s, v)
    raise ValueError(f"Expected kind in {POOLINGS}, got {kind!r}")


def pool_finalize(kind: str, acc: Any) -> Tensor:
    """The pooled vector (N, F) from an accumulator of :func:`pool_update`."""
    if kind == "mean":
        return acc[0] / acc[1].clamp_min(1.0)
    if kind == "max":
        return acc
    if kind == "attention":
        return acc[2] / acc[1]
    raise ValueError(f"Expected kind in {POOLINGS}, got {kind!r}")
