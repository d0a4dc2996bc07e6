"""``lightning-rnn generate``: sample text from a language-model checkpoint (nothing else needed)."""

from __future__ import annotations

import argparse
import importlib
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule

from lightning_rnn.checkpoint_io import CheckpointError, load_checkpoint
from lightning_rnn.cli.errors import PROG, CLIError
from lightning_rnn.cli.vocab import VOCAB_KEY, vocab_from_checkpoint

__all__ = ["generate_main", "load_language_model"]

_LIGHTNING_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"


def _checkpoint_class(checkpoint: dict[str, Any], what: str) -> type:
    """The LightningModule class the checkpoint was written by (``_class_path`` saved by the CLI), which must
    be an :class:`~lightning_rnn.RNNLanguageModel` (or subclass); the base class for checkpoints without it."""
    from lightning_rnn import RNNLanguageModel

    class_path = checkpoint.get("hyper_parameters", {}).get("_class_path")
    if not class_path:
        return RNNLanguageModel
    module_name, _, name = str(class_path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        raise CLIError(f"{what} is a checkpoint of {class_path}, which cannot be imported here: install the "
                       "package that defines it") from None
    if not (inspect.isclass(cls) and issubclass(cls, RNNLanguageModel)):
        raise CLIError(f"{what} is a checkpoint of {class_path}, not of a language model: `generate` needs an "
                       "RNNLanguageModel (or subclass) checkpoint")
    return cls


def load_language_model(ckpt: str) -> tuple[LightningModule, Any]:
    """The language model of a checkpoint (its own class) in eval mode, and its vocabulary."""
    what = f"--ckpt {ckpt!r}"
    try:
        checkpoint = load_checkpoint(ckpt, what="--ckpt")
    except CheckpointError as err:
        raise CLIError(f"{err}: pass a .ckpt file written by `lightning-rnn fit`") from None
    vocab = vocab_from_checkpoint(checkpoint)
    if vocab is None:
        raise CLIError(f"{what} has no vocabulary (neither in the data module's state nor under {VOCAB_KEY!r}): "
                       "train with `lightning-rnn fit` or add lightning_rnn.cli.VocabInCheckpoint() to your "
                       "Trainer's callbacks")
    instantiator = checkpoint.get("hyper_parameters", {}).get("_instantiator")
    if instantiator not in (None, _LIGHTNING_INSTANTIATOR):  # Lightning would import and call it
        raise CLIError(f"{what} names {instantiator!r} as its instantiator (Lightning's is {_LIGHTNING_INSTANTIATOR!r}): "
                       "refused, a checkpoint must not choose code to run")
    cls = _checkpoint_class(checkpoint, what)
    try:
        model = cls.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    except (RuntimeError, TypeError, KeyError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CLIError(f"{what} does not match {cls.__name__} ({first}): pass a checkpoint of a language model "
                       "trained by `lightning-rnn fit`") from None
    model.eval()
    return model, vocab


def _encode_prompt(vocab: Any, prompt: str, unknown: str) -> list[int]:
    tokens = vocab.tokenize(prompt)
    missing = sorted({t for t in tokens if t not in vocab.stoi})
    if missing and unknown == "error":
        shown = ", ".join(repr(t) for t in missing[:10])
        raise CLIError(f"Expected --prompt of tokens in the checkpoint's vocabulary, got {len(missing)} unknown: "
                       f"{shown} (pass --unknown=unk to map them to <unk>, or --unknown=drop to leave them out)")
    if unknown == "drop":
        tokens = [t for t in tokens if t in vocab.stoi]
    unk = getattr(vocab, "unk_id", 0)
    return [vocab.stoi.get(t, unk) for t in tokens]


def generate_main(args: Sequence[str] | None = None) -> str:
    """``lightning-rnn generate``: sample text from a trained language-model checkpoint; returns the text."""
    parser = argparse.ArgumentParser(prog=f"{PROG} generate",
                                     description="Sample text from a language-model checkpoint.")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `lightning-rnn fit`")
    parser.add_argument("--prompt", default="def ", help="text the sample starts with")
    parser.add_argument("--unknown", choices=("error", "unk", "drop"), default="error",
                        help="prompt tokens the vocabulary lacks: an error (default), <unk>, or left out")
    parser.add_argument("--max_new_tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    parser.add_argument("--top_k", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    ns = parser.parse_args(list(args) if args is not None else None)
    model, vocab = load_language_model(ns.ckpt)
    ids = _encode_prompt(vocab, ns.prompt, ns.unknown)
    if len(ids) == 0:
        raise CLIError(f"Expected a non-empty --prompt, got {ns.prompt!r}")
    generator = torch.Generator().manual_seed(ns.seed) if ns.seed is not None else None
    try:
        out = model.generate(torch.as_tensor(ids, dtype=torch.long), ns.max_new_tokens,
                             temperature=ns.temperature, top_k=ns.top_k, generator=generator)
    except ValueError as err:
        raise CLIError(str(err)) from None
    text = vocab.decode(out.tolist())
    print(text)
    return text
