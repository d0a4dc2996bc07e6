import math

import pytest
import torch

from lightning_rnn.nn.search import beam_search, greedy_search, length_penalty, max_lengths

BOS, EOS, PAD = 0, 1, 0


def table_step(table):
    """Fixed model: log p(next | last token) = table[last]; the state counts the calls."""
    logp = torch.log(table / table.sum(-1, keepdim=True))

    def step(state, tokens, memory):
        return logp[tokens], state, None

    return step


def test_hand_checkable_beam():
    # ids: 0 BOS, 1 EOS, 2 A, 3 B.  BOS -> A .6 / B .4; A -> EOS .4, A .3, B .3; B -> EOS .9, A/B .05
    eps = 1e-9
    table = torch.tensor(
        [[eps, eps, 0.6, 0.4], [eps, 1.0, eps, eps], [eps, 0.4, 0.3, 0.3], [eps, 0.9, 0.05, 0.05]]
    )
    step = table_step(table)
    greedy = greedy_search(step, None, None, batch_size=1, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=5)
    assert greedy.tokens.tolist() == [[2, 1]]  # A EOS, p = .24
    assert greedy.log_probs.item() == pytest.approx(math.log(0.24), abs=1e-5)
    beam = beam_search(step, None, None, batch_size=1, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=5,
                       beam_size=2, n_best=2)
    assert beam.tokens.tolist() == [[[3, 1], [2, 1]]]  # B EOS (.36) beats A EOS (.24)
    torch.testing.assert_close(beam.log_probs, torch.tensor([[math.log(0.36), math.log(0.24)]]))
    assert beam.lengths.tolist() == [[2, 2]]


