"""Vocabularies and text sources."""

from __future__ import annotations

import pytest
import torch

from lightning_rnn.data import CharVocab, WordVocab, read_text_source, stdlib_corpus_files
from lightning_rnn.data.vocab import Vocab


def test_char_vocab_round_trip_and_unk(tmp_path):
    text = "def f(x):\n    return x + 1\n"
    v = CharVocab.build(text)
    assert v.decode(v.encode(text)) == text
    assert len(v) == len(set(text)) + 1
    assert v.encode("é").tolist() == [v.unk_id]
    v.save(tmp_path / "v.json")
    assert CharVocab.load(tmp_path / "v.json") == v
    assert Vocab.load(tmp_path / "v.json") == v
    with pytest.raises(ValueError, match=rf"ids in \[0, {len(v)}\), got id {len(v)}"):
        v.decode([len(v)])


def test_word_vocab_min_freq_and_max_size(tmp_path):
    v = WordVocab.build("a b a c a b d", min_freq=2)
    assert v.itos == ["<unk>", "a", "b"]
    assert v.decode(v.encode("a d b")) == "a <unk> b"
    assert WordVocab.build("a b a c a b d", max_size=1).itos == ["<unk>", "a"]
    v.save(tmp_path / "w.json")
    with pytest.raises(ValueError, match="Expected a CharVocab"):
        CharVocab.load(tmp_path / "w.json")


def test_read_sources(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.txt").write_text("second")
    (tmp_path / "d" / "a.txt").write_text("first")
    docs = read_text_source(tmp_path / "d")
    assert [t for _, t in docs] == ["first", "second"]
    assert read_text_source("just some text") == [("<string>", "just some text")]
    with pytest.raises(FileNotFoundError, match="not found"):
        read_text_source(str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty file: .*empty.txt"):
        read_text_source(tmp_path / "empty.txt")
    (tmp_path / "bin.dat").write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match="binary file: .*bin.dat"):
        read_text_source(tmp_path / "bin.dat")
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="UTF-8.*latin.txt"):
        read_text_source(tmp_path / "latin.txt")
    (tmp_path / "e").mkdir()
    with pytest.raises(ValueError, match="Expected text files"):
        read_text_source(tmp_path / "e")


def test_stdlib_corpus_exists_and_is_capped():
    files = stdlib_corpus_files(max_bytes=300_000)
    assert files and all(f.suffix == ".py" for f in files)
    assert sum(f.stat().st_size for f in files[:-1]) <= 300_000
    assert torch.tensor(0) is not None
