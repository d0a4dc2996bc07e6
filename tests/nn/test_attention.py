import pytest
import torch

from lightning_rnn.nn import BahdanauAttention, LuongAttention
from lightning_rnn.nn.attention import masked_softmax, padding_mask


def _modules():
    return [
        BahdanauAttention(5, 6, 7),
        LuongAttention(6, 6, "dot"),
        LuongAttention(5, 6, "general"),
        LuongAttention(5, 6, "concat", hidden_size=4),
    ]


def _inputs(module, n=3, s=6):
    keys = torch.randn(n, s, module.key_size)
    query = torch.randn(n, module.query_size)
    lengths = torch.tensor([6, 2, 4])[:n]
    return query, keys, lengths


@pytest.mark.parametrize("module", _modules(), ids=["bahdanau", "dot", "general", "concat"])
def test_pads_get_exactly_zero_and_rows_sum_to_one(module):
    query, keys, lengths = _inputs(module)
    mask = padding_mask(lengths, keys.size(1))
    context, weights = module(query, keys, mask)
    assert weights.shape == (3, 6) and context.shape == (3, module.key_size)
    assert (weights[~mask] == 0).all()
    assert (weights[mask] > 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))
    torch.testing.assert_close(context, torch.einsum("ns,nsk->nk", weights, keys))


@pytest.mark.parametrize("module", _modules(), ids=["bahdanau", "dot", "general", "concat"])
def test_extra_padding_with_garbage_changes_nothing(module):
    query, keys, lengths = _inputs(module)
    mask = padding_mask(lengths, keys.size(1))
    keys = keys.masked_fill(~mask.unsqueeze(-1), 0.0)
    context, weights = module(query, keys, mask)
    # wider batch, garbage in every pad position
    wide = torch.randn(3, 11, module.key_size) * 100
    wide_mask = padding_mask(lengths, 11)
    wide[wide_mask] = keys[mask]
    context_w, weights_w = module(query, wide, wide_mask)
    torch.testing.assert_close(context_w, context, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(weights_w[:, :6], weights, rtol=1e-6, atol=1e-7)
    assert (weights_w[:, 6:] == 0).all()
    # each row alone, unpadded
    for i, n in enumerate(lengths.tolist()):
        c_i, w_i = module(query[i : i + 1], keys[i : i + 1, :n])
        torch.testing.assert_close(c_i[0], context[i], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(w_i[0], weights[i, :n], rtol=1e-6, atol=1e-7)


def test_bahdanau_matches_formula_and_projected_keys_are_explicit():
    attn = BahdanauAttention(4, 3, 5)
    q, k = torch.randn(2, 4), torch.randn(2, 7, 3)
    scores = torch.tanh(q @ attn.query_proj.weight.T + (k @ attn.key_proj.weight.T + attn.key_proj.bias)[:, :, :].transpose(0, 1)).transpose(0, 1) @ attn.v.weight.T
    expected = torch.softmax(scores.squeeze(-1), -1)
    _, w = attn(q, k)
    torch.testing.assert_close(w, expected)
    _, w2 = attn(q, k, projected_keys=attn.project_keys(k))
    torch.testing.assert_close(w2, expected)
    # nothing cached on self: interleaving two sources gives the same answers
    k_other = torch.randn(2, 5, 3)
    attn(q, k_other, projected_keys=attn.project_keys(k_other))
    _, w3 = attn(q, k)
    torch.testing.assert_close(w3, expected)


def test_luong_scores_match_formulas():
    q, k = torch.randn(2, 4), torch.randn(2, 5, 4)
    dot = LuongAttention(4, 4, "dot")
    torch.testing.assert_close(dot(q, k)[1], torch.softmax(torch.einsum("nk,nsk->ns", q, k), -1))
    gen = LuongAttention(4, 4, "general")
    W = gen.key_proj.weight  # (Q, K)
    torch.testing.assert_close(gen(q, k)[1], torch.softmax(torch.einsum("nq,qk,nsk->ns", q, W, k), -1))


def test_masked_softmax_matches_softmax_on_the_real_part():
    scores = torch.randn(2, 5)
    mask = padding_mask(torch.tensor([5, 3]), 5)
    w = masked_softmax(scores, mask)
    torch.testing.assert_close(w[1, :3], torch.softmax(scores[1, :3], -1))
    assert w[1, 3:].eq(0).all()


def test_bad_input():
    with pytest.raises(ValueError, match=r"one of \['dot', 'general', 'concat'\]"):
        LuongAttention(4, 4, "cosine")
    with pytest.raises(ValueError, match="query_size == key_size"):
        LuongAttention(4, 5, "dot")
    attn = BahdanauAttention(4, 3, 5)
    with pytest.raises(ValueError, match=r"Expected keys of shape \(2, S, 3\)"):
        attn(torch.randn(2, 4), torch.randn(2, 5, 4))
    with pytest.raises(TypeError, match="bool mask"):
        attn(torch.randn(2, 4), torch.randn(2, 5, 3), torch.ones(2, 5))
    with pytest.raises(ValueError, match="Expected mask of shape"):
        attn(torch.randn(2, 4), torch.randn(2, 5, 3), torch.ones(2, 4, dtype=torch.bool))