class RandomStep:
    """A small deterministic recurrent model with a memory: h' = tanh(W h + E[tok] + mean(memory))."""

    def __init__(self, vocab=7, hidden=8, seed=0, eos_bias=0.0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(hidden, hidden, generator=g) * 0.9
        self.E = torch.randn(vocab, hidden, generator=g)
        self.U = torch.randn(hidden, vocab, generator=g) * 2
        self.U[:, EOS] -= 1.0 - eos_bias
        self.calls = 0

    def __call__(self, state, tokens, memory):
        self.calls += 1
        feats, mask = memory
        ctx = (feats * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        h = torch.tanh(state @ self.W + self.E[tokens] + ctx)
        logp = torch.log_softmax(h @ self.U, -1)
        attn = torch.softmax(torch.einsum("nh,nsh->ns", h, feats).masked_fill(~mask, float("-inf")), -1)
        return logp, h, attn


def _batch(n=5, s=6, hidden=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, s + 1, (n,), generator=g)
    lengths[0] = s
    mask = torch.arange(s)[None] < lengths[:, None]
    feats = torch.randn(n, s, hidden, generator=g) * mask.unsqueeze(-1)
    state = torch.randn(n, hidden, generator=g) * 0.1
    return state, (feats, mask), lengths


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_size_one_is_greedy(seed):
    model = RandomStep(seed=seed)
    state, memory, lengths = _batch(n=6, seed=seed)
    kw = dict(batch_size=6, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=12, return_attention=True)
    g = greedy_search(model, state, memory, **kw)
    b = beam_search(model, state, memory, beam_size=1, **kw)
    t = g.tokens.size(1)
    assert b.tokens[:, 0, :t].tolist() == g.tokens.tolist()
    assert b.lengths[:, 0].tolist() == g.lengths.tolist()
    torch.testing.assert_close(b.log_probs[:, 0], g.log_probs)
    torch.testing.assert_close(b.attention[:, 0, :t], g.attention)


@pytest.mark.parametrize("alpha,kind", [(0.0, "gnmt"), (1.0, "gnmt"), (0.7, "power")])
def test_batched_beam_equals_row_by_row_and_scores_sorted(alpha, kind):
    model = RandomStep(seed=3, eos_bias=0.8)
    state, (feats, mask), lengths = _batch(n=5, seed=4)
    limits = max_lengths(5, 9, src_lengths=lengths, max_ratio=1.5)
    kw = dict(bos_id=BOS, eos_id=EOS, pad_id=PAD, beam_size=4, n_best=3, alpha=alpha,
              length_penalty_type=kind, return_attention=True)
    full = beam_search(model, state, (feats, mask), batch_size=5, max_len=limits, **kw)
    assert (full.scores[:, :-1] >= full.scores[:, 1:]).all()
    torch.testing.assert_close(full.scores, full.log_probs / length_penalty(full.lengths, alpha, kind))
    assert (full.lengths <= limits[:, None]).all()
    for i in range(5):
        n = int(lengths[i])
        # the row alone, without the padding that longer rows imposed on it
        row = beam_search(model, state[i : i + 1], (feats[i : i + 1, :n], mask[i : i + 1, :n]), batch_size=1,
                          max_len=limits[i : i + 1], **kw)
        t = row.tokens.size(-1)
        assert full.tokens[i, :, :t].tolist() == row.tokens[0].tolist()
        assert (full.tokens[i, :, t:] == PAD).all()
        torch.testing.assert_close(full.scores[i], row.scores[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(full.attention[i, :, :t, :n], row.attention[0], rtol=1e-5, atol=1e-6)
        assert (full.attention[i, :, :, n:] == 0).all()


def test_tokens_after_end_are_pad_and_end_with_eos_or_limit():
    model = RandomStep(seed=5, eos_bias=0.5)
    state, memory, _ = _batch(n=4, seed=5)
    out = beam_search(model, state, memory, batch_size=4, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=6,
                      beam_size=3, n_best=3)
    for i in range(4):
        for k in range(3):
            n = int(out.lengths[i, k])
            toks = out.tokens[i, k].tolist()
            assert all(t == PAD for t in toks[n:])
            assert EOS not in toks[: n - 1]
            assert toks[n - 1] == EOS or n == 6


def test_early_stop_when_all_beams_end():
    table = torch.tensor([[1e-6, 1.0, 1e-3, 1e-3]] * 4)  # EOS almost surely
    step = table_step(table)
    calls = []

    def counting(state, tokens, memory):
        calls.append(1)
        return step(state, tokens, memory)

    greedy_search(counting, None, None, batch_size=3, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=50)
    assert len(calls) == 1
    calls.clear()
    out = beam_search(counting, None, None, batch_size=3, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=50,
                      beam_size=2, n_best=2)
    assert len(calls) == 2  # step 1: one beam ends; step 2: the other beams end
    assert out.tokens[:, 0].tolist() == [[1, 0]] * 3


def test_length_penalty_values_and_limits():
    lens = torch.tensor([1, 7, 11])
    torch.testing.assert_close(length_penalty(lens, 1.0), torch.tensor([1.0, 2.0, 16 / 6]))
    torch.testing.assert_close(length_penalty(lens, 0.5, "power"), lens.float().sqrt())
    torch.testing.assert_close(length_penalty(lens, 0.0), torch.ones(3))
    assert max_lengths(3, 10, src_lengths=torch.tensor([2, 5, 20]), max_ratio=1.5).tolist() == [3, 8, 10]


def test_bad_input():
    step = table_step(torch.ones(4, 4))
    kw = dict(batch_size=1, bos_id=BOS, eos_id=EOS, pad_id=PAD)
    with pytest.raises(ValueError, match="Expected beam_size to be an int >= 1, got 0"):
        beam_search(step, None, None, max_len=3, beam_size=0, **kw)
    with pytest.raises(ValueError, match="Expected max_len to be an int >= 1, got 0"):
        greedy_search(step, None, None, max_len=0, **kw)
    with pytest.raises(ValueError, match="n_best"):
        beam_search(step, None, None, max_len=3, beam_size=2, n_best=3, **kw)
    with pytest.raises(ValueError, match=r"\['gnmt', 'power'\]"):
        beam_search(step, None, None, max_len=3, beam_size=2, length_penalty_type="wu", **kw)
