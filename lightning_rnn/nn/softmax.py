"""Large-vocabulary output layers: adaptive softmax and sampled softmax (pure PyTorch).

A word-level language model with V = 50k spends most of its step in the output layer: the logits alone are
(N*L, V). Two standard ways out:

- **Adaptive softmax** (Grave et al. 2017), ``torch.nn.AdaptiveLogSoftmaxWithLoss``: frequent words in a
  small head, rarer words in tail clusters of reduced dimension. It is an *exact* normalised distribution,
  so its log-probabilities are used for training and for evaluation alike. :func:`adaptive_softmax` builds
  one after validating the cut-offs.
- **Sampled softmax** (Jean et al. 2015; TensorFlow's ``sampled_softmax_loss``): during training only the
  true class and ``num_sampled`` candidates drawn from a proposal Q (log-uniform / Zipf, or a unigram
  distribution) are scored, with the logit of every candidate corrected by ``-log(num_sampled * Q(id))``
  and accidental hits (a candidate equal to the target) removed. It is a biased but consistent estimate of
  the full softmax's gradient; evaluation must use the full softmax (:func:`sampled_softmax_loss` is for
  training only).

Symbols: N rows (flattened batch and time), H hidden features, V vocabulary size, S sampled candidates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_rnn._validation import check_int

__all__ = [
    "CandidateSampler",
    "adaptive_softmax",
    "check_cutoffs",
    "sampled_softmax_loss",
]

#: Valid ``distribution`` names of :class:`CandidateSampler`.
SAMPLER_DISTRIBUTIONS = ("log_uniform", "unigram", "uniform")


def check_cutoffs(cutoffs: Sequence[int], vocab_size: int) -> list[int]:
    """Validate adaptive-softmax cut-offs: strictly increasing ints within (0, V).

    Raises:
        ValueError: empty, not strictly increasing, or a value outside ``(0, vocab_size)``.
        TypeError: a value is not an int.
    """
    values = list(cutoffs)
    if not values:
        raise ValueError(
            f"Expected at least one adaptive-softmax cut-off in (0, {vocab_size}), got {values}; "
            f"use [{vocab_size - 1}] for a head with (almost) the whole vocabulary"
        )
    for c in values:
        if isinstance(c, bool) or not isinstance(c, int):
            raise TypeError(f"Expected integer cut-offs, got {values!r}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"Expected strictly increasing cut-offs, got {values}")
    if values[0] <= 0 or values[-1] >= vocab_size:
        raise ValueError(f"Expected every cut-off in (0, vocab_size={vocab_size}) exclusive, got {values}")
    return values


def adaptive_softmax(
    in_features: int, vocab_size: int, cutoffs: Sequence[int], div_value: float = 4.0, head_bias: bool = True
) -> nn.AdaptiveLogSoftmaxWithLoss:
    """``torch.nn.AdaptiveLogSoftmaxWithLoss`` with validated cut-offs.

    Token ids must be sorted by decreasing frequency (id 0 the most frequent): ids ``< cutoffs[0]`` form the
    head, ``[cutoffs[i], cutoffs[i+1])`` the tail clusters, whose projection dimension is
    ``in_features / div_value**(i+1)``.

    Example::

        >>> asm = adaptive_softmax(16, 100, [10, 40])
        >>> probs = asm.log_prob(torch.randn(3, 16)).exp()  # (3, 100)
        >>> torch.allclose(probs.sum(-1), torch.ones(3))
        True
    """
    check_int("in_features", in_features, min=1)
    if not div_value > 0:
        raise ValueError(f"Expected div_value > 0, got {div_value}")
    return nn.AdaptiveLogSoftmaxWithLoss(
        in_features, vocab_size, check_cutoffs(cutoffs, vocab_size), div_value=div_value, head_bias=head_bias
    )


class CandidateSampler:
    """Draws the shared negative candidates of a sampled softmax and knows their probability Q.

    Args:
        vocab_size: V.
        distribution: ``"log_uniform"`` (Zipf: ``Q(k) = log((k+2)/(k+1)) / log(V+1)``; ids must be sorted by
            decreasing frequency, as vocabularies built from counts are), ``"unigram"`` (``Q ∝ counts``, e.g.
            unigram counts to the power 0.75) or ``"uniform"``.
        counts: (V,) non-negative weights for ``"unigram"``.

    Inputs: num_sampled, device, generator (optional)
    Outputs: ids (S,) LongTensor with replacement; :meth:`log_q` gives ``log Q(ids)``.
    """

    def __init__(self, vocab_size: int, distribution: str = "log_uniform", counts: Tensor | None = None) -> None:
        if distribution not in SAMPLER_DISTRIBUTIONS:
            raise ValueError(f"Expected distribution in {SAMPLER_DISTRIBUTIONS}, got {distribution!r}")
        check_int("vocab_size", vocab_size, min=2)
        self.vocab_size = vocab_size
        self.distribution = distribution
        self.probs: Tensor | None = None
        if distribution == "unigram":
            if counts is None:
                raise ValueError("Expected counts (V,) for distribution='unigram', got None")
            counts = torch.as_tensor(counts, dtype=torch.float64).flatten()
            if counts.numel() != vocab_size or bool((counts < 0).any()) or not float(counts.sum()) > 0:
                raise ValueError(
                    f"Expected {vocab_size} non-negative counts with a positive sum, got shape "
                    f"{tuple(counts.shape)} and sum {float(counts.sum())}"
                )
            self.probs = (counts / counts.sum()).float()

    def sample(self, num_sampled: int, device: torch.device | str, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``num_sampled`` ids (with replacement)."""
        v = self.vocab_size
        if self.distribution == "uniform":
            return torch.randint(0, v, (num_sampled,), device=device, generator=generator)
        if self.distribution == "log_uniform":
            # inverse CDF of Q: F(k) = log(k+2)/log(V+1)  ->  k = floor(exp(u*log(V+1))) - 1
            u = torch.rand(num_sampled, device=device, generator=generator, dtype=torch.float64)
            ids = torch.floor(torch.exp(u * math.log(v + 1))).long() - 1
            return ids.clamp_(0, v - 1)
        probs = self.probs.to(device)  # type: ignore[union-attr]
        return torch.multinomial(probs, num_sampled, replacement=True, generator=generator)

    def log_q(self, ids: Tensor) -> Tensor:
        """``log Q(ids)`` (float32, same shape as ``ids``)."""
        if self.distribution == "uniform":
            return torch.full(ids.shape, -math.log(self.vocab_size), device=ids.device)
        if self.distribution == "log_uniform":
            k = ids.double()
            q = (torch.log(k + 2) - torch.log(k + 1)) / math.log(self.vocab_size + 1)
            return q.log().float()
        return self.probs.to(ids.device)[ids].clamp_min(1e-30).log()  # type: ignore[union-attr]


