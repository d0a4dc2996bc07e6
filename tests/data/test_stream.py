"""TextStreamDataModule: continuity, shifting, no shuffling, rank-owned streams, errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lightning_rnn.data import CharVocab, TextStreamDataModule

TEXT = "".join(chr(97 + (i * 7 + i // 11) % 26) for i in range(5000))


def _batches(dm):
    return list(dm.train_dataloader())


def test_batches_continue_rows_exactly_and_targets_shift():
    dm = TextStreamDataModule(TEXT, batch_size=4, bptt=16, val_fraction=0.1, test_fraction=0.1)
    dm.setup("fit")
    ids = dm.vocab.encode(TEXT)[:4000]  # training split
    n = 4000 // 4
    batches = _batches(dm)
    assert len(batches) == (n - 1) // 16
    for i, (x, y) in enumerate(batches):
        assert x.shape == (4, 16)
        for b in range(4):
            # row b is the contiguous block [b*n, (b+1)*n) of the training stream
            torch.testing.assert_close(x[b], ids[b * n + i * 16 : b * n + (i + 1) * 16])
            torch.testing.assert_close(y[b], ids[b * n + i * 16 + 1 : b * n + (i + 1) * 16 + 1])
    # never shuffles: two passes are identical
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, _batches(dm)))


def test_ranks_own_disjoint_contiguous_blocks():
    def for_rank(rank, world, batch_size):
        dm = TextStreamDataModule(TEXT, batch_size=batch_size, bptt=10, val_fraction=0.0, test_fraction=0.0)
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=world)
        dm.setup("fit")
        return _batches(dm)

    single = for_rank(0, 1, 6)
    r0, r1 = for_rank(0, 2, 3), for_rank(1, 2, 3)
    assert len(r0) == len(r1) == len(single)
    for (x, _), (a, _), (b, _) in zip(single, r0, r1):
        torch.testing.assert_close(torch.cat([a, b]), x)
        assert not any(torch.equal(ra, rb) for ra in a for rb in b)


def test_document_resets_and_vocab_in_state_dict(tmp_path):
    (tmp_path / "a.txt").write_text("x" * 320)
    (tmp_path / "b.txt").write_text("y" * 300)
    dm = TextStreamDataModule(tmp_path, batch_size=1, bptt=50, val_fraction=0.0, test_fraction=0.0, mark_documents=True)
    dm.setup("fit")
    batches = _batches(dm)
    resets = [bool(b["reset"][0]) for b in batches]
    # document a starts at 0 (chunk 0), document b at token 320 — inside chunk 6 ([300, 350)) -> reset at chunk 7
    first_y = next(i for i, b in enumerate(batches) if (b["inputs"] == dm.vocab.stoi["y"]).any())
    assert resets[0] and resets[first_y + 1] and sum(resets) == 2
    state = dm.state_dict()
    other = TextStreamDataModule(tmp_path, batch_size=1, bptt=50)
    other.load_state_dict(state)
    assert other.vocab == dm.vocab and isinstance(other.vocab, CharVocab)


def test_word_level_and_given_vocab():
    text = "the cat sat on the mat " * 200
    dm = TextStreamDataModule(text, batch_size=2, bptt=5, level="word", val_fraction=0.1, test_fraction=0.0)
    dm.setup("fit")
    assert dm.vocab_size == 6
    x, y = next(iter(dm.train_dataloader()))
    assert dm.vocab.decode(x[0]) == "the cat sat on the"


def test_errors():
    with pytest.raises(ValueError, match="batch_size"):
        TextStreamDataModule(TEXT, batch_size=0)
    with pytest.raises(ValueError, match="bptt"):
        TextStreamDataModule(TEXT, bptt=-1)
    with pytest.raises(ValueError, match="level in"):
        TextStreamDataModule(TEXT, level="byte")
    with pytest.raises(ValueError, match="val_fraction"):
        TextStreamDataModule(TEXT, val_fraction=1.5)
    with pytest.raises(ValueError, match="< 1"):
        TextStreamDataModule(TEXT, val_fraction=0.6, test_fraction=0.5)
    dm = TextStreamDataModule("abc" * 30, batch_size=4, bptt=32, val_fraction=0.0, test_fraction=0.0)
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"at least 132 tokens .* got 90 tokens"):
        dm.train_dataloader()
