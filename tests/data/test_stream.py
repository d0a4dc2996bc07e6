"""TextStreamDataModule: continuity, shifting, no shuffling, rank-owned streams, errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lightning_rnn.data import CharVocab, TextStreamDataModule, WordVocab, stdlib_corpus_files


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """The default corpus cache of these tests is theirs (nothing written to the user's cache)."""
    monkeypatch.setenv("LIGHTNING_RNN_CACHE", str(tmp_path / "corpus-cache"))


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


def test_final_short_chunk_with_drop_last_false():
    dm = TextStreamDataModule(TEXT, batch_size=4, bptt=16, val_fraction=0.1, test_fraction=0.1, drop_last=False)
    dm.setup("fit")
    ids = dm.vocab.encode(TEXT)[:4000]
    n = 1000
    batches = _batches(dm)
    assert len(batches) == -(-(n - 1) // 16)
    assert batches[-1][0].shape == (4, (n - 1) % 16)
    # every training token with a target is handed out exactly once, in order, for every row
    for b in range(4):
        row_in = torch.cat([x[b] for x, _ in batches])
        row_tg = torch.cat([y[b] for _, y in batches])
        torch.testing.assert_close(row_in, ids[b * n : (b + 1) * n - 1])
        torch.testing.assert_close(row_tg, ids[b * n + 1 : (b + 1) * n])


def test_val_test_splits_are_contiguous_tail_and_eval_batch_size():
    dm = TextStreamDataModule(TEXT, batch_size=4, bptt=10, val_fraction=0.1, test_fraction=0.2, eval_batch_size=2)
    dm.setup("fit")
    ids = dm.vocab.encode(TEXT)
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (2, 10)
    torch.testing.assert_close(x[0], ids[3500:3510])  # val = tokens [3500, 4000), 2 rows of 250
    torch.testing.assert_close(x[1], ids[3750:3760])
    x, y = next(iter(dm.test_dataloader()))
    torch.testing.assert_close(x[0], ids[4000:4010])  # test = the last 20%
    torch.testing.assert_close(y[1], ids[4501:4511])
    none = TextStreamDataModule(TEXT, batch_size=2, bptt=8, val_fraction=0.0, test_fraction=0.0)
    assert none.val_dataloader() == [] and none.test_dataloader() == []


def test_vocab_from_training_split_only_and_setup_idempotent():
    text = "ab" * 450 + "z" * 100  # 'z' only in the test tail (the last 10%)
    dm = TextStreamDataModule(text, batch_size=2, bptt=5, val_fraction=0.0, test_fraction=0.1)
    dm.setup("fit")
    vocab, splits = dm.vocab, dm._splits
    dm.setup("test")
    assert dm.vocab is vocab and dm._splits is splits
    assert "z" not in vocab.stoi
    x, y = next(iter(dm.test_dataloader()))
    assert (x == vocab.unk_id).all()


def test_bptt_change_takes_effect_at_next_dataloader_build():
    dm = TextStreamDataModule(TEXT, batch_size=2, bptt=10, val_fraction=0.0, test_fraction=0.0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    dm.bptt = 25
    assert next(iter(loader))[0].shape == (2, 10)  # a built loader keeps its chunk length
    new = list(dm.train_dataloader())
    assert new[0][0].shape == (2, 25) and len(new) == (2500 - 1) // 25
    torch.testing.assert_close(new[1][0][0], dm.vocab.encode(TEXT)[25:50])


def test_rank_arguments_and_union_with_eval_splits():
    full = TextStreamDataModule(TEXT, batch_size=4, bptt=7, val_fraction=0.2, test_fraction=0.0)
    full.setup("fit")
    parts = [
        TextStreamDataModule(TEXT, batch_size=2, bptt=7, val_fraction=0.2, test_fraction=0.0, rank=r, world_size=2)
        for r in range(2)
    ]
    for split in ("train", "val"):
        whole = list(getattr(full, f"{split}_dataloader")())
        halves = [list(getattr(p, f"{split}_dataloader")()) for p in parts]
        assert len(halves[0]) == len(halves[1]) == len(whole)
        for (x, y), (a, ay), (b, by) in zip(whole, *halves):
            torch.testing.assert_close(torch.cat([a, b]), x)
            torch.testing.assert_close(torch.cat([ay, by]), y)
    with pytest.raises(ValueError, match=r"Expected rank to be an int in \[0, "):
        TextStreamDataModule(TEXT, rank=2, world_size=2)
    with pytest.raises(ValueError, match="together"):
        TextStreamDataModule(TEXT, rank=1)


def test_lightning_ddp_does_not_inject_a_sampler_and_workers_keep_order():
    from lightning.pytorch import Trainer
    from lightning.pytorch.trainer.states import RunningStage

    dm = TextStreamDataModule(TEXT, batch_size=2, bptt=9, val_fraction=0.0, test_fraction=0.0, num_workers=2)
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2)
    loader = dm.train_dataloader()
    # a DDP Trainer with the default use_distributed_sampler=True (not launched: only its data connector)
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False)
    assert trainer._data_connector._prepare_dataloader(loader, shuffle=True, mode=RunningStage.TRAINING) is loader
    reference = TextStreamDataModule(TEXT, batch_size=2, bptt=9, val_fraction=0.0, test_fraction=0.0)
    reference.trainer = dm.trainer
    got, want = list(loader), list(reference.train_dataloader())
    assert len(got) == len(want)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, want))


