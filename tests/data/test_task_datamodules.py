"""The data modules behind the shipped CLI configs: text classification (stdlib snippets or the user's own
labelled texts), bit-stream tagging, sequence reversal."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from lightning_rnn.data import (
    DEFAULT_STDLIB_PACKAGES,
    BitStreamTaggingDataModule,
    CharVocab,
    ReversalDataModule,
    TextClassificationDataModule,
    make_bit_streams,
    read_labeled_texts,
    stdlib_snippets,
    stdlib_source_dir,
)

SMALL = {"packages": ["json", "email", "http"], "samples_per_class": 30, "max_length": 60}


# ---------------------------------------------------------------------------------------------- stdlib data
def test_default_packages_exist_and_have_enough_text() -> None:
    root = stdlib_source_dir()
    for package in DEFAULT_STDLIB_PACKAGES:
        assert (root / package / "__init__.py").is_file(), package
    items = stdlib_snippets()  # the defaults of examples/classify_code.yaml
    assert Counter(label for label, _ in items) == {p: 800 for p in DEFAULT_STDLIB_PACKAGES}
    assert {len(text) for _, text in items} == {200}


def test_stdlib_data_is_deterministic_balanced_and_stratified() -> None:
    a, b = TextClassificationDataModule(**SMALL, seed=3), TextClassificationDataModule(**SMALL, seed=3)
    other = TextClassificationDataModule(**SMALL, seed=4)
    assert a.classes == ["email", "http", "json"] and a.num_classes == 3  # sorted names, id = position
    for split, per_class in (("train", 24), ("val", 3), ("test", 3)):
        rows, same = a.dataset(split), b.dataset(split)
        assert [(x.tolist(), y) for x, y in rows] == [(x.tolist(), y) for x, y in same]
        assert Counter(y for _, y in rows) == {0: per_class, 1: per_class, 2: per_class}  # balanced
        assert {len(x) for x, _ in rows} == {60}
    assert [x.tolist() for x, _ in other.dataset("train")] != [x.tolist() for x, _ in a.dataset("train")]
    # no snippet is shared between splits (non-overlapping windows of the source)
    decoded = {s: {a.vocab.decode(x) for x, _ in a.dataset(s)} for s in ("train", "val", "test")}
    assert not decoded["train"] & decoded["val"] and not decoded["train"] & decoded["test"]
    # every snippet is a piece of its package's source
    for x, y in a.dataset("val"):
        text = a.vocab.decode(x)
        files = (stdlib_source_dir() / a.classes[y]).rglob("*.py")
        assert "<unk>" in text or any(text in f.read_text(encoding="utf-8") for f in files)


def test_stdlib_snippets_bad_input() -> None:
    with pytest.raises(ValueError, match=r"Expected a stdlib package in .*\(one of \[.*'asyncio'.*\]\), got 'nope'"):
        stdlib_snippets(["asyncio", "nope"])
    with pytest.raises(ValueError, match=r"Expected packages to be at least 2 distinct stdlib packages, got \['json'\]"):
        stdlib_snippets(["json"])
    with pytest.raises(ValueError, match=r"samples_per_class=100000 snippets of 200 characters in stdlib package"):
        stdlib_snippets(["json", "email"], samples_per_class=100_000)


# ---------------------------------------------------------------------------------------------- user data
def _tsv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_tsv_source(tmp_path: Path) -> None:
    rows = [f"{'spam' if i % 2 else 'ham'}\t{'buy now ' if i % 2 else 'see you '}{i}" for i in range(40)]
    dm = TextClassificationDataModule(_tsv(tmp_path / "d.tsv", ["", *rows, "  "]), batch_size=8, max_length=10)
    assert dm.classes == ["ham", "spam"] and dm.num_classes == 2
    assert isinstance(dm.vocab, CharVocab) and dm.vocab_size == len(dm.vocab)
    assert sum(len(dm.dataset(s)) for s in ("train", "val", "test")) == 40  # blank lines skipped
    assert Counter(y for _, y in dm.dataset("val")) == {0: 2, 1: 2}  # 10 % of each class
    assert max(len(x) for x, _ in dm.dataset("train")) == 10  # cut to max_length
    batch = next(iter(dm.train_dataloader()))
    assert sorted(batch) == ["inputs", "labels", "lengths", "mask"] and batch["labels"].shape == (8,)
    assert batch["inputs"].shape[0] == 8 and batch["lengths"].max() <= 10
    # the vocabulary and classes survive a checkpoint round trip
    fresh = TextClassificationDataModule(tmp_path / "d.tsv", max_length=10, vocab=CharVocab.build("xyz"))
    fresh.load_state_dict(dm.state_dict())
    assert fresh.vocab == dm.vocab and fresh.classes == dm.classes


def test_directory_source(tmp_path: Path) -> None:
    for label in ("neg", "pos"):
        (tmp_path / label).mkdir()
        for i in range(5):
            (tmp_path / label / f"{i}.txt").write_text(f"{label} review number {i}", encoding="utf-8")
    (tmp_path / "README.txt").write_text("ignored: not in a class directory")
    assert read_labeled_texts(tmp_path)[0] == ("neg", "neg review number 0")
    dm = TextClassificationDataModule(tmp_path, val_fraction=0.2, test_fraction=0.0)
    assert dm.classes == ["neg", "pos"] and len(dm.dataset("train")) == 8 and len(dm.dataset("val")) == 2
    assert dm.test_dataloader() == []


@pytest.mark.parametrize(
    ("kind", "error", "message"),
    [
        ("missing", FileNotFoundError, r"Expected a TSV file \(label<TAB>text per line\) or a directory .* \(not found\)"),
        ("empty", ValueError, r"got an empty file"),
        ("no_tab", ValueError, r"Expected 'label<TAB>text' on line 2 of .*, got a line without a tab: 'no tab here'"),
        ("empty_text", ValueError, r"on line 1 of .*, got an empty text"),
        ("one_class", ValueError, r"Expected at least 2 classes in .*, got 1: \['a'\]"),
        ("no_subdirs", ValueError, r"got a directory without sub-directories"),
        ("binary", ValueError, r"Expected a UTF-8 text file, got a binary file"),
    ],
)
def test_bad_sources(tmp_path: Path, kind: str, error: type[Exception], message: str) -> None:
    path = tmp_path / "data.tsv"
    if kind == "empty":
        path.write_text("\n\n")
    elif kind == "no_tab":
        _tsv(path, ["a\tok", "no tab here"])
    elif kind == "empty_text":
        _tsv(path, ["a\t", "b\tx"])
    elif kind == "one_class":
        _tsv(path, ["a\tx", "a\ty"])
    elif kind == "no_subdirs":
        path = tmp_path / "texts"
        path.mkdir()
        (path / "one.txt").write_text("text")
    elif kind == "binary":
        path.write_bytes(b"\x00\x01\x02" * 100)
    dm = TextClassificationDataModule(path)  # reading is lazy: the error comes with the first use
    with pytest.raises(error, match=message):
        _ = dm.num_classes


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"Expected packages and samples_per_class only with source=None"):
        TextClassificationDataModule("d.tsv", packages=["json", "email"])
    with pytest.raises(ValueError, match=r"Expected val_fraction \+ test_fraction < 1, got 1.0"):
        TextClassificationDataModule(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match=r"Expected batch_size to be an int >= 1, got 0"):
        TextClassificationDataModule(batch_size=0)
    with pytest.raises(TypeError, match=r"Expected vocab to be a CharVocab"):
        TextClassificationDataModule(vocab="not a vocab".split())  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- bit streams
def test_bit_streams_tasks_and_determinism() -> None:
    for x, y in make_bit_streams("delay", 20, length=30, delay=4, seed=1):
        assert 15 <= len(x) <= 30 and torch.equal(y[4:], x[:-4]) and not y[:4].any()
    for x, y in make_bit_streams("parity", 20, length=30, seed=1):
        assert torch.equal(y, torch.cumsum(x, 0) % 2)
    first, again = make_bit_streams("parity", 5, 30, seed=2), make_bit_streams("parity", 5, 30, seed=2)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))
    with pytest.raises(ValueError, match=r"Expected task in \('parity', 'delay'\), got 'copy'"):
        make_bit_streams("copy", 2, 10)
    with pytest.raises(ValueError, match=r"Expected delay to be an int >= 1, got 0"):
        BitStreamTaggingDataModule("delay", delay=0)


def test_bit_stream_datamodule_batches() -> None:
    dm = BitStreamTaggingDataModule("delay", length=12, delay=2, num_train=10, num_val=4, num_test=0, batch_size=5)
    assert (dm.vocab_size, dm.num_classes) == (2, 2)
    batch = next(iter(dm.train_dataloader()))
    n, length = batch["inputs"].shape
    assert n == 5 and batch["labels"].shape == (5, length)
    padded = ~batch["mask"]
    assert bool((batch["labels"][padded] == -100).all())  # RNNTagger's default pad_id
    val = [x for x, _ in dm.split("val")]
    train = [x for x, _ in dm.split("train")]
    assert not any(torch.equal(v, t) for v in val for t in train if len(v) == len(t))  # other seeds
    assert dm.test_dataloader() == []


# ---------------------------------------------------------------------------------------------- reversal
def test_reversal_datamodule() -> None:
    dm = ReversalDataModule(num_train=200, num_val=50, num_test=300, batch_size=16)
    assert (dm.src_vocab_size, dm.tgt_vocab_size, dm.pad_id, dm.bos_id, dm.eos_id) == (53, 53, 0, 1, 2)
    train, test = dm.split("train"), dm.split("test")
    assert max(len(s) for s in train.samples) <= 25 and max(len(s) for s in test.samples) > 25
    assert max(len(s) for s in test.samples) <= 30 and min(min(s) for s in train.samples) >= 3
    batch = next(iter(dm.train_dataloader()))
    for i in range(16):
        n = int(batch["src_lengths"][i])
        assert batch["tgt_out"][i, :n].tolist() == batch["src"][i, :n].flip(0).tolist()
        assert batch["tgt_out"][i, n] == dm.eos_id and batch["tgt_in"][i, 0] == dm.bos_id
    again = ReversalDataModule(num_train=200, num_val=50, num_test=300)
    assert again.split("val").samples == dm.split("val").samples != dm.split("train").samples[:50]
    with pytest.raises(ValueError, match=r"Expected num_train to be an int >= 1, got 0"):
        ReversalDataModule(num_train=0)
    with pytest.raises(ValueError, match=r"Expected a split in \['train', 'val', 'test'\], got 'dev'"):
        dm.split("dev")


# ---------------------------------------------------------------------------------------------- review fixes
def test_tsv_keeps_form_feeds_and_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "d.tsv"
    path.write_text("a\tpage\x0cbreak\r\nb\tline\u2028sep\n", encoding="utf-8", newline="")
    assert read_labeled_texts(path) == [("a", "page\x0cbreak"), ("b", "line\u2028sep")]
    path.write_text("a\tx\x0cy\nno tab\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"on line 2 of"):
        read_labeled_texts(path)


def test_restored_classes_are_checked_when_the_data_is_read(tmp_path: Path) -> None:
    dm = TextClassificationDataModule(_tsv(tmp_path / "d.tsv", [f"{c}\t{c} {i}" for c in "ab" for i in range(10)]))
    state = dm.state_dict()
    other = TextClassificationDataModule(_tsv(tmp_path / "e.tsv", [f"{c}\t{c} {i}" for c in "ac" for i in range(10)]))
    other.load_state_dict(state)  # before the data is read: the check waits for it
    with pytest.raises(ValueError, match=r"Expected the checkpoint's classes \['a', 'b'\], got \['a', 'c'\]"):
        other.setup("fit")


def test_setup_for_test_only_then_fit_gives_the_same_splits(tmp_path: Path) -> None:
    a, b = TextClassificationDataModule(**SMALL), TextClassificationDataModule(**SMALL)
    a.setup("test")
    a.setup("fit")
    b.setup("fit")
    for split in ("train", "val", "test"):
        assert [(x.tolist(), y) for x, y in a.dataset(split)] == [(x.tolist(), y) for x, y in b.dataset(split)]
    for dm_class, kwargs in ((BitStreamTaggingDataModule, {"length": 12, "num_train": 6, "num_test": 4}),
                             (ReversalDataModule, {"num_train": 6, "num_val": 4, "num_test": 4})):
        only_test, full = dm_class(**kwargs), dm_class(**kwargs)
        only_test.setup("test")
        only_test.setup("test")
        full.setup(None)
        first = next(iter(only_test.test_dataloader()))
        again = next(iter(full.test_dataloader()))
        assert all(torch.equal(first[k], again[k]) for k in first)


def test_snippet_texts_are_unique_across_splits() -> None:
    dm = TextClassificationDataModule(packages=["email", "json"], samples_per_class=300, max_length=40)
    texts = [dm.vocab.decode(x) for s in ("train", "val", "test") for x, _ in dm.dataset(s)]
    assert len(texts) == len(set(texts)) == 600
