"""Attention over a memory of keys: additive (Bahdanau) and multiplicative (Luong) scores.

Both modules share one interface::

    projected = attn.project_keys(keys)            # once per source (B, S, A)
    context, weights = attn(query, keys, mask, projected_keys=projected)

Keys are projected once per source and handed back explicitly; nothing about a particular source is
cached on ``self`` (so one module can serve several sources, beams or threads at once).

Padding is masked before the softmax: a position whose mask is ``False`` gets a weight of exactly 0 and
the weights of every row sum to 1. Every row must have at least one real position.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_rnn._validation import check_int

__all__ = ["BahdanauAttention", "LuongAttention", "padding_mask", "masked_softmax"]

LUONG_SCORES = ("dot", "general", "concat")


def padding_mask(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """Boolean mask with ``True`` on real tokens.

    Inputs:
        lengths: (N,) integer lengths.
        max_len: width L of the mask (default ``lengths.max()``).

    Outputs:
        mask: (N, L) bool, ``mask[i, j] = j < lengths[i]``.

    Example::

        >>> padding_mask(torch.tensor([2, 3]), 4).int().tolist()
        [[1, 1, 0, 0], [1, 1, 1, 0]]
    """
    if max_len is None:
        max_len = int(lengths.max()) if lengths.numel() else 0
    positions = torch.arange(max_len, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


def masked_softmax(scores: Tensor, mask: Tensor | None) -> Tensor:
    """Softmax over the last dimension that gives exactly 0 to masked-out (``False``) positions.

    Inputs:
        scores: (N, S) float scores.
        mask: (N, S) bool, ``True`` on real positions, or ``None`` (all real).

    Outputs:
        weights: (N, S), rows sum to 1, ``weights[~mask] == 0``.
    """
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


def _check_inputs(query: Tensor, keys: Tensor, mask: Tensor | None, query_size: int, key_size: int) -> None:
    if query.dim() != 2 or query.size(-1) != query_size:
        raise ValueError(f"Expected query of shape (N, {query_size}), got {list(query.shape)}")
    if keys.dim() != 3 or keys.size(-1) != key_size or keys.size(0) != query.size(0):
        raise ValueError(f"Expected keys of shape ({query.size(0)}, S, {key_size}), got {list(keys.shape)}")
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"Expected a bool mask (True = real token), got dtype {mask.dtype}")
        if mask.shape != keys.shape[:2]:
            raise ValueError(f"Expected mask of shape {list(keys.shape[:2])}, got {list(mask.shape)}")


class BahdanauAttention(nn.Module):
    """Additive attention (Bahdanau et al. 2014): ``score(q, k) = vᵀ tanh(W q + U k)``.

    Args:
        query_size: Q, size of the query (the decoder state).
        key_size: K, size of each key (an encoder output, e.g. ``2 * H`` for a bidirectional encoder).
        hidden_size: A, size of the additive projection.

    Inputs: query, keys, mask, projected_keys
        query: (N, Q).
        keys: (N, S, K), also the values that are averaged.
        mask: (N, S) bool, ``True`` on real positions; ``None`` means all real.
        projected_keys: (N, S, A) from :meth:`project_keys` (computed here if ``None``).

    Outputs: context, weights
        context: (N, K), ``sum_s weights[:, s] * keys[:, s]``.
        weights: (N, S), 0 on padding, rows sum to 1.

    Example::

        >>> attn = BahdanauAttention(query_size=8, key_size=6, hidden_size=5)
        >>> keys, mask = torch.randn(2, 4, 6), padding_mask(torch.tensor([4, 2]))
        >>> context, weights = attn(torch.randn(2, 8), keys, mask, projected_keys=attn.project_keys(keys))
        >>> context.shape, weights[1, 2:].tolist()
        (torch.Size([2, 6]), [0.0, 0.0])
    """

    def __init__(self, query_size: int, key_size: int, hidden_size: int) -> None:
        super().__init__()
        for name, value in (("query_size", query_size), ("key_size", key_size), ("hidden_size", hidden_size)):
            check_int(name, value, min=1)
        self.query_size = query_size
        self.key_size = key_size
        self.hidden_size = hidden_size
        self.query_proj = nn.Linear(query_size, hidden_size, bias=False)
        self.key_proj = nn.Linear(key_size, hidden_size, bias=True)
        self.v = nn.Linear(hidden_size, 1, bias=False)

    def project_keys(self, keys: Tensor) -> Tensor:
        """``U k`` for every key: (N, S, K) -> (N, S, A). Compute once per source."""
        return self.key_proj(keys)

    def forward(
        self, query: Tensor, keys: Tensor, mask: Tensor | None = None, projected_keys: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        _check_inputs(query, keys, mask, self.query_size, self.key_size)
        if projected_keys is None:
            projected_keys = self.project_keys(keys)
        q = self.query_proj(query).unsqueeze(1)  # (N, 1, A)
        scores = self.v(torch.tanh(q + projected_keys)).squeeze(-1)  # (N, S)
        weights = masked_softmax(scores, mask)  # (N, S)
        context = torch.bmm(weights.unsqueeze(1), keys).squeeze(1)  # (N, K)
        return context, weights


class LuongAttention(nn.Module):
    """Multiplicative attention (Luong et al. 2015).

    Scores: ``"dot"``: ``qᵀ k`` (needs Q == K); ``"general"``: ``qᵀ W k``; ``"concat"``:
    ``vᵀ tanh(W [q; k])``.

    Args:
        query_size: Q, size of the query (the current decoder state).
        key_size: K, size of each key.
        score: ``"dot"`` | ``"general"`` | ``"concat"``.
        hidden_size: A, size of the ``"concat"`` projection (default Q); unused otherwise.

    Inputs: query, keys, mask, projected_keys
        query: (N, Q).
        keys: (N, S, K).
        mask: (N, S) bool, ``True`` on real positions; ``None`` means all real.
        projected_keys: from :meth:`project_keys` (computed here if ``None``).

    Outputs: context, weights
        context: (N, K).
        weights: (N, S), 0 on padding, rows sum to 1.

    Example::

        >>> attn = LuongAttention(query_size=6, key_size=6, score="dot")
        >>> context, weights = attn(torch.randn(3, 6), torch.randn(3, 5, 6))
        >>> weights.sum(-1).allclose(torch.ones(3))
        True
    """

    def __init__(self, query_size: int, key_size: int, score: str = "general", hidden_size: int | None = None) -> None:
        super().__init__()
        if score not in LUONG_SCORES:
            raise ValueError(f"Expected score to be one of {list(LUONG_SCORES)}, got {score!r}")
        for name, value in (("query_size", query_size), ("key_size", key_size)):
            check_int(name, value, min=1)
        if score == "dot" and query_size != key_size:
            raise ValueError(
                f"Expected query_size == key_size for the 'dot' score, got {query_size} and {key_size} "
                "(use score='general' when they differ)"
            )
        self.query_size = query_size
        self.key_size = key_size
        self.score = score
        self.key_proj: nn.Module | None = None
        self.query_proj: nn.Module | None = None
        self.v: nn.Module | None = None
        if score == "general":
            self.key_proj = nn.Linear(key_size, query_size, bias=False)  # W k, so that qᵀ (W k)
        elif score == "concat":
            hidden_size = query_size if hidden_size is None else check_int("hidden_size", hidden_size, min=1)
            self.key_proj = nn.Linear(key_size, hidden_size, bias=True)
            self.query_proj = nn.Linear(query_size, hidden_size, bias=False)
            self.v = nn.Linear(hidden_size, 1, bias=False)

    def project_keys(self, keys: Tensor) -> Tensor:
        """The query-independent part of the score, (N, S, K) -> (N, S, Q or A). Compute once per source."""
        return keys if self.key_proj is None else self.key_proj(keys)

    def forward(
        self, query: Tensor, keys: Tensor, mask: Tensor | None = None, projected_keys: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        _check_inputs(query, keys, mask, self.query_size, self.key_size)
        if projected_keys is None:
            projected_keys = self.project_keys(keys)
        if self.score == "concat":
            q = self.query_proj(query).unsqueeze(1)  # (N, 1, A)
            scores = self.v(torch.tanh(q + projected_keys)).squeeze(-1)  # (N, S)
        else:
            scores = torch.bmm(projected_keys, query.unsqueeze(-1)).squeeze(-1)  # (N, S)
        weights = masked_softmax(scores, mask)  # (N, S)
        context = torch.bmm(weights.unsqueeze(1), keys).squeeze(1)  # (N, K)
        return context, weights
