"""Greedy and batched beam search over a generic step function.

A model plugs in through one callable::

    step_fn(state, tokens, memory) -> (log_probs, new_state, attention)

    state:     nested tensors (tensor / tuple / list / dict / NamedTuple), every tensor with the batch at dim 0
    tokens:    (N,) long, the previous token of each row (BOS at the first step)
    memory:    nested tensors with the batch at dim 0 that never change while decoding (encoder outputs,
               masks, projected keys), or None
    log_probs: (N, V) log-probabilities of the next token
    attention: (N, S) attention weights of this step, or None

Beam search expands ``state`` and ``memory`` to ``N * beam_size`` rows (row ``b`` owns rows
``b*K .. b*K+K-1``), reorders ``state`` after every step and never touches ``memory`` again.

Every decision is made per row: a row's result does not depend on which other rows share its batch.
Rows that have finished keep being stepped (their results are frozen) until every row has finished.

Lengths count generated tokens *including* the EOS token; a hypothesis cut at its maximum length has no EOS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_rnn._validation import check_float, check_int
from lightning_rnn.nn.state import map_state

__all__ = [
    "SearchOutput",
    "greedy_search",
    "beam_search",
    "length_penalty",
    "max_lengths",
]

StepFn = Callable[[Any, Tensor, Any], "tuple[Tensor, Any, Tensor | None]"]
LENGTH_PENALTIES = ("gnmt", "power")


@dataclass
class SearchOutput:
    """Decoded hypotheses.

    Shapes: greedy search gives (N, T) tokens and (N,) scores/lengths; beam search adds an ``n_best``
    dimension: (N, n_best, T) tokens, (N, n_best) scores/lengths, sorted best first.

    Attributes:
        tokens: generated ids (no BOS), EOS included when generated, ``pad_id`` after each hypothesis.
        lengths: number of generated tokens, EOS included.
        scores: beam search: sum of log-probabilities divided by the length penalty (what the beam is
            sorted by); greedy search: sum of log-probabilities.
        log_probs: sum of log-probabilities (no length penalty).
        attention: (..., T, S) attention weights per generated token (0 after the end), or ``None``.
    """

    tokens: Tensor
    lengths: Tensor
    scores: Tensor
    log_probs: Tensor
    attention: Tensor | None = None


def length_penalty(lengths: Tensor, alpha: float, kind: str = "gnmt") -> Tensor:
    """Length normaliser a hypothesis score is divided by.

    ``"gnmt"`` (Wu et al. 2016): ``((5 + len) / 6) ** alpha``; ``"power"``: ``len ** alpha``.
    ``alpha = 0`` gives 1 (no normalisation).

    Example::

        >>> length_penalty(torch.tensor([1.0, 7.0]), 1.0).tolist()
        [1.0, 2.0]
    """
    if kind not in LENGTH_PENALTIES:
        raise ValueError(f"Expected length penalty to be one of {list(LENGTH_PENALTIES)}, got {kind!r}")
    lengths = lengths.to(torch.get_default_dtype() if not lengths.is_floating_point() else lengths.dtype)
    if kind == "gnmt":
        return ((5.0 + lengths) / 6.0) ** alpha
    return lengths.clamp_min(1.0) ** alpha


def max_lengths(
    batch_size: int,
    max_len: int,
    *,
    src_lengths: Tensor | None = None,
    max_ratio: float | None = None,
    device: torch.device | None = None,
) -> Tensor:
    """Per-row limit on generated tokens: ``max_len``, or ``min(max_len, ceil(max_ratio * src_len))``.

    Outputs:
        limits: (N,) long, each >= 1.
    """
    if not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"Expected max_len >= 1, got {max_len!r}")
    limits = torch.full((batch_size,), max_len, dtype=torch.long, device=device)
    if max_ratio is not None:
        if max_ratio <= 0:
            raise ValueError(f"Expected max_ratio > 0, got {max_ratio!r}")
        if src_lengths is None:
            raise ValueError("Expected src_lengths together with max_ratio, got None")
        by_ratio = torch.ceil(src_lengths.to(torch.float64, copy=True).to(limits.device) * max_ratio).long()
        limits = torch.minimum(limits, by_ratio.clamp_min(1))
    return limits


def _check_common(batch_size: int, max_len: int | Tensor) -> Tensor | None:
    check_int("batch_size", batch_size, min=1)
    if isinstance(max_len, Tensor):
        if max_len.shape != (batch_size,):
            raise ValueError(f"Expected max_len of shape ({batch_size},), got {list(max_len.shape)}")
        if bool((max_len < 1).any()):
            raise ValueError(f"Expected every max_len >= 1, got min {int(max_len.min())}")
        return max_len
    check_int("max_len", max_len, min=1)
    return None


@torch.no_grad()
def greedy_search(
    step_fn: StepFn,
    state: Any,
    memory: Any,
    *,
    batch_size: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    max_len: int | Tensor,
    return_attention: bool = False,
    device: torch.device | None = None,
) -> SearchOutput:
    """Pick the most probable token at every step until EOS or the row's length limit.

    Args:
        step_fn: ``(state, tokens, memory) -> (log_probs, state, attention)`` (see the module docstring).
        state: initial decoder state, batch at dim 0 of every tensor.
        memory: static inputs of ``step_fn`` (batch at dim 0), or ``None``.
        batch_size: N.
        bos_id / eos_id / pad_id: special token ids.
        max_len: int, or (N,) per-row limits (see :func:`max_lengths`), counting EOS.
        return_attention: collect the attention weights of every step.

    Outputs:
        :class:`SearchOutput` with tokens (N, T), lengths (N,), scores = log_probs (N,),
        attention (N, T, S) or ``None``; T is the longest generated length.
    """
    limits = _check_common(batch_size, max_len)
    t_max = int(max_len) if limits is None else int(limits.max())
    if limits is None:
        limits = torch.full((batch_size,), t_max, dtype=torch.long, device=device)
    device = device or limits.device
    limits = limits.to(device)
    tokens = torch.full((batch_size, t_max), pad_id, dtype=torch.long, device=device)
    lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
    log_probs = torch.zeros(batch_size, device=device)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
    last = torch.full((batch_size,), bos_id, dtype=torch.long, device=device)
    attentions: list[Tensor] = []
    steps = 0
    for t in range(t_max):
        step_log_probs, state, attn = step_fn(state, last, memory)  # (N, V), ..., (N, S)
        best = step_log_probs.argmax(dim=-1)  # (N,)
        alive = ~finished
        log_probs = log_probs + torch.where(alive, step_log_probs.gather(1, best[:, None]).squeeze(1), 0.0)
        tokens[:, t] = torch.where(alive, best, pad_id)
        lengths = lengths + alive.long()
        if return_attention and attn is not None:
            attentions.append(attn * alive[:, None].to(attn.dtype))
        finished = finished | (best == eos_id) | (t + 1 >= limits)
        last = best
        steps = t + 1
        if bool(finished.all()):
            break
    attention = torch.stack(attentions, dim=1) if attentions else None
    return SearchOutput(tokens[:, :steps], lengths, log_probs.clone(), log_probs, attention)


@torch.no_grad()
def beam_search(
    step_fn: StepFn,
    state: Any,
    memory: Any,
    *,
    batch_size: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    max_len: int | Tensor,
    beam_size: int = 5,
    n_best: int = 1,
    alpha: float = 0.0,
    length_penalty_type: str = "gnmt",
    return_attention: bool = False,
    device: torch.device | None = None,
) -> SearchOutput:
    """Batched beam search with length penalty and n-best output.

    Each row keeps ``beam_size`` live hypotheses. At every step the ``2 * beam_size`` best extensions are
    scored; those ending in EOS among the first ``beam_size`` join the row's finished pool, the best
    ``beam_size`` others stay alive. A row stops when ``beam_size`` hypotheses have ended, or at its
    length limit (its live beams then join the pool without EOS). Hypotheses are ranked by
    ``sum log p / lp(len)`` with :func:`length_penalty`. ``beam_size = 1`` gives exactly greedy decoding.

    Args:
        step_fn, state, memory, batch_size, bos_id, eos_id, pad_id, max_len: as in :func:`greedy_search`.
        beam_size: K >= 1.
        n_best: number of hypotheses returned per row, 1 <= n_best <= K.
        alpha: length-penalty exponent (0 = rank by the plain sum of log-probabilities).
        length_penalty_type: ``"gnmt"`` | ``"power"``.
        return_attention: collect attention weights per hypothesis.

    Outputs:
        :class:`SearchOutput` with tokens (N, n_best, T), lengths / scores / log_probs (N, n_best)
        sorted by score (best first), attention (N, n_best, T, S) or ``None``.

    Example::

        >>> logits = torch.log_softmax(torch.tensor([[0.0, 0.0, 1.0, 2.0]]), -1)  # same every step
        >>> step = lambda state, tok, mem: (logits.expand(tok.size(0), -1), state, None)
        >>> out = beam_search(step, None, None, batch_size=1, bos_id=0, eos_id=1, pad_id=0,
        ...                   max_len=1, beam_size=2, n_best=2)
        >>> out.tokens[0].tolist(), out.lengths[0].tolist()
        ([[3], [2]], [1, 1])
    """
    check_int("beam_size", beam_size, min=1)
    check_int("n_best", n_best, min=1, max=beam_size)
    check_float("alpha", alpha)
    if length_penalty_type not in LENGTH_PENALTIES:
        raise ValueError(
            f"Expected length_penalty_type to be one of {list(LENGTH_PENALTIES)}, got {length_penalty_type!r}"
        )
    limits = _check_common(batch_size, max_len)
    if limits is None:
        limits = torch.full((batch_size,), int(max_len), dtype=torch.long, device=device)
    device = device or limits.device
    limits = limits.to(device)
    t_max = int(limits.max())
    B, K = batch_size, beam_size

    def expand(x: Tensor) -> Tensor:
        return x.repeat_interleave(K, dim=0)

    state = map_state(expand, state)
    memory = map_state(expand, memory)
    neg_inf = float("-inf")
    alive_tokens = torch.full((B, K, t_max), pad_id, dtype=torch.long, device=device)
    alive_scores = torch.full((B, K), neg_inf, device=device)
    alive_scores[:, 0] = 0.0  # only one live hypothesis at the start: no duplicate beams
    alive_attn: Tensor | None = None
    pool_tokens = torch.full((B, K, t_max), pad_id, dtype=torch.long, device=device)
    pool_scores = torch.full((B, K), neg_inf, device=device)  # normalised
    pool_logp = torch.full((B, K), neg_inf, device=device)
    pool_len = torch.zeros((B, K), dtype=torch.long, device=device)
    pool_attn: Tensor | None = None
    n_ended = torch.zeros(B, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    last = torch.full((B * K,), bos_id, dtype=torch.long, device=device)
    row_offset = (torch.arange(B, device=device) * K).unsqueeze(1)  # (B, 1)
    rank = torch.arange(2 * K, device=device).unsqueeze(0)  # (1, 2K)

    for t in range(t_max):
        step_log_probs, state, attn = step_fn(state, last, memory)  # (B*K, V), ..., (B*K, S)
        V = step_log_probs.size(-1)
        if return_attention and attn is not None and alive_attn is None:
            S = attn.size(-1)
            alive_attn = torch.zeros((B, K, t_max, S), dtype=attn.dtype, device=device)
            pool_attn = torch.zeros((B, K, t_max, S), dtype=attn.dtype, device=device)
        cand = alive_scores.unsqueeze(-1) + step_log_probs.view(B, K, V)  # (B, K, V)
        n_cand = min(2 * K, K * V)
        top_scores, top_idx = cand.view(B, K * V).topk(n_cand, dim=1)  # (B, 2K), sorted
        beam_idx = torch.div(top_idx, V, rounding_mode="floor")  # (B, 2K)
        top_tok = top_idx % V
        finite = torch.isfinite(top_scores)
        is_eos = top_tok == eos_id
        cand_tokens = alive_tokens.gather(1, beam_idx.unsqueeze(-1).expand(-1, -1, t_max)).clone()  # (B, 2K, T)
        cand_tokens[:, :, t] = top_tok
        cand_attn = None
        if alive_attn is not None:
            S = alive_attn.size(-1)
            cand_attn = alive_attn.gather(1, beam_idx[..., None, None].expand(-1, -1, t_max, S)).clone()
            cand_attn[:, :, t] = attn.view(B, K, S).gather(1, beam_idx.unsqueeze(-1).expand(-1, -1, S))

        # next live beams: the K best candidates that do not end in EOS
        keep_scores = top_scores.masked_fill(is_eos, neg_inf)
        next_scores, next_pos = keep_scores.topk(K, dim=1)  # (B, K)
        at_limit = (t + 1 >= limits).unsqueeze(1)  # (B, 1)

        # candidates that end now: EOS among the first K, and at the limit the live beams that are cut
        ends_eos = is_eos & (rank[:, :n_cand] < K) & finite & ~done.unsqueeze(1)  # (B, 2K)
        cut = torch.zeros_like(ends_eos).scatter(1, next_pos, torch.isfinite(next_scores))
        ends = ends_eos | (cut & at_limit & ~done.unsqueeze(1))
        n_ended = n_ended + ends_eos.sum(1)
        new_len = torch.full_like(top_scores, t + 1)
        new_norm = (top_scores / length_penalty(new_len, alpha, length_penalty_type)).masked_fill(~ends, neg_inf)

        # merge the new endings into each row's pool of the K best finished hypotheses
        all_scores = torch.cat([pool_scores, new_norm], dim=1)  # (B, K + 2K)
        pool_scores, sel = all_scores.topk(K, dim=1)
        pool_logp = torch.cat([pool_logp, top_scores.masked_fill(~ends, neg_inf)], 1).gather(1, sel)
        pool_len = torch.cat([pool_len, torch.full_like(top_idx, t + 1)], 1).gather(1, sel)
        pool_tokens = torch.cat([pool_tokens, cand_tokens], 1).gather(1, sel.unsqueeze(-1).expand(-1, -1, t_max))
        if pool_attn is not None and cand_attn is not None:
            S = pool_attn.size(-1)
            pool_attn = torch.cat([pool_attn, cand_attn], 1).gather(1, sel[..., None, None].expand(-1, -1, t_max, S))

        done = done | (n_ended >= K) | at_limit.squeeze(1)
        if bool(done.all()):
            break

        # advance the live beams
        src_beam = beam_idx.gather(1, next_pos)  # (B, K)
        alive_scores = next_scores
        alive_tokens = cand_tokens.gather(1, next_pos.unsqueeze(-1).expand(-1, -1, t_max))
        if alive_attn is not None and cand_attn is not None:
            S = alive_attn.size(-1)
            alive_attn = cand_attn.gather(1, next_pos[..., None, None].expand(-1, -1, t_max, S))
        last = top_tok.gather(1, next_pos).reshape(B * K)
        flat_src = (row_offset + src_beam).reshape(B * K)
        state = map_state(lambda x, idx=flat_src: x.index_select(0, idx), state)

    t_out = int(pool_len[:, :n_best].max())
    attention = None
    if pool_attn is not None:
        attention = pool_attn[:, :n_best, :t_out]
    return SearchOutput(
        tokens=pool_tokens[:, :n_best, :t_out],
        lengths=pool_len[:, :n_best],
        scores=pool_scores[:, :n_best],
        log_probs=pool_logp[:, :n_best],
        attention=attention,
    )
