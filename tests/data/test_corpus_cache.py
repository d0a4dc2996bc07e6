"""The tokenised-corpus cache behind TextStreamDataModule: same batches as the in-memory reference, content-keyed
invalidation, streaming (chunked) reads, compact dtypes, DDP ranks sharing one cache, resumable loading."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import lightning_rnn.data.corpus as corpus_mod
from lightning_rnn.data import CharVocab, StreamChunks, TextStreamDataModule, WordVocab, batchify
from lightning_rnn.data.corpus import TokenCorpus, iter_text_pieces, read_text_source, token_dtype

ROOT = str(Path(__file__).resolve().parents[2])


# ------------------------------------------------------------------------------ reference
def _reference_batches(source, *, level="char", batch_size=2, bptt=7, val_fraction=0.1, test_fraction=0.1,
                       min_freq=1, max_size=None, mark_documents=False, max_bytes=None, pattern="*",
                       rank=0, world_size=1):
    """The whole-text implementation TextStreamDataModule had before the cache (kept verbatim in spirit):
    read every document into a string, tokenise into one int64 tensor, build the vocabulary from the training
    text, lay each split out with ``batchify`` and bool document starts."""
    docs = read_text_source(source, pattern=pattern, max_bytes=max_bytes)
    cls = {"char": CharVocab, "word": WordVocab}[level]
    if level == "char":
        text = "".join(t for _, t in docs)
        doc_lengths = [len(t) for _, t in docs]
        n = len(text)
    else:
        per_doc = [cls.tokenize(t) for _, t in docs]
        doc_lengths = [len(toks) for toks in per_doc]
        tokens = [tok for toks in per_doc for tok in toks]
        n = len(tokens)
    n_test, n_val = int(n * test_fraction), int(n * val_fraction)
    n_train = n - n_val - n_test
    train_text = text[:n_train] if level == "char" else cls.join(tokens[:n_train])
    vocab = cls.build(train_text, min_freq=min_freq, max_size=max_size)
    if level == "char":
        ids = vocab.encode(text)
    else:
        ids = torch.tensor([vocab.stoi.get(t, vocab.unk_id) for t in tokens], dtype=torch.long)
    starts = torch.zeros(n, dtype=torch.bool)
    offsets = torch.tensor([0, *doc_lengths[:-1]], dtype=torch.long).cumsum(0)
    starts[offsets[offsets < n]] = True
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}
    out = {}
    for split, (a, b) in bounds.items():
        if b - a == 0:
            continue
        rows = batch_size * world_size
        block = slice(rank * batch_size, (rank + 1) * batch_size)
        s_ids, s_starts = batchify(ids[a:b], rows)[block], batchify(starts[a:b], rows)[block]
        out[split] = list(StreamChunks(s_ids, bptt, s_starts if mark_documents else None))
    return vocab, out


def _module_batches(dm):
    dm.prepare_data()
    dm.setup("fit")
    out = {"train": list(dm.train_dataloader())}
    for split in ("val", "test"):
        loader = getattr(dm, f"{split}_dataloader")()
        if loader != []:
            out[split] = list(loader)
    return out


def _assert_same_batches(got, want):
    assert got.keys() == want.keys()
    for split in want:
        assert len(got[split]) == len(want[split]) > 0, split
        for g, w in zip(got[split], want[split]):
            if isinstance(w, dict):
                assert g.keys() == w.keys()
                for key in w:
                    assert g[key].dtype == w[key].dtype and torch.equal(g[key], w[key]), (split, key)
            else:
                for gi, wi in zip(g, w):
                    assert gi.dtype == wi.dtype == torch.long and torch.equal(gi, wi), split


def _write_corpus(root: Path) -> Path:
    """A directory of documents with multi-byte characters, words that straddle any small read size, a
    whitespace-only file (no words), an empty file (skipped) and a nested directory."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "γάμμα", "δ", "epsilon", "zeta", "ηta", "θ", "iota", "kappa", "😀x"]
    for i in range(5):
        n = int(rng.integers(40, 160))
        seps = rng.choice([" ", "  ", "\n", "\t", " \n"], size=n)
        text = "".join(w + s for w, s in zip(rng.choice(words, size=n, p=None), seps))
        rare = "onlyonce twice twice thrice thrice thrice " if i == 0 else ""
        (root / f"doc{i}.txt").write_text(rare + (text if i % 2 else text.rstrip()), encoding="utf-8")
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "nested.txt").write_text("kappa iota θ " * 30 + "end", encoding="utf-8")
    (root / "blank.txt").write_text(" \n\t ", encoding="utf-8")
    (root / "empty.txt").write_text("", encoding="utf-8")
    return root


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """The default cache directory of these tests is theirs (nothing written to the user's cache)."""
    monkeypatch.setenv("LIGHTNING_RNN_CACHE", str(tmp_path / "default-cache"))