def test_level_follows_given_vocab_and_state_dict_reencodes(tmp_path):
    text = "the cat sat on the mat " * 50
    vocab = WordVocab.build("the cat sat on mat")
    dm = TextStreamDataModule(text, batch_size=2, bptt=5, vocab=vocab, val_fraction=0.0, test_fraction=0.0)
    assert dm.level == "word"
    dm.setup("fit")
    x, _ = next(iter(dm.train_dataloader()))
    assert vocab.decode(x[0]) == "the cat sat on the"
    with pytest.raises(ValueError, match="level='word'"):
        TextStreamDataModule(text, vocab=vocab, level="char")
    vocab.save(tmp_path / "v.json")
    assert TextStreamDataModule(text, vocab=str(tmp_path / "v.json")).vocab == vocab
    # a restored (different) vocabulary re-encodes the text
    other = TextStreamDataModule(text, batch_size=2, bptt=5, level="word", val_fraction=0.0, test_fraction=0.0)
    other.setup("fit")
    restored = WordVocab(["<unk>", "mat", "on", "sat", "cat", "the"])
    other.load_state_dict({"vocab": restored.to_dict(), "bptt": 4})
    x, _ = next(iter(other.train_dataloader()))
    assert x.shape == (2, 4) and restored.decode(x[0]) == "the cat sat on"


def test_directory_documents_reset_exactly(tmp_path):
    sizes = {"a.txt": 130, "b.txt": 75, "c.txt": 200}
    for name, size in sizes.items():
        (tmp_path / name).write_text(name[0] * size)
    dm = TextStreamDataModule(
        tmp_path, batch_size=2, bptt=10, val_fraction=0.0, test_fraction=0.0, mark_documents=True
    )
    dm.setup("fit")
    starts = torch.zeros(405, dtype=torch.bool)
    starts[[0, 130, 205]] = True
    n = 405 // 2
    for i, batch in enumerate(dm.train_dataloader()):
        assert set(batch) == {"inputs", "targets", "reset"}
        for b in range(2):
            # row b covers stream positions [b*n, (b+1)*n); chunk i starts at column i*10
            lo, hi = b * n + max(0, (i - 1) * 10 + 1), b * n + i * 10 + 1
            assert bool(batch["reset"][b]) == bool(starts[lo:hi].any()), (i, b)


def test_default_corpus_is_the_stdlib():
    dm = TextStreamDataModule(None, batch_size=4, bptt=32, max_bytes=60_000)
    dm.setup("fit")
    total = sum(t.numel() for t, _ in dm._splits.values())
    files = stdlib_corpus_files(60_000)
    assert total == sum(len(f.read_text(encoding="utf-8")) for f in files) <= 60_000
    assert dm.vocab.decode(next(iter(dm.train_dataloader()))[0][0]) == files[0].read_text(encoding="utf-8")[:32]


def test_too_short_split_names_split_and_numbers():
    dm = TextStreamDataModule("x" * 1000, batch_size=4, bptt=20, val_fraction=0.05, test_fraction=0.0)
    dm.setup("fit")
    assert len(dm.train_dataloader()) > 0
    with pytest.raises(ValueError, match=r"at least 84 tokens in the val split .* got 50 tokens"):
        dm.val_dataloader()


@pytest.mark.slow
def test_real_two_process_ddp_fit_gets_rank_blocks(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "ddp.py"
    script.write_text(
        "import sys, torch, lightning as L\n"
        "from lightning_rnn.data import TextStreamDataModule\n"
        "class M(L.LightningModule):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.w = torch.nn.Parameter(torch.zeros(1)); self.seen = []\n"
        "    def training_step(self, batch, i):\n"
        "        self.seen.append(batch[0].clone()); return self.w.sum() * 0\n"
        "    def configure_optimizers(self):\n"
        "        return torch.optim.SGD(self.parameters(), lr=0.1)\n"
        "devices = int(sys.argv[1])\n"
        f"dm = TextStreamDataModule({TEXT!r}, batch_size=4 // devices, bptt=12, val_fraction=0.0, test_fraction=0.0)\n"
        "m = M()\n"
        "tr = L.Trainer(accelerator='cpu', devices=devices, strategy='ddp' if devices > 1 else 'auto', max_epochs=1,"
        " logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)\n"
        "tr.fit(m, datamodule=dm)\n"
        "torch.save(torch.stack(m.seen), sys.argv[2] + f'/out{devices}_{tr.global_rank}.pt')\n"
    )
    root = str(Path(__file__).resolve().parents[2])
    for devices in (1, 2):
        proc = subprocess.run(
            [sys.executable, str(script), str(devices), str(tmp_path)],
            env={**__import__("os").environ, "PYTHONPATH": root},
            capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    one = torch.load(tmp_path / "out1_0.pt")
    r0, r1 = torch.load(tmp_path / "out2_0.pt"), torch.load(tmp_path / "out2_1.pt")
    torch.testing.assert_close(torch.cat([r0, r1], dim=1), one)
