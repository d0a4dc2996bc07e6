"""Large-vocabulary outputs: adaptive / sampled softmax (lightning_rnn.nn.softmax) and RNNLanguageModel(output=...)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lightning_rnn import RNNConfig, RNNLanguageModel
from lightning_rnn.nn.softmax import CandidateSampler, adaptive_softmax, check_cutoffs, sampled_softmax_loss

from ._tbptt_models import trainer

V = 30


def _tokens(n=3, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (n, length + 1), generator=g)
    return x[:, :-1], x[:, 1:]


# ---------------------------------------------------------------------- pure functions
def test_adaptive_log_probs_sum_to_one():
    torch.manual_seed(0)
    asm = adaptive_softmax(8, 100, [5, 20, 60], div_value=2.0)
    logp = asm.log_prob(torch.randn(7, 8))
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(7))


@pytest.mark.parametrize(
    "cutoffs,match",
    [([], "at least one"), ([5, 5], "strictly increasing"), ([10, 4], "strictly increasing"),
     ([0, 4], r"in \(0, vocab_size=30\)"), ([5, 30], r"in \(0, vocab_size=30\)")],
)
def test_bad_cutoffs(cutoffs, match):
    with pytest.raises(ValueError, match=match):
        check_cutoffs(cutoffs, 30)
    with pytest.raises(ValueError, match=match):
        RNNLanguageModel(V, 8, encoder=RNNConfig(hidden_size=8), output="adaptive", adaptive_cutoffs=cutoffs)


class _AllIds(CandidateSampler):
    """Every id exactly once with Q = 1/V: the sampled loss must then be the full softmax loss."""

    def sample(self, num_sampled, device, generator=None):
        return torch.arange(self.vocab_size, device=device)


def test_sampled_loss_with_every_id_once_equals_full_softmax():
    torch.manual_seed(1)
    h, w, b = torch.randn(6, 5), torch.randn(V, 5), torch.randn(V)
    y = torch.randint(0, V, (6,))
    loss = sampled_softmax_loss(h, y, w, b, V, _AllIds(V, "uniform"))
    torch.testing.assert_close(loss, F.cross_entropy(h @ w.t() + b, y))


@pytest.mark.parametrize("distribution", ["log_uniform", "unigram"])
def test_candidate_sampler_matches_its_q(distribution):
    counts = torch.arange(V, 0, -1).float() ** 2
    sampler = CandidateSampler(V, distribution, counts if distribution == "unigram" else None)
    q = sampler.log_q(torch.arange(V)).exp()
    assert q.sum().item() == pytest.approx(1.0, abs=1e-5)
    ids = sampler.sample(200_000, "cpu", torch.Generator().manual_seed(0))
    freq = torch.bincount(ids, minlength=V).float() / ids.numel()
    torch.testing.assert_close(freq, q, atol=3e-3, rtol=0)


# ---------------------------------------------------------------------- RNNLanguageModel(output=...)
def test_adaptive_eval_ppl_equals_full_softmax_of_same_weights_with_one_cluster():
    # cut-off V-1: the head holds ids 0..V-2 plus one cluster logit whose single tail word is id V-1, so the
    # adaptive distribution is exactly softmax(head(h)) over V outputs
    torch.manual_seed(2)
    lm = RNNLanguageModel(V, 8, encoder=RNNConfig(hidden_size=12), output="adaptive", adaptive_cutoffs=[V - 1])
    x, y = _tokens()
    (metrics,) = trainer().validate(lm, DataLoader([(x, y)], batch_size=None), verbose=False)
    with torch.no_grad():
        out, _ = lm.rnn(lm.embedding(x))
        logits = lm.adaptive.head(out)  # (N, L, V)
        ce = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1)).item()
    assert metrics["val/loss"] == pytest.approx(ce, rel=1e-5)
    assert metrics["val/ppl"] == pytest.approx(math.exp(ce), rel=1e-4)


def test_adaptive_eval_ppl_is_exact_with_several_clusters():
    torch.manual_seed(3)
    lm = RNNLanguageModel(V, 8, encoder=RNNConfig(hidden_size=12), output="adaptive", adaptive_cutoffs=[4, 12])
    x, y = _tokens()
    (metrics,) = trainer().validate(lm, DataLoader([(x, y)], batch_size=None), verbose=False)
    with torch.no_grad():
        logp, _ = lm(x)  # exact log-probabilities (N, L, V)
        nll = -logp.gather(-1, y.unsqueeze(-1)).mean().item()
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(3, 12))
    assert metrics["val/loss"] == pytest.approx(nll, rel=1e-5)
    assert metrics["val/ppl"] == pytest.approx(math.exp(nll), rel=1e-4)


def test_sampled_trains_and_evaluates_with_the_full_softmax():
    torch.manual_seed(4)
    lm = RNNLanguageModel(V, 8, encoder=RNNConfig(hidden_size=12), output="sampled", num_sampled=8, tbptt_steps=6, lr=0.05)
    x, y = _tokens()
    before = [p.detach().clone() for p in lm.parameters()]
    t = trainer(max_epochs=3)
    t.fit(lm, DataLoader([(x, y)], batch_size=None))
    assert all(torch.isfinite(p).all() for p in lm.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(lm.parameters(), before))
    (metrics,) = t.validate(lm, DataLoader([(x, y)], batch_size=None), verbose=False)
    with torch.no_grad():
        logits, _ = lm(x)
        ce = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1)).item()
    assert metrics["val/ppl"] == pytest.approx(math.exp(ce), rel=1e-4)


def test_output_option_errors():
    with pytest.raises(ValueError, match="output in"):
        RNNLanguageModel(V, 8, encoder=RNNConfig(hidden_size=8), output="hierarchical")
    with pytest.raises(ValueError, match="tie_weights=False"):
        RNNLanguageModel(V, 8, encoder=RNNConfig(hidden_size=8), output="adaptive", tie_weights=True)
    with pytest.raises(ValueError, match="Expected sampler to be one of"):
        RNNLanguageModel(V, 8, encoder=RNNConfig(hidden_size=8), output="sampled", sampler="zipf")