@pytest.fixture
def small_reads(monkeypatch):
    """Read 7 bytes at a time: multi-byte characters and words straddle reads everywhere."""
    monkeypatch.setattr(corpus_mod, "_CHUNK_BYTES", 7)


# ------------------------------------------------------------------------------ identical batches
@pytest.mark.parametrize("level", ["char", "word"])
@pytest.mark.parametrize("cache", [True, False])
def test_directory_source_matches_the_reference_with_and_without_cache(tmp_path, small_reads, level, cache):
    src = _write_corpus(tmp_path / "src")
    opts = dict(level=level, batch_size=2, bptt=5 if level == "word" else 11, val_fraction=0.1, test_fraction=0.15,
                mark_documents=True)
    vocab, want = _reference_batches(src, **opts)
    dm = TextStreamDataModule(src, cache=cache, cache_dir=tmp_path / "cache", **opts)
    _assert_same_batches(_module_batches(dm), want)
    assert dm.vocab == vocab
    assert sum(bool(b["reset"].any()) for b in want["train"]) > 1  # the documents really reset
    entries = [p for p in (tmp_path / "cache").glob("*") if p.is_dir() and p.name != "index"]
    assert len(entries) == (1 if cache else 0)
    if cache:  # a fresh module opens the entry memory-mapped and hands out the same batches
        again = TextStreamDataModule(src, cache=True, cache_dir=tmp_path / "cache", **opts)
        _assert_same_batches(_module_batches(again), want)
        assert isinstance(TokenCorpus.open(entries[0]).ids, np.memmap)


@pytest.mark.parametrize("min_freq,max_size", [(2, None), (3, 4), (1, 2)])
def test_word_level_min_freq_and_max_size_match_the_reference(tmp_path, small_reads, min_freq, max_size):
    src = _write_corpus(tmp_path / "src")
    opts = dict(level="word", batch_size=3, bptt=4, val_fraction=0.2, test_fraction=0.0, min_freq=min_freq,
                max_size=max_size)
    vocab, want = _reference_batches(src, **opts)
    dm = TextStreamDataModule(src, cache_dir=tmp_path / "cache", **opts)
    _assert_same_batches(_module_batches(dm), want)
    assert dm.vocab == vocab and dm.vocab.unk_id == 0
    assert any((x == 0).any() for x, _ in want["train"])  # some words are <unk>


def test_char_level_string_file_list_and_max_bytes_match_the_reference(tmp_path, small_reads):
    src = _write_corpus(tmp_path / "src")
    files = [src / "doc3.txt", src / "doc1.txt", src / "sub"]
    for source, extra in ((files, {"max_bytes": 300}), ("literal text " * 40, {}), (files, {})):
        vocab, want = _reference_batches(source, bptt=6, **extra)
        dm = TextStreamDataModule(source, batch_size=2, bptt=6, val_fraction=0.1, test_fraction=0.1,
                                  cache_dir=tmp_path / "cache", **extra)
        _assert_same_batches(_module_batches(dm), want)
        assert dm.vocab == vocab


def test_rank_blocks_match_the_reference(tmp_path):
    src = _write_corpus(tmp_path / "src")
    for rank in range(2):
        _, want = _reference_batches(src, bptt=9, mark_documents=True, rank=rank, world_size=2)
        dm = TextStreamDataModule(src, batch_size=2, bptt=9, val_fraction=0.1, test_fraction=0.1, mark_documents=True,
                                  rank=rank, world_size=2, cache_dir=tmp_path / "cache")
        _assert_same_batches(_module_batches(dm), want)


def test_given_vocabulary_and_compact_dtypes(tmp_path):
    (tmp_path / "a.txt").write_text("abcabc" * 50)
    corpus = TokenCorpus.load(tmp_path / "a.txt", level="char", cache_dir=tmp_path / "cache")
    assert corpus.ids.dtype == np.uint8 and len(corpus) == 300
    big = CharVocab(["<unk>", *(chr(0x4E00 + i) for i in range(300)), "a", "b", "c"])
    given = TokenCorpus.load(tmp_path / "a.txt", level="char", vocab=big, cache_dir=tmp_path / "cache")
    assert given.ids.dtype == np.uint16 and given.vocab == big
    torch.testing.assert_close(given.tensor().long(), big.encode("abcabc" * 50))
    assert token_dtype(65_536) == np.uint16 and token_dtype(65_537) == np.uint32
    (tmp_path / "u.txt").write_text("ab\u00e9c\U0001F600a\x01b" * 3, encoding="utf-8")  # unknown: below and above
    small = CharVocab.build("\u00e0cab")
    unknown = TokenCorpus.load(tmp_path / "u.txt", level="char", vocab=small, cache_dir=None)
    torch.testing.assert_close(unknown.tensor().long(), small.encode("ab\u00e9c\U0001F600a\x01b" * 3))


