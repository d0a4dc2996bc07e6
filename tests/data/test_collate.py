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


def test_scalar_labels_lists_and_time_major():
    out = pad_collate([([4, 5], 1), ([6, 7, 8], 0)], pad_value=9)
    assert out["inputs"].tolist() == [[4, 5, 9], [6, 7, 8]]
    assert out["labels"].tolist() == [1, 0] and out["labels"].shape == (2,)
    assert out["lengths"].dtype == torch.long and out["mask"].dtype == torch.bool
    tm = pad_collate([(torch.tensor([1, 2]), torch.tensor([3, 4])), (torch.tensor([5]), torch.tensor([6]))],
                     batch_first=False, label_pad_value=-1)
    assert tm["inputs"].tolist() == [[1, 5], [2, 0]]
    assert tm["labels"].tolist() == [[3, 6], [4, -1]]
    assert tm["mask"].tolist() == [[True, True], [True, False]]
    # plain lists of ids are sequences, not (sequence, label) pairs
    assert pad_collate([[1, 2], [3, 4, 5]])["lengths"].tolist() == [2, 3]


def test_mixed_items_are_rejected():
    with pytest.raises(ValueError, match="scalar .* like item 0's, got a \\(L,\\) tensor .* for item 1"):
        pad_collate([(torch.tensor([1, 2]), 1), (torch.tensor([3]), torch.tensor([1]))])
    with pytest.raises(TypeError, match="item 1"):
        pad_collate([(torch.tensor([1]), 0), torch.tensor([2])])
    with pytest.raises(ValueError, match=r"shape \(L,\) or \(L, F\), got \(1, 2, 3\)"):
        pad_collate([torch.zeros(1, 2, 3)])


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(1, 9), min_size=1, max_size=6),
    st.integers(1, 3),
    st.booleans(),
    st.booleans(),
)
def test_pad_collate_features_and_labels_properties(lengths, features, per_step, batch_first):
    g = torch.Generator().manual_seed(len(lengths))
    seqs = [torch.randn(n, features, generator=g) for n in lengths]
    labels = [torch.randint(0, 5, (n,), generator=g) if per_step else int(n % 3) for n in lengths]
    out = pad_collate(list(zip(seqs, labels)), pad_value=-7.0, batch_first=batch_first)
    inputs, mask = out["inputs"], out["mask"]
    if not batch_first:
        inputs, mask = inputs.transpose(0, 1), mask.T
    assert inputs.shape == (len(lengths), max(lengths), features)
    assert out["lengths"].tolist() == lengths
    assert mask.tolist() == [[t < n for t in range(max(lengths))] for n in lengths]
    for b, n in enumerate(lengths):
        torch.testing.assert_close(inputs[b, :n], seqs[b])
        assert (inputs[b, n:] == -7.0).all()
        if per_step:
            lab = out["labels"] if batch_first else out["labels"].T
            assert lab[b, :n].tolist() == labels[b].tolist() and (lab[b, n:] == -100).all()
        else:
            assert int(out["labels"][b]) == labels[b]


def test_bucketing_drop_last_no_shuffle_and_errors():
    lengths = list(range(10, 0, -1))  # 10 items
    s = BucketBatchSampler(lengths, 3, shuffle=False, bucket_size_multiplier=2, drop_last=True)
    batches = list(s)
    assert len(batches) == len(s) == 3 and all(len(b) == 3 for b in batches)
    # pools of 6 consecutive indices, each sorted by length
    assert batches == [[5, 4, 3], [2, 1, 0], [9, 8, 7]]
    assert list(s) == batches
    for bad in ({"batch_size": 0}, {"batch_size": 2, "bucket_size_multiplier": 0}):
        with pytest.raises(ValueError, match="Expected"):
            BucketBatchSampler(lengths, **bad)
    with pytest.raises(ValueError, match=r"Expected rank to be an int in \[0, "):
        BucketBatchSampler(lengths, 2, num_replicas=2, rank=2)


def test_bucketing_shards_over_ranks():
    lengths = torch.randint(1, 50, (101,), generator=torch.Generator().manual_seed(3)).tolist()
    full = list(BucketBatchSampler(lengths, 4, seed=5))
    shards = [list(BucketBatchSampler(lengths, 4, seed=5, num_replicas=3, rank=r)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    assert len(shards[0]) == len(BucketBatchSampler(lengths, 4, num_replicas=3, rank=0))
    seen = [tuple(b) for s in shards for b in s]
    assert len(set(seen)) == len(seen)  # disjoint across ranks: no batch is served twice
    assert set(seen) == {tuple(b) for b in full[: len(full) // 3 * 3]}  # the leftover global batches wait
