"""pad_collate and BucketBatchSampler."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_rnn.data import BucketBatchSampler, pad_collate


def test_per_step_labels_and_features():
    items = [(torch.randn(3, 2), torch.tensor([1, 2, 3])), (torch.randn(1, 2), torch.tensor([4]))]
    out = pad_collate(items)
    assert out["inputs"].shape == (2, 3, 2)
    assert out["labels"].tolist() == [[1, 2, 3], [4, -100, -100]]
    assert out["mask"].tolist() == [[True, True, True], [True, False, False]]
    torch.testing.assert_close(out["inputs"][1, 0], items[1][0][0])
    assert (out["inputs"][1, 1:] == 0).all()


def test_errors_name_the_item():
    with pytest.raises(ValueError, match="empty batch"):
        pad_collate([])
    with pytest.raises(ValueError, match="item 1 to have at least one step"):
        pad_collate([torch.tensor([1]), torch.tensor([], dtype=torch.long)])
    with pytest.raises(ValueError, match=r"feature shape \(2,\), got \(3,\) for item 1"):
        pad_collate([torch.randn(2, 2), torch.randn(2, 3)])
    with pytest.raises(ValueError, match="labels of item 0 to have length 2, got 3"):
        pad_collate([(torch.tensor([1, 2]), torch.tensor([1, 2, 3]))])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=8))
def test_pad_collate_properties(lengths):
    seqs = [torch.arange(1, n + 1) for n in lengths]
    out = pad_collate(seqs)
    assert out["inputs"].shape == (len(lengths), max(lengths))
    assert out["lengths"].tolist() == lengths
    assert out["mask"].sum(1).tolist() == lengths
    for row, n in zip(out["inputs"], lengths):
        assert row[:n].tolist() == list(range(1, n + 1)) and (row[n:] == 0).all()


def test_bucketing_covers_every_index_once_and_cuts_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 200, (1000,), generator=g).tolist()
    sampler = BucketBatchSampler(lengths, 16, seed=1)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert len(batches) == len(sampler)

    def padding(bs):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)

    random_batches = torch.randperm(1000, generator=g).split(16)
    assert padding(batches) < 0.2 * padding([b.tolist() for b in random_batches])
    sampler.set_epoch(1)
    assert list(sampler) != batches  # reshuffled per epoch, deterministically
    sampler.set_epoch(0)
    assert list(sampler) == batches