# ------------------------------------------------------------------------------ invalidation
def _entries(cache: Path) -> set[str]:
    return {p.name for p in cache.iterdir() if p.is_dir() and p.name != "index" and not p.name.startswith(".")}


def test_cache_is_reused_and_a_changed_source_is_tokenised_again(tmp_path, monkeypatch):
    path = tmp_path / "corpus.txt"
    path.write_text("the quick brown fox " * 40)
    cache = tmp_path / "cache"
    opts = dict(batch_size=2, bptt=8, val_fraction=0.1, test_fraction=0.0, cache_dir=cache)
    first = _module_batches(TextStreamDataModule(path, **opts))
    assert len(_entries(cache)) == 1
    builds = []
    real_build = TokenCorpus.build.__func__

    def counting_build(cls, *args, **kwargs):
        builds.append(args[0])
        return real_build(cls, *args, **kwargs)

    monkeypatch.setattr(TokenCorpus, "build", classmethod(counting_build))
    _assert_same_batches(_module_batches(TextStreamDataModule(path, **opts)), first)
    os.utime(path)  # touched, content unchanged: re-hashed, same entry, nothing rebuilt
    _assert_same_batches(_module_batches(TextStreamDataModule(path, **opts)), first)
    assert builds == [] and len(_entries(cache)) == 1
    # same size, one character changed, modification time put back: still tokenised again
    stat = path.stat()
    path.write_text("the quick brown fox " * 39 + "the quick brown box ")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changed = _module_batches(TextStreamDataModule(path, **opts))
    assert len(builds) == 1 and len(_entries(cache)) == 2
    _, want = _reference_batches(path, bptt=8, val_fraction=0.1, test_fraction=0.0)
    _assert_same_batches(changed, want)
    # another vocabulary option is another entry; a given vocabulary is part of the key
    TextStreamDataModule(path, min_freq=2, **opts).setup()
    TextStreamDataModule(path, vocab=CharVocab.build("the quick"), **opts).setup()
    assert len(builds) == 3 and len(_entries(cache)) == 4


def test_a_file_added_to_a_directory_source_is_a_new_entry(tmp_path):
    src = _write_corpus(tmp_path / "src")
    cache = tmp_path / "cache"
    TextStreamDataModule(src, cache_dir=cache, batch_size=2, bptt=5).setup()
    (src / "aa.txt").write_text("one more document")  # first in order: in the training split
    dm = TextStreamDataModule(src, cache_dir=cache, batch_size=2, bptt=5)
    dm.setup()
    assert len(_entries(cache)) == 2 and "m" in dm.vocab.stoi


# ------------------------------------------------------------------------------ streaming
def test_reads_are_chunked_and_decoding_errors_name_the_file_offset(tmp_path, small_reads):
    path = tmp_path / "t.txt"
    path.write_text("ab€cd" * 10, encoding="utf-8")
    pieces = list(iter_text_pieces([path], chunk_bytes=4))
    assert max(len(p) for _, p in pieces) <= 4 and "".join(p for _, p in pieces) == "ab€cd" * 10
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello world, " * 3 + b"\xff tail")
    with pytest.raises(ValueError, match=r"undecodable bytes at offset 39 in .*bad\.txt"):
        TextStreamDataModule(bad, cache_dir=tmp_path / "cache").setup()


def test_bad_cache_arguments():
    with pytest.raises(ValueError, match="max_bytes"):
        TextStreamDataModule("abc", max_bytes=0)
    with pytest.raises(ValueError, match="predict_split"):
        TextStreamDataModule("abc", predict_split="dev")
    with pytest.raises(ValueError, match="cache"):
        TextStreamDataModule("abc", cache="yes")


# ------------------------------------------------------------------------------ resume and predict
@pytest.mark.parametrize("mark_documents", [False, True])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_training_loader_resumes_mid_epoch(tmp_path, mark_documents, num_workers):
    src = _write_corpus(tmp_path / "src")
    opts = dict(batch_size=2, bptt=9, val_fraction=0.0, test_fraction=0.0, mark_documents=mark_documents,
                cache_dir=tmp_path / "cache", num_workers=num_workers)
    dm = TextStreamDataModule(src, **opts)
    dm.setup("fit")
    loader = dm.train_dataloader()
    full = list(loader)
    k = 5
    it = iter(loader)
    seen = [next(it) for _ in range(k)]
    state = loader.state_dict()
    other = TextStreamDataModule(src, **opts)  # a new process: a new module and loader, then the state
    other.setup("fit")
    resumed = other.train_dataloader()
    resumed.load_state_dict(state)
    rest = list(resumed)
    _assert_same_batches({"train": seen + rest}, {"train": full})
    assert len(rest) == len(full) - k
    _assert_same_batches({"train": list(resumed)}, {"train": full})  # the next epoch starts at batch 0
    # a state saved after the epoch's last batch resumes with a whole epoch, not an empty one
    it = iter(loader)
    for _ in range(len(full)):
        next(it)
    end = other.train_dataloader()
    end.load_state_dict(loader.state_dict())
    _assert_same_batches({"train": list(end)}, {"train": full})


