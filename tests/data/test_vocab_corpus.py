"""Vocabularies and text sources."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_rnn.data import CharVocab, WordVocab, read_text_source, stdlib_corpus_files, stdlib_source_dir
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
    assert sum(f.stat().st_size for f in files) <= 300_000
    assert files == stdlib_corpus_files(None)[: len(files)]  # a deterministic prefix of the sorted list


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=0, max_size=60), st.text(min_size=0, max_size=30), st.integers(1, 3))
def test_char_vocab_matches_a_reference_counter(train, other, min_freq):
    v = CharVocab.build(train, min_freq=min_freq)
    counts = Counter(train)
    expected = sorted((c for c, n in counts.items() if n >= min_freq), key=lambda c: (-counts[c], c))
    assert v.itos == ["<unk>", *expected]
    want = [v.stoi.get(c, v.unk_id) for c in other + train]
    assert v.encode(other + train).tolist() == want
    if min_freq == 1:
        assert v.decode(v.encode(train)) == train


def test_word_vocab_round_trip_equality_and_max_size_order(tmp_path):
    text = "b a c a b a d"
    v = WordVocab.build(text)
    assert v.itos == ["<unk>", "a", "b", "c", "d"]  # most frequent first, ties alphabetical
    assert WordVocab.build(text, max_size=2).itos == ["<unk>", "a", "b"]
    v.save(tmp_path / "w.json")
    loaded = WordVocab.load(tmp_path / "w.json")
    assert loaded == v and loaded is not v and loaded != CharVocab(v.itos)
    assert loaded.decode(loaded.encode("a  b\nzzz")) == "a b <unk>"
    assert v.encode("a b").dtype == torch.long


def test_vocab_bad_input():
    v = CharVocab.build("abc")
    with pytest.raises(TypeError, match="integer tensor"):
        v.decode(torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"got id -1 at position 1 \(vocabulary size 4\)"):
        v.decode([1, -1])
    with pytest.raises(ValueError, match="min_freq"):
        CharVocab.build("abc", min_freq=0)
    with pytest.raises(ValueError, match="max_size"):
        WordVocab.build("a b", max_size=0)
    with pytest.raises(ValueError, match="unique tokens"):
        WordVocab(["a", "a"])


def test_source_rules(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "pkg").mkdir()
    (tmp_path / "src" / "pkg" / "m.py").write_text("x = 1\n")
    (tmp_path / "src" / "a.py").write_text("import os\n")
    (tmp_path / "src" / "empty.py").write_text("")  # skipped inside a directory
    (tmp_path / "src" / "notes.txt").write_text("not python")
    (tmp_path / "src" / ".hidden").mkdir()
    (tmp_path / "src" / ".hidden" / "h.py").write_bytes(b"\x00\x01binary")  # hidden: skipped
    docs = read_text_source(tmp_path / "src", pattern="*.py")
    assert [(Path(n).name, t) for n, t in docs] == [("a.py", "import os\n"), ("m.py", "x = 1\n")]
    assert [t for _, t in read_text_source(str(tmp_path / "src"), pattern="*.txt")] == ["not python"]
    # a list of files, capped
    files = [tmp_path / "src" / "a.py", tmp_path / "src" / "notes.txt"]
    assert [t for _, t in read_text_source(files, max_bytes=13)] == ["import os\n", "not"]
    # strings: literal text unless it looks like a path
    assert read_text_source("hello world. Version 3.11") == [("<string>", "hello world. Version 3.11")]
    for looks_like_a_path in ("corpus.txt", "data/train", "./x"):
        with pytest.raises(FileNotFoundError, match=re.escape(repr(looks_like_a_path))):
            read_text_source(looks_like_a_path)
    with pytest.raises(ValueError, match="empty string"):
        read_text_source("")
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "e.txt").write_text("")
    with pytest.raises(ValueError, match=r"only empty files"):
        read_text_source(tmp_path / "blank")
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "ok.txt").write_text("fine")
    (tmp_path / "mixed" / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(ValueError, match=r"binary file: .*img\.png"):
        read_text_source(tmp_path / "mixed")


def test_stdlib_source_dir_holds_the_os_module():
    assert (stdlib_source_dir() / "os.py").is_file()
    files = stdlib_corpus_files(None)
    assert files == sorted(files) and len(files) > 50


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "cc", "<unk>", "é", "zz"]), max_size=40), st.integers(1, 3),
       st.one_of(st.none(), st.integers(1, 4)))
def test_vocab_from_counts_equals_build(words, min_freq, max_size):
    text = " ".join(words)
    assert WordVocab.from_counts(Counter(words), min_freq=min_freq, max_size=max_size) == WordVocab.build(
        text, min_freq=min_freq, max_size=max_size
    )
    chars = CharVocab.build(text, min_freq=min_freq, max_size=max_size)
    assert CharVocab.from_counts(Counter(text), min_freq=min_freq, max_size=max_size) == chars
    cps = torch.tensor([ord(c) for c in text], dtype=torch.long)
    assert CharVocab.from_codepoint_counts(torch.bincount(cps), min_freq=min_freq, max_size=max_size) == chars
    with pytest.raises(ValueError, match="single characters"):
        CharVocab.from_counts({"ab": 1})