def sampled_softmax_loss(
    hidden: Tensor,
    targets: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    num_sampled: int,
    sampler: CandidateSampler,
    *,
    remove_accidental_hits: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sampled-softmax cross-entropy (training only), mean over rows.

    Scores the true class and ``S = num_sampled`` candidates shared by all rows; each logit ``z_k`` becomes
    ``z_k - log(S * Q(k))`` (the expected count of k among the candidates), candidates equal to a row's target
    are masked out, and the loss is the cross-entropy of the true class among them. Cost O(N*(S+1)*H) instead
    of O(N*V*H).

    Inputs:
        hidden: (N, H) features. targets: (N,) ids in [0, V). weight: (V, H), bias: (V,) or None (the full
        output layer, e.g. ``nn.Linear(H, V)``'s parameters).
    Outputs: scalar mean loss.
    """
    if num_sampled < 1:
        raise ValueError(f"Expected num_sampled >= 1, got {num_sampled}")
    candidates = sampler.sample(num_sampled, hidden.device, generator)  # (S,)
    log_expected = math.log(num_sampled)
    true_w = weight[targets]  # (N, H)
    true_logit = (hidden * true_w).sum(-1)  # (N,)
    samp_logit = hidden @ weight[candidates].t()  # (N, S)
    if bias is not None:
        true_logit = true_logit + bias[targets]
        samp_logit = samp_logit + bias[candidates]
    true_logit = true_logit - (sampler.log_q(targets).to(hidden.dtype) + log_expected)
    samp_logit = samp_logit - (sampler.log_q(candidates).to(hidden.dtype) + log_expected)
    if remove_accidental_hits:
        hits = targets.unsqueeze(1) == candidates.unsqueeze(0)  # (N, S)
        samp_logit = samp_logit.masked_fill(hits, torch.finfo(samp_logit.dtype).min)
    logits = torch.cat([true_logit.unsqueeze(1), samp_logit], dim=1)  # (N, 1 + S)
    return F.cross_entropy(logits, torch.zeros_like(targets))
