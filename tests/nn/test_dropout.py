"""LockedDropout, EmbeddingDropout and WeightDropout."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lightning_rnn.nn import EmbeddingDropout, LockedDropout, WeightDropout


@pytest.mark.parametrize("batch_first", [True, False])
def test_locked_dropout_same_mask_every_step(batch_first):
    drop = LockedDropout(0.5, batch_first=batch_first)
    x = torch.ones(8, 10, 16) if batch_first else torch.ones(10, 8, 16)
    y = drop(x)
    ybf = y if batch_first else y.transpose(0, 1)  # (N, L, F)
    zero = ybf == 0
    assert bool((zero == zero[:, :1]).all())  # same zeroed coordinates at every step
    assert zero.any() and (~zero).any()
    assert not bool((zero[0, 0] == zero[1, 0]).all())  # sequences get different masks
    torch.testing.assert_close(ybf[~zero], torch.full_like(ybf[~zero], 2.0))  # scaled by 1/(1-p)
    y2 = drop(x)
    assert not torch.equal(y, y2)  # fresh mask every call


def test_locked_dropout_expectation_and_eval():
    torch.manual_seed(0)
    drop = LockedDropout(0.3)
    x = torch.randn(64, 3, 32)
    mean = torch.stack([drop(x) for _ in range(400)]).mean(0)
    assert float((mean - x).abs().mean()) < 0.05 * float(x.abs().mean()) + 0.02
    drop.eval()
    assert drop(x) is x
    drop.mc_dropout = True
    assert not torch.equal(drop(x), x)


def test_locked_dropout_packed_sequence():
    drop = LockedDropout(0.5)
    x = torch.ones(4, 6, 8)
    lengths = torch.tensor([6, 2, 4, 5])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    y, _ = pad_packed_sequence(drop(packed), batch_first=True)
    for row, n in enumerate(lengths.tolist()):
        zero = y[row, :n] == 0
        assert bool((zero == zero[:1]).all())  # per-sequence mask, same at every step
        assert bool((y[row, n:] == 0).all())


def test_embedding_dropout_drops_whole_rows():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(20, 6)
    drop = EmbeddingDropout(emb, p=0.5)
    assert drop.weight is emb.weight and drop.num_embeddings == 20 and drop.embedding_dim == 6
    ids = torch.randint(0, 20, (16, 12))
    out = drop(ids)
    zero_rows = (out == 0).all(-1)  # (16, 12)
    for tok in ids.unique().tolist():
        z = zero_rows[ids == tok]
        assert bool((z == z[0]).all())  # every occurrence of a token dropped, or none
        if not z[0]:
            torch.testing.assert_close(out[ids == tok], 2 * emb.weight[tok].expand(int((ids == tok).sum()), 6))
    assert zero_rows.any() and (~zero_rows).any()
    drop.eval()
    torch.testing.assert_close(drop(ids), emb(ids))


def test_embedding_dropout_expectation_and_gradient():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 4)
    drop = EmbeddingDropout(emb, p=0.2)
    ids = torch.arange(10)
    mean = torch.stack([drop(ids) for _ in range(2000)]).mean(0)
    torch.testing.assert_close(mean, emb(ids), atol=0.1, rtol=0.1)
    drop(ids).sum().backward()
    assert emb.weight.grad is not None


def test_weight_dropout_gradient_and_restoration():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(4, 8)
    raw = lstm.weight_hh_l0.detach().clone()
    wd = WeightDropout(lstm, ["weight_hh_l0"], p=0.5)
    x = torch.randn(5, 2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, _ = wd(x)
        out.sum().backward()
    grad = lstm.weight_hh_l0.grad
    assert grad is not None and grad.abs().sum() > 0
    assert (grad == 0).any()  # dropped weights get no gradient in this forward
    torch.testing.assert_close(lstm.weight_hh_l0.detach(), raw)  # never overwritten
    wd.eval()
    torch.testing.assert_close(wd(x)[0], lstm(x)[0])  # dropped weights are back


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"Expected p to be a float in \[0, 1\), got 1.0"):
        LockedDropout(1.0)
    with pytest.raises(ValueError, match="Expected p"):
        EmbeddingDropout(torch.nn.Embedding(3, 2), -0.1)
    with pytest.raises(TypeError, match="Expected embedding to be a torch.nn.Embedding, got Linear"):
        EmbeddingDropout(torch.nn.Linear(3, 2), 0.1)
    with pytest.raises(ValueError, match="Expected weight names among"):
        WeightDropout(torch.nn.LSTM(2, 3), ["weight_hh_l9"])
    with pytest.raises(ValueError, match="Expected a 3-D input"):
        LockedDropout(0.5)(torch.ones(2, 3))
