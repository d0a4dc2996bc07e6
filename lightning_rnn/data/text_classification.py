"""Character-level text classification data: the user's labelled texts, or snippets of real source code.

:class:`TextClassificationDataModule` reads labelled texts from

- a TSV file, one example per line: ``label<TAB>text`` (the first tab splits; blank lines are skipped);
- a directory with one sub-directory per class, one example per file (``reviews/pos/001.txt``, ...);
- ``None`` (the default): snippets of the Python standard library's own source code, labelled by the
  top-level package they come from (``asyncio``, ``email``, ...) — real text present on every machine,
  no download (see :func:`stdlib_snippets`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_rnn._validation import check_int, check_probability
from lightning_rnn.data.collate import pad_collate
from lightning_rnn.data.corpus import _read_file, read_text_source, stdlib_source_dir
from lightning_rnn.data.loaders import eval_loader, train_loader
from lightning_rnn.data.vocab import CharVocab, Vocab

__all__ = [
    "DEFAULT_STDLIB_PACKAGES",
    "TextClassificationDataModule",
    "read_labeled_texts",
    "stdlib_snippets",
]

#: stdlib packages of the default data set: pure Python, in every CPython since 3.9, >= 200 kB of code each
DEFAULT_STDLIB_PACKAGES = ("asyncio", "email", "http", "multiprocessing", "unittest", "xml")
_TEST_DIRS = frozenset({"test", "tests", "idle_test"})
_SOURCE_HINT = "a TSV file (label<TAB>text per line) or a directory with one sub-directory per class"


def _check_packages(packages: Any) -> list[str]:
    if isinstance(packages, str) or not all(isinstance(p, str) for p in packages):
        raise ValueError(f"Expected packages to be a list of stdlib package names, got {packages!r}")
    packages = list(packages)
    if len(packages) < 2 or len(set(packages)) != len(packages):
        raise ValueError(f"Expected packages to be at least 2 distinct stdlib packages, got {packages}")
    return packages


def stdlib_snippets(
    packages: Sequence[str] = DEFAULT_STDLIB_PACKAGES,
    *,
    snippet_length: int = 200,
    samples_per_class: int = 800,
    seed: int = 0,
) -> list[tuple[str, str]]:
    """Balanced character snippets of stdlib packages' source: ``samples_per_class`` per package.

    Every ``*.py`` file of the package (its test directories excluded) is cut into non-overlapping windows
    of ``snippet_length`` characters (the tail shorter than that is dropped); ``samples_per_class`` windows
    per package are drawn without replacement with ``seed``. No two snippets share a character of source, and
    identical windows (files that start alike) are kept once, so no snippet text is in two splits.
    The result is a deterministic function of the arguments and of the Python version's stdlib.

    Returns:
        ``[(package, snippet), ...]``, packages in the given order, each ``samples_per_class`` times.

    Raises:
        ValueError: an unknown package (the message lists the available ones), fewer than 2 packages, or a
            package with fewer windows than ``samples_per_class``.

    Example::

        >>> items = stdlib_snippets(("json", "email"), snippet_length=50, samples_per_class=3)
        >>> [label for label, _ in items], {len(text) for _, text in items}
        (['json', 'json', 'json', 'email', 'email', 'email'], {50})
    """
    check_int("snippet_length", snippet_length, min=1)
    check_int("samples_per_class", samples_per_class, min=1)
    packages = _check_packages(packages)
    root = stdlib_source_dir()
    g = torch.Generator().manual_seed(seed)
    out: list[tuple[str, str]] = []
    for package in packages:
        folder = root / package
        if not (folder / "__init__.py").is_file():
            available = sorted(p.parent.name for p in root.glob("*/__init__.py"))
            raise ValueError(f"Expected a stdlib package in {root} (one of {available}), got {package!r}")
        files = sorted(f for f in folder.rglob("*.py") if not _TEST_DIRS & set(f.relative_to(root).parts))
        windows = [
            text[i : i + snippet_length]
            for _, text in read_text_source([str(f) for f in files if f.stat().st_size])
            for i in range(0, len(text) - snippet_length + 1, snippet_length)
        ]
        windows = list(dict.fromkeys(windows))  # identical windows (shared headers) would leak across splits
        if len(windows) < samples_per_class:
            raise ValueError(
                f"Expected at least samples_per_class={samples_per_class} snippets of {snippet_length} characters "
                f"in stdlib package {package!r}, got {len(windows)}: lower samples_per_class or the snippet "
                "length, or pick a larger package"
            )
        pick = torch.randperm(len(windows), generator=g)[:samples_per_class].tolist()
        out.extend((package, windows[i]) for i in pick)
    return out


def read_labeled_texts(source: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """Read ``(label, text)`` examples from a TSV file or a directory of class sub-directories.

    A file: one example per non-blank line, ``label<TAB>text`` (split at the first tab; a trailing newline
    or carriage return is not part of the text). A directory: every sub-directory (hidden ones skipped) is a
    class named after it, every non-empty file below it one example (:func:`read_text_source`); files
    directly in the directory are ignored.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: an empty file, a line without a tab, an empty label or text (the line is named), a
            directory without sub-directories, a sub-directory without text files, a binary file.

    Example::

        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "train.tsv")
        >>> _ = open(path, "w").write("pos\\tgreat film\\nneg\\tdull\\n")
        >>> read_labeled_texts(path)
        [('pos', 'great film'), ('neg', 'dull')]
    """
    path = Path(os.path.expanduser(os.fspath(source)))
    if not path.exists():
        raise FileNotFoundError(f"Expected {_SOURCE_HINT}, got {os.fspath(source)!r} (not found)")
    if path.is_dir():
        classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise ValueError(f"Expected {_SOURCE_HINT}, got a directory without sub-directories: {path}")
        return [(d.name, text) for d in classes for _, text in read_text_source(d)]
    text = _read_file(path)
    items = []
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines(): \f, \x1c, \u2028 are text
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        label, tab, body = line.partition("\t")
        if not tab:
            shown = line if len(line) <= 60 else line[:57] + "..."
            raise ValueError(f"Expected 'label<TAB>text' on line {number} of {path}, got a line without a tab: "
                             f"{shown!r}")
        if not label.strip() or not body:
            what = "label" if not label.strip() else "text"
            raise ValueError(f"Expected a non-empty label and text on line {number} of {path}, got an empty {what}")
        items.append((label.strip(), body))
    if not items:
        raise ValueError(f"Expected {_SOURCE_HINT}, got an empty file: {path}")
    return items


class TextClassificationDataModule(LightningDataModule):
    """Labelled texts as character ids for :class:`~lightning_rnn.RNNClassifier` (one label per text).

    Texts are read (see ``source``), cut to ``max_length`` characters, split into train / val / test **per
    class** (stratified: each class is shuffled with ``seed`` and its first ``val_fraction`` goes to
    validation, the next ``test_fraction`` to test), encoded with a :class:`~lightning_rnn.data.CharVocab`
    built from the training texts (characters never seen in training become ``<unk>``), and batched by
    :func:`~lightning_rnn.data.pad_collate`: ``{"inputs" (N, L) long, "lengths" (N,), "mask" (N, L),
    "labels" (N,)}``; the classifier runs packed on the true lengths, so the padding value never matters.
    Class ids follow the sorted class names (:attr:`classes`). The training set is shuffled every epoch;
    ``predict_dataloader`` hands out the test split.

    ``vocab_size`` and ``num_classes`` fill in the classifier's arguments in the ``lightning-rnn`` CLI;
    the vocabulary goes into the CLI's checkpoints.

    Args:
        source: ``None`` — snippets of the Python standard library's source labelled by package
            (:func:`stdlib_snippets` with ``packages``, ``max_length`` as the snippet length and
            ``samples_per_class``: balanced classes); or a TSV file ``label<TAB>text`` per line; or a
            directory with one sub-directory per class and one text file per example
            (:func:`read_labeled_texts`).
        batch_size: texts per training batch; eval_batch_size: per validation / test batch (default
            ``batch_size``).
        max_length: texts are cut to this many characters (``None``: kept whole).
        val_fraction, test_fraction: per-class fractions in ``[0, 1)``, summing to less than 1.
        packages: stdlib packages (the classes) of the default data; ``None``: :data:`DEFAULT_STDLIB_PACKAGES`.
        samples_per_class: snippets per package of the default data (``None``: 800).
        vocab: a :class:`~lightning_rnn.data.CharVocab` or a path to a saved one; ``None`` builds it.
        min_freq: characters seen fewer times in training become ``<unk>`` (when the vocabulary is built).
        seed: snippet sampling and the split are a deterministic function of the arguments.
        num_workers: passed to the ``DataLoader``.

    Raises:
        ValueError: bad sizes or fractions, ``packages`` / ``samples_per_class`` given with a ``source``,
            a vocabulary that is not character-level; and when the data is read: the errors of
            :func:`read_labeled_texts` / :func:`stdlib_snippets`, fewer than 2 classes.
        FileNotFoundError: a ``source`` that does not exist.

    Example::

        >>> dm = TextClassificationDataModule(packages=["json", "email"], samples_per_class=20, max_length=50)
        >>> dm.num_classes, dm.classes, len(dm.dataset("train")), len(dm.dataset("val"))
        (2, ['email', 'json'], 32, 4)
        >>> batch = next(iter(dm.train_dataloader()))
        >>> sorted(batch), tuple(batch["labels"].shape)
        (['inputs', 'labels', 'lengths', 'mask'], (32,))
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        max_length: int | None = 200,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        packages: Sequence[str] | None = None,
        samples_per_class: int | None = None,
        vocab: CharVocab | str | None = None,
        min_freq: int = 1,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        check_int("batch_size", batch_size, min=1)
        check_int("eval_batch_size", eval_batch_size, min=1, allow_none=True)
        check_int("max_length", max_length, min=1, allow_none=True)
        check_int("samples_per_class", samples_per_class, min=1, allow_none=True)
        check_int("min_freq", min_freq, min=1)
        check_int("num_workers", num_workers, min=0)
        check_int("seed", seed)
        for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            check_probability(name, frac)
        if val_fraction + test_fraction >= 1:
            raise ValueError(f"Expected val_fraction + test_fraction < 1, got {val_fraction + test_fraction}")
        if source is not None and (packages is not None or samples_per_class is not None):
            raise ValueError(
                "Expected packages and samples_per_class only with source=None (the stdlib snippets), got "
                f"source={os.fspath(source)!r} with packages={packages!r}, samples_per_class={samples_per_class!r}"
            )
        if packages is not None:
            _check_packages(packages)
        if source is None and max_length is None:
            raise ValueError("Expected max_length (the snippet length) with source=None, got None")
        if isinstance(vocab, str | Path):
            vocab = Vocab.load(vocab)
        if vocab is not None and not isinstance(vocab, CharVocab):
            raise TypeError(f"Expected vocab to be a CharVocab, a path to a saved one, or None, got "
                            f"{type(vocab).__name__}")
        self.source = source
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.max_length = max_length
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.packages = list(packages) if packages is not None else list(DEFAULT_STDLIB_PACKAGES)
        self.samples_per_class = samples_per_class
        self.min_freq = min_freq
        self.seed = seed
        self.num_workers = num_workers
        self._vocab: CharVocab | None = vocab
        self._classes: list[str] | None = None
        # {"train" | "val" | "test": [(ids (L,), label), ...]}, filled once by _load()
        self._splits: dict[str, list[tuple[Tensor, int]]] | None = None
        self._expected_classes: list[str] | None = None  # from a checkpoint (load_state_dict)

    # ------------------------------------------------------------------ reading
    def examples(self) -> list[tuple[str, str]]:
        """All ``(label, text)`` examples, texts cut to ``max_length``, before splitting."""
        if self.source is None:
            n = self.samples_per_class if self.samples_per_class is not None else 800
            return stdlib_snippets(self.packages, snippet_length=self.max_length,  # type: ignore[arg-type]
                                   samples_per_class=n, seed=self.seed)
        items = read_labeled_texts(self.source)
        if self.max_length is not None:
            items = [(label, text[: self.max_length]) for label, text in items]
        return items

    def _load(self) -> None:
        """Read, split and encode the examples once (idempotent)."""
        if self._splits is not None:
            return
        items = self.examples()
        classes = sorted({label for label, _ in items})
        if len(classes) < 2:
            where = "the stdlib packages" if self.source is None else repr(os.fspath(self.source))
            raise ValueError(f"Expected at least 2 classes in {where}, got {len(classes)}: {classes}")
        self._check_classes(classes)
        g = torch.Generator().manual_seed(self.seed)
        parts: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
        for c, name in enumerate(classes):
            texts = [text for label, text in items if label == name]
            order = torch.randperm(len(texts), generator=g).tolist()
            n_val, n_test = int(len(texts) * self.val_fraction), int(len(texts) * self.test_fraction)
            for rank, i in enumerate(order):
                split = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
                parts[split].append((texts[i], c))
        if not parts["train"]:
            raise ValueError(f"Expected some training examples, got none of {len(items)} (lower the fractions)")
        if self._vocab is None:
            self._vocab = CharVocab.build("".join(text for text, _ in parts["train"]), min_freq=self.min_freq)
        vocab = self._vocab
        self._classes = classes
        self._splits = {split: [(vocab.encode(t), c) for t, c in rows] for split, rows in parts.items()}

    @property
    def vocab(self) -> CharVocab:
        """The character vocabulary (reads the data and builds it from the training split if needed)."""
        self._load()
        return self._vocab  # type: ignore[return-value]

    @property
    def vocab_size(self) -> int:
        """Size of :attr:`vocab` (``<unk>`` included)."""
        return len(self.vocab)

    @property
    def classes(self) -> list[str]:
        """Class names, sorted; class id ``i`` is ``classes[i]``."""
        self._load()
        return list(self._classes)  # type: ignore[arg-type]

    @property
    def num_classes(self) -> int:
        """C, the number of classes."""
        return len(self.classes)

    def dataset(self, split: str) -> list[tuple[Tensor, int]]:
        """The encoded ``(ids (L,), class id)`` examples of ``"train"``, ``"val"`` or ``"test"``."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"Expected a split in ['train', 'val', 'test'], got {split!r}")
        self._load()
        return self._splits[split]  # type: ignore[index]

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        """Read, split and encode the data (once; later calls do nothing)."""
        self._load()

    def _loader(self, split: str, shuffle: bool) -> DataLoader | list:
        items = self.dataset(split)
        if not items:
            return []
        batch_size = self.batch_size if split == "train" else (self.eval_batch_size or self.batch_size)
        if shuffle:  # training: resumable mid-epoch (Lightning saves its position in checkpoints)
            return train_loader(items, batch_size, seed=self.seed, collate_fn=pad_collate,
                                num_workers=self.num_workers)
        return eval_loader(items, batch_size, collate_fn=pad_collate, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader | list:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader | list:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader | list:
        """The test split's batches (``trainer.predict`` ignores their labels)."""
        return self._loader("test", shuffle=False)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The vocabulary and class names travel with Lightning checkpoints (a resumed run encodes the
        texts and numbers the classes as the first one did)."""
        self._load()
        return {"vocab": self._vocab.to_dict() if self._vocab is not None else None, "classes": self._classes}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("vocab")
        if saved is not None:
            vocab = Vocab.from_dict(saved)
            if not isinstance(vocab, CharVocab):
                raise TypeError(f"Expected a CharVocab in the checkpoint, got {type(vocab).__name__}")
            if vocab != self._vocab:
                self._vocab = vocab  # type: ignore[assignment]
                self._splits = None  # re-encode with the restored vocabulary on next use
        classes = state_dict.get("classes")
        if classes is not None:
            self._expected_classes = list(classes)  # checked now, or when the data is read (_load)
            if self._classes is not None:
                self._check_classes(self._classes)

    def _check_classes(self, classes: list[str]) -> None:
        expected = self._expected_classes
        if expected is not None and classes != expected:
            raise ValueError(f"Expected the checkpoint's classes {expected}, got {classes} in the data")