def test_predict_dataloader_streams_the_chosen_split(tmp_path):
    text = "".join(chr(97 + (i * 7 + i // 11) % 26) for i in range(3000))
    dm = TextStreamDataModule(text, batch_size=2, bptt=10, val_fraction=0.1, test_fraction=0.2)
    dm.setup("predict")
    _assert_same_batches({"test": list(dm.predict_dataloader())}, {"test": list(dm.test_dataloader())})
    val = TextStreamDataModule(text, batch_size=2, bptt=10, val_fraction=0.1, test_fraction=0.2, predict_split="val")
    _assert_same_batches({"val": list(val.predict_dataloader())}, {"val": list(val.val_dataloader())})
    none = TextStreamDataModule(text, batch_size=2, bptt=10, test_fraction=0.0)
    with pytest.raises(ValueError, match="predict_split='test'.*test_fraction=0"):
        none.predict_dataloader()


# ------------------------------------------------------------------------------ DDP
_DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys, torch, torch.distributed as dist
    from lightning_rnn.data import TextStreamDataModule
    from lightning_rnn.data.corpus import TokenCorpus

    src, cache, out, rank = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    dist.init_process_group("gloo", init_method="file://" + out + "/rendezvous", rank=rank, world_size=2)
    real_build = TokenCorpus.build.__func__
    def build(cls, *args, **kwargs):
        open(os.path.join(out, f"built_by_{rank}"), "w").close()
        return real_build(cls, *args, **kwargs)
    TokenCorpus.build = classmethod(build)
    dm = TextStreamDataModule(src, batch_size=2, bptt=6, val_fraction=0.0, test_fraction=0.0,
                              mark_documents=True, cache_dir=cache)
    if rank == 0:  # Lightning: prepare_data on local rank 0, a barrier, then setup on every rank
        dm.prepare_data()
    dist.barrier()
    dm.setup("fit")
    assert dm._rank_world() == (rank, 2)
    batches = list(dm.train_dataloader())
    torch.save({"inputs": torch.stack([b["inputs"] for b in batches]),
                "reset": torch.stack([b["reset"] for b in batches])},
               os.path.join(out, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()
    """
)


def test_two_process_ddp_reads_one_cache_built_once(tmp_path):
    src = _write_corpus(tmp_path / "src")
    script = tmp_path / "ddp_cache.py"
    script.write_text(_DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, str(script), str(src), str(tmp_path / "cache"), str(tmp_path), str(r)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in range(2)
    ]
    try:
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-2000:] for o in outs)
    assert sorted(f.name for f in tmp_path.glob("built_by_*")) == ["built_by_0"]  # one build, in prepare_data
    assert len(_entries(tmp_path / "cache")) == 1
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    _, want = _reference_batches(src, batch_size=4, bptt=6, val_fraction=0.0, test_fraction=0.0, mark_documents=True)
    whole = torch.stack([b["inputs"] for b in want["train"]])
    torch.testing.assert_close(torch.cat([r0["inputs"], r1["inputs"]], dim=1), whole)
    torch.testing.assert_close(torch.cat([r0["reset"], r1["reset"]], dim=1), torch.stack([b["reset"] for b in want["train"]]))


def test_lightning_resume_from_mid_epoch_and_epoch_end_checkpoints_sees_the_remaining_batches(tmp_path):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    text = "".join(chr(97 + (i * 7 + i // 11) % 26) for i in range(3000))

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append(batch[0].clone())
            return self.w.sum() * 0

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def fit(max_steps, ckpt_path=None):
        dm = TextStreamDataModule(text, batch_size=2, bptt=50, val_fraction=0.0, test_fraction=0.0)  # 29 batches
        model = Recorder()
        every = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=11, save_top_k=-1, filename="{step}")
        end = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=29, save_top_k=-1, filename="end-{step}")
        trainer = L.Trainer(max_steps=max_steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[every, end])
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
        return model.seen

    full = fit(40)
    for name, k in (("step=11.ckpt", 11), ("end-step=29.ckpt", 29), ("step=33.ckpt", 33)):
        rest = fit(40, tmp_path / name)
        assert len(rest) == 40 - k and all(torch.equal(a, b) for a, b in zip(rest, full[k:])), name
