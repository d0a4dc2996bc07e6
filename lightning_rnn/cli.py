"""The ``lightning-rnn`` command: Lightning's ``LightningCLI`` over the shipped modules, plus ``generate``.

Usage::

    lightning-rnn fit --config examples/char_lm.yaml                       # the main demo
    lightning-rnn fit --config examples/classify_code.yaml                 # RNNClassifier, stdlib snippets
    lightning-rnn fit --config examples/tagger_delay.yaml                  # RNNTagger + TBPTT, bit streams
    lightning-rnn fit --config examples/seq2seq_reverse.yaml               # Seq2SeqAttention, reversal
    lightning-rnn fit --config examples/char_lm.yaml --trainer.max_steps=30 --model.init_args.hidden_size=512
    lightning-rnn fit --config examples/char_lm.yaml --data.init_args.source=my_corpus.txt
    lightning-rnn fit --config examples/char_lm.yaml --print_config > my.yaml
    lightning-rnn validate --config examples/char_lm.yaml --ckpt_path runs/.../best.ckpt
    lightning-rnn generate --ckpt runs/.../best.ckpt --prompt "def " --max_new_tokens 200

``fit | validate | test | predict`` are ``LightningCLI`` subcommands: the model is any ``LightningModule``
(``--model RNNLanguageModel`` or a ``class_path`` in the config; every shipped module is registered), the
data any ``LightningDataModule``. The sizes the data module knows fill in the model's arguments of the same
meaning, so a config never repeats them (:data:`DATA_LINKS`): ``vocab_size``, ``num_classes`` (classifier,
tagger), ``src_vocab`` / ``tgt_vocab`` (from ``src_vocab_size`` / ``tgt_vocab_size``) and ``pad_id`` /
``bos_id`` / ``eos_id`` (seq2seq). After ``fit`` the command prints, for a language model, the validation
bits per token of the best checkpoint and a sample from it; for other models the best checkpoint's
monitored metric and the last validation metrics; and where the run, its checkpoints and its plots are. The vocabulary is stored inside every checkpoint (key ``"lightning_rnn_vocab"``) so
``generate`` needs nothing but the checkpoint.

Errors caused by the input (a ``--data.source`` that does not exist, is empty or binary; a checkpoint that
does not fit the model; any ``ValueError`` / ``TypeError`` raised by the library's argument checks) end
with one line ``lightning-rnn: error: ...`` and exit status 2. Set ``LIGHTNING_RNN_TRACEBACK=1`` to see
the full traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_warn

import lightning_rnn  # noqa: F401  (registers the shipped modules for `--model NAME`)
import lightning_rnn.callbacks  # noqa: F401
import lightning_rnn.data  # noqa: F401

__all__ = ["DATA_LINKS", "LightningRNNCLI", "VocabInCheckpoint", "cli_main", "fit_report", "generate_main", "main"]

#: Key of the vocabulary (a JSON-able dict) inside checkpoints written by the CLI.
VOCAB_KEY = "lightning_rnn_vocab"
_TRACEBACK_ENV = "LIGHTNING_RNN_TRACEBACK"
_PROG = "lightning-rnn"


class CLIError(SystemExit):
    """A user error: printed as one line ``lightning-rnn: error: <message>``, exit status 2."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


# ---------------------------------------------------------------------------------------------- vocab
def _vocab_of(datamodule: Any) -> Any:
    """The data module's vocabulary (building it if the data module builds it lazily), or None."""
    vocab = getattr(datamodule, "vocab", None)
    if vocab is None and hasattr(datamodule, "build_vocab"):
        vocab = datamodule.build_vocab()
    return vocab


def _vocab_size_of(datamodule: Any) -> int | None:
    """``link_arguments`` compute function: the data module's ``vocab_size`` (None if it has none)."""
    if datamodule is None:
        return None
    size = getattr(datamodule, "vocab_size", None)
    if size is None:
        vocab = _vocab_of(datamodule)
        size = len(vocab) if vocab is not None else None
    return int(size) if size is not None else None


#: ``(model init argument, data module attributes tried in order)``: the links the CLI makes. Each model
#: argument of these names is filled from the first attribute the data module has (``vocab_size`` also
#: from ``len(data.vocab)``); when it has none, the model class's own default is used (None for a required
#: argument, which the model then rejects with a message saying which data attribute was missing). A value
#: set in the config is never overridden silently: for the shipped modules a value that differs from the data
#: module's is an error; for other models (where a same-named argument may mean something else) the
#: config's value wins, with a warning. Linked arguments are left out of ``--print_config``.
DATA_LINKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("vocab_size", ("vocab_size",)),
    ("num_classes", ("num_classes",)),
    ("src_vocab", ("src_vocab_size", "src_vocab")),
    ("tgt_vocab", ("tgt_vocab_size", "tgt_vocab")),
    ("pad_id", ("pad_id",)),
    ("bos_id", ("bos_id",)),
    ("eos_id", ("eos_id",)),
)


def _vocab_to_dict(vocab: Any) -> dict[str, Any] | None:
    for name in ("to_dict", "state_dict"):
        fn = getattr(vocab, name, None)
        if callable(fn):
            return {"class_path": f"{type(vocab).__module__}.{type(vocab).__qualname__}", "state": fn()}
    return None


def _vocab_from_dict(data: dict[str, Any]) -> Any:
    import importlib

    module_name, _, cls_name = data["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    for name in ("from_dict", "from_state_dict"):
        fn = getattr(cls, name, None)
        if callable(fn):
            return fn(data["state"])
    raise CLIError(f"Expected a vocabulary class with from_dict(), got {data['class_path']}")


class VocabInCheckpoint(Callback):
    """Stores the data module's vocabulary in every checkpoint (key ``"lightning_rnn_vocab"``).

    The CLI adds it automatically when the data module has a ``vocab``; add it yourself to a ``Trainer`` if
    you want ``lightning-rnn generate`` to work on checkpoints of your own scripts.
    """

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        vocab = _vocab_of(datamodule) if datamodule is not None else None
        data = _vocab_to_dict(vocab) if vocab is not None else None
        if data is not None:
            checkpoint[VOCAB_KEY] = data


# ---------------------------------------------------------------------------------------------- report
def _unigram_entropy_bits(datamodule: Any) -> float | None:
    """Entropy (bits/token) of the training tokens' unigram distribution, if the data module exposes them."""
    tokens = None
    for name in ("train_ids", "train_tokens", "train_data"):
        value = getattr(datamodule, name, None)
        if isinstance(value, torch.Tensor):
            tokens = value
            break
    splits = getattr(datamodule, "_splits", None)  # TextStreamDataModule: {"train": (ids, starts), ...}
    if tokens is None and isinstance(splits, dict) and "train" in splits:
        tokens = splits["train"][0]
    if tokens is None or tokens.numel() == 0:
        return None
    flat, counts = tokens.flatten(), torch.zeros(0, dtype=torch.float64)
    for a in range(0, flat.numel(), 1 << 24):  # chunks: a memory-mapped corpus is never copied whole to int64
        part = torch.bincount(flat[a : a + (1 << 24)].long()).double()
        counts = torch.nn.functional.pad(counts, (0, max(0, part.numel() - counts.numel())))
        counts[: part.numel()] += part
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum())


def _sample_text(model: LightningModule, vocab: Any, prompt: str, max_new_tokens: int, temperature: float,
                 top_k: int | None, seed: int | None = 0) -> str:
    ids = vocab.encode(prompt)
    if len(ids) == 0:
        raise CLIError(f"Expected a non-empty --prompt, got {prompt!r}")
    generator = None
    if seed is not None:
        generator = torch.Generator(device=model.device).manual_seed(seed)
    out = model.generate(torch.as_tensor(ids, dtype=torch.long), max_new_tokens, temperature=temperature,
                         top_k=top_k, generator=generator)
    return vocab.decode(out.tolist())


def _encodable_prompt(vocab: Any, prompt: str) -> str:
    """The prompt, or a prompt the vocabulary can encode (its longest prefix of known characters)."""
    try:
        ids = vocab.encode(prompt)
        unk = getattr(vocab, "unk_id", None)
        if len(ids) and (unk is None or unk not in ids):
            return prompt
    except (KeyError, ValueError):
        pass
    return vocab.decode([min(1, len(vocab) - 1)])


def _run_dirs(trainer: Trainer, since: float | None = None) -> list[tuple[str, str]]:
    """(what, where) pairs for the report: logger run directory, checkpoints, plots."""
    rows: list[tuple[str, str]] = []
    for logger in trainer.loggers:
        name = type(logger).__name__
        if name == "WandbLogger":
            exp = logger.experiment
            run_dir = Path(getattr(exp, "dir", "") or logger.save_dir or ".")
            run_dir = run_dir.parent if run_dir.name == "files" else run_dir
            offline = getattr(getattr(exp, "settings", None), "mode", None) == "offline" or os.environ.get(
                "WANDB_MODE") == "offline"
            hint = f"   (upload: wandb sync {run_dir})" if offline else ""
            rows.append(("W&B run", f"{run_dir.resolve()}{hint}"))
        else:
            log_dir = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
            if log_dir:
                rows.append((f"{name} run", str(log_dir)))
    ckpt = trainer.checkpoint_callback
    if isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_path:
        rows.append(("best checkpoint", str(Path(ckpt.best_model_path).resolve())))
    if trainer.log_dir:  # PNGs the callbacks wrote during this run (GradientFlowMonitor: <log_dir>/gradient_flow)
        plots = [p for p in Path(trainer.log_dir).glob("**/*.png") if "wandb" not in p.parts
                 and (since is None or p.stat().st_mtime >= since)]
        for d in sorted({str(p.parent.resolve()) for p in plots}):
            rows.append(("plots", d))
    return rows


def _is_language_model(model: LightningModule, metrics: dict[str, Any]) -> bool:
    from lightning_rnn import RNNLanguageModel

    return isinstance(model, RNNLanguageModel) or any(k.endswith("/bits_per_token") for k in metrics)


def _fmt(value: Any) -> str:
    value = float(value)
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.4g}"


def fit_report(trainer: Trainer, model: LightningModule, datamodule: Any, *, prompt: str = "def ",
               max_new_tokens: int = 300, temperature: float = 0.8, since: float | None = None) -> str:
    """The text printed after ``lightning-rnn fit``.

    A language model (:class:`~lightning_rnn.RNNLanguageModel`, or a module logging ``*/bits_per_token``):
    the validation bits per token of the best checkpoint, the unigram entropy of the training tokens and a
    sample. Any other model: the best checkpoint's monitored metric and the last validation metrics
    (``val/*``). Then where the run, the best checkpoint and the plots are.
    """
    lines = ["", "=" * 78]
    ckpt = trainer.checkpoint_callback
    has_best = isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_score is not None
    metrics = trainer.callback_metrics
    if _is_language_model(model, metrics):
        lines += _lm_report(trainer, model, datamodule, prompt, max_new_tokens, temperature)
    else:
        if has_best:
            lines.append(f"best {ckpt.monitor} (best checkpoint): {_fmt(ckpt.best_model_score)}")
        val = {k: v for k, v in metrics.items() if k.startswith("val/") and torch.as_tensor(v).numel() == 1}
        if val:
            lines.append("last validation: " + ", ".join(f"{k} {_fmt(val[k])}" for k in sorted(val)))
        elif "train/loss" in metrics:
            lines.append(f"no validation ran (the run stopped before the first validation); last training loss: "
                         f"{_fmt(metrics['train/loss'])}")
    for what, where in _run_dirs(trainer, since):
        lines.append(f"{what + ':':<17}{where}")
    lines.append("=" * 78)
    return "\n".join(lines)


def _lm_report(trainer: Trainer, model: LightningModule, datamodule: Any, prompt: str, max_new_tokens: int,
               temperature: float) -> list[str]:
    lines = []
    ckpt = trainer.checkpoint_callback
    best = model
    if isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_path and os.path.isfile(ckpt.best_model_path):
        try:
            best = type(model).load_from_checkpoint(ckpt.best_model_path, map_location="cpu")
        except Exception:  # pragma: no cover - a custom module whose checkpoint cannot be re-created alone
            best = model
    metrics = trainer.callback_metrics
    unit = "char" if type(_vocab_of(datamodule)).__name__ == "CharVocab" else "token"
    if isinstance(ckpt, ModelCheckpoint) and ckpt.monitor == "val/loss" and ckpt.best_model_score is not None:
        bits = float(ckpt.best_model_score) / math.log(2)
        lines.append(f"validation bits per {unit} (best checkpoint): {bits:.3f}")
    elif "val/bits_per_token" in metrics:
        lines.append(f"validation bits per {unit} (last validation): {float(metrics['val/bits_per_token']):.3f}")
    elif "train/loss" in metrics:
        lines.append(f"no validation ran (max_steps < val_check_interval); last training loss: "
                     f"{float(metrics['train/loss']) / math.log(2):.3f} bits per {unit}")
    entropy = _unigram_entropy_bits(datamodule)
    if entropy is not None:
        lines.append(f"unigram entropy of the training text:   {entropy:.3f} bits per {unit} (what a model "
                     "that ignores context would get)")
    vocab = _vocab_of(datamodule)
    if vocab is not None and max_new_tokens > 0 and callable(getattr(best, "generate", None)):
        text = _sample_text(best.cpu(), vocab, _encodable_prompt(vocab, prompt), max_new_tokens, temperature,
                            None)
        lines += [f"sample (temperature {temperature}):", "-" * 78, text, "-" * 78]
    return lines


# ---------------------------------------------------------------------------------------------- the CLI
def _looks_like_path(source: str) -> bool:
    return "\n" not in source and len(source) < 4096 and (os.sep in source or Path(source).suffix != "")


def check_source(source: Any) -> None:
    """Raise :class:`CLIError` (one line, says what to do) for a ``data.source`` path that cannot be read."""
    if source is None or not isinstance(source, str | os.PathLike):
        return
    text = os.fspath(source)
    path = Path(text).expanduser()
    if not path.exists():
        if isinstance(source, os.PathLike) or _looks_like_path(text):
            raise CLIError(f"--data.source {text!r} does not exist: pass a UTF-8 text file or a directory of "
                           "text files (or leave it unset for the default corpus)")
        return
    files = [path] if path.is_file() else [p for p in sorted(path.rglob("*")) if p.is_file()]
    if not files or all(p.stat().st_size == 0 for p in files):
        raise CLIError(f"--data.source {text!r} is empty: pass a UTF-8 text file or a directory of text files "
                       "with some text in it")
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(1 << 16)
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as err:
            if err.start < len(head) - 4:  # not just a multi-byte character cut at the block end
                raise CLIError(f"--data.source {text!r} is not UTF-8 text (binary file?): pass a text file or "
                               "a directory of text files") from None
        if b"\x00" in head:
            raise CLIError(f"--data.source {text!r} is not UTF-8 text (binary file?): pass a text file or a "
                           "directory of text files")


class LightningRNNCLI(LightningCLI):
    """``LightningCLI`` preset for lightning-rnn.

    - models: any ``LightningModule`` (subclass mode; every lightning-rnn module is importable by its name);
    - data: any ``LightningDataModule`` (subclass mode);
    - the model's size arguments are linked to the data module (:data:`DATA_LINKS`, computed when the data
      module is instantiated): ``vocab_size``, ``num_classes``, ``src_vocab``, ``tgt_vocab``, ``pad_id``,
      ``bos_id``, ``eos_id``, each for every model that has an argument of that name;
    - the vocabulary goes into every checkpoint (:class:`VocabInCheckpoint`);
    - after ``fit``: bits per token and a sample (language models) or the best monitored metric (other
      models), and where the run is (:func:`fit_report`);
    - the saved ``config.yaml`` is overwritten by a new run in the same directory.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("model_class", LightningModule)
        kwargs.setdefault("datamodule_class", LightningDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"prog": _PROG})
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        self._unlinked: dict[str, tuple[str, ...]] = {}  # model argument -> data attributes that were missing
        for arg, attrs in DATA_LINKS:
            parser.link_arguments("data", f"model.init_args.{arg}", compute_fn=self._link_fn(arg, attrs),
                                  apply_on="instantiate")
        parser.add_argument("--report.prompt", type=str, default="def ",
                            help="prompt of the sample printed after fit (language models)")
        parser.add_argument("--report.max_new_tokens", type=int, default=300,
                            help="length of the sample printed after fit (0: no sample)")

    # ------------------------------------------------------------------ links
    def _model_config(self) -> Any:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        return config.get("model")

    def _configured_model_class(self) -> type | None:
        """The configured model class (None if unknown)."""
        class_path = getattr(self._model_config(), "class_path", None)
        if not isinstance(class_path, str) or "." not in class_path:
            return None
        module_name, _, name = class_path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError):
            return None
        return cls if inspect.isclass(cls) else None

    def _model_param(self, arg: str) -> inspect.Parameter | None:
        """The configured model class's ``__init__`` parameter ``arg`` (None if it has none or is unknown)."""
        cls = self._configured_model_class()
        try:
            return inspect.signature(cls).parameters.get(arg) if cls is not None else None
        except (TypeError, ValueError):
            return None

    def _user_value(self, arg: str) -> Any:
        """The value of ``model.init_args.<arg>`` set in the config / command line (None if left at the
        model's default or unset)."""
        init_args = getattr(self._model_config(), "init_args", None)
        if init_args is None or arg not in init_args:
            return None
        value = init_args[arg]
        return None if value is None or value == self._model_default(arg) else value

    def _model_default(self, arg: str) -> Any:
        """The default of the configured model class's ``arg`` (None if it is required or unknown)."""
        param = self._model_param(arg)
        return None if param is None or param.default is inspect.Parameter.empty else param.default

    def _required_unlinked(self) -> list[str]:
        """Required model arguments the data module could not fill in."""
        params = {arg: self._model_param(arg) for arg in self._unlinked}
        return [arg for arg, p in params.items() if p is not None and p.default is inspect.Parameter.empty]

    def _link_fn(self, arg: str, attrs: tuple[str, ...]) -> Any:
        def compute(datamodule: Any) -> Any:
            if arg == "vocab_size":
                value = _vocab_size_of(datamodule)
            else:
                value = next((getattr(datamodule, a) for a in attrs if getattr(datamodule, a, None) is not None),
                             None)
            user = self._user_value(arg)
            if value is None:
                self._unlinked[arg] = attrs
                return user if user is not None else self._model_default(arg)
            if user is not None and user != value:
                return self._conflict(arg, attrs, user, value, datamodule)
            return value

        compute.__name__ = compute.__qualname__ = f"{arg}_from_data"
        return compute

    def _conflict(self, arg: str, attrs: tuple[str, ...], user: Any, value: Any, datamodule: Any) -> Any:
        """A config value of a linked argument that differs from the data module's: an error for the shipped
        modules (the argument means the data's size), the config's value with a warning for other models."""
        from lightning_rnn import RNNClassifier, RNNLanguageModel, RNNTagger, Seq2SeqAttention

        cls = self._configured_model_class()
        where = f"{type(datamodule).__name__}.{next(a for a in attrs if getattr(datamodule, a, None) is not None)}"
        if cls is not None and issubclass(cls, (RNNLanguageModel, RNNClassifier, RNNTagger, Seq2SeqAttention)):
            raise CLIError(
                f"Expected model.init_args.{arg} to come from the data module ({where} = {value!r}), got {user!r} "
                f"set in the config: remove model.init_args.{arg} (the CLI links it)"
            )
        rank_zero_warn(
            f"model.init_args.{arg}={user!r} is set in the config; the data module has {where} = {value!r}, "
            f"which the CLI would link to it: keeping the config's value for {getattr(cls, '__name__', 'the model')}"
        )
        return user

    def instantiate_classes(self) -> None:
        self._unlinked = {}
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            missing = self._required_unlinked()
            if not missing:
                raise
            config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
            data_class = getattr(config.get("data"), "class_path", "the data module")
            wanted = " or ".join(f"`{a}`" for arg in missing for a in self._unlinked[arg])
            raise CLIError(
                f"Expected the data module {data_class} to have {wanted} (the CLI links it to the model's "
                f"{', '.join(missing)}), got none: add that attribute/property to the data module "
                f"({_one_line(err)})"
            ) from err

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        data = config.get("data")
        init_args = getattr(data, "init_args", None) if data is not None else None
        if init_args is not None and "source" in init_args:
            check_source(init_args["source"])

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if self.datamodule is not None and _vocab_of(self.datamodule) is not None:
            if not any(isinstance(cb, VocabInCheckpoint) for cb in trainer.callbacks):
                trainer.callbacks.append(VocabInCheckpoint())
        return trainer

    def before_fit(self) -> None:
        import time

        self._fit_start = time.time() - 1.0

    def after_fit(self) -> None:
        if not self.trainer.is_global_zero or self.trainer.interrupted:
            return
        config = self.config.get(self.subcommand, self.config)
        report = config.get("report")
        prompt = getattr(report, "prompt", "def ") if report is not None else "def "
        n = getattr(report, "max_new_tokens", 300) if report is not None else 300
        print(fit_report(self.trainer, self.model, self.datamodule, prompt=prompt, max_new_tokens=n,
                         since=getattr(self, "_fit_start", None)), flush=True)


# ---------------------------------------------------------------------------------------------- generate
def _load_lm(ckpt: str) -> tuple[LightningModule, Any]:
    path = Path(ckpt).expanduser()
    if not path.is_file():
        raise CLIError(f"--ckpt {ckpt!r} does not exist: pass a .ckpt file written by `lightning-rnn fit` "
                       "(see 'best checkpoint' at the end of its output)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CLIError(f"--ckpt {ckpt!r} is not a PyTorch checkpoint ({type(err).__name__}): pass a .ckpt file "
                       "written by `lightning-rnn fit`") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CLIError(f"--ckpt {ckpt!r} is not a Lightning checkpoint (no 'state_dict'): pass a .ckpt file "
                       "written by `lightning-rnn fit`")
    if VOCAB_KEY not in checkpoint:
        raise CLIError(f"--ckpt {ckpt!r} has no vocabulary (key {VOCAB_KEY!r}): train with `lightning-rnn fit` or "
                       "add lightning_rnn.cli.VocabInCheckpoint() to your Trainer's callbacks")
    vocab = _vocab_from_dict(checkpoint[VOCAB_KEY])
    from lightning_rnn import RNNLanguageModel

    try:
        model = RNNLanguageModel.load_from_checkpoint(path, map_location="cpu")
    except (RuntimeError, TypeError, KeyError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CLIError(f"--ckpt {ckpt!r} does not match RNNLanguageModel ({first}): pass a checkpoint of a "
                       "language model trained by `lightning-rnn fit`") from None
    model.eval()
    return model, vocab


def generate_main(args: Sequence[str] | None = None) -> str:
    """``lightning-rnn generate``: sample text from a trained language-model checkpoint; returns the text."""
    parser = argparse.ArgumentParser(prog=f"{_PROG} generate",
                                     description="Sample text from a language-model checkpoint.")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `lightning-rnn fit`")
    parser.add_argument("--prompt", default="def ", help="text the sample starts with")
    parser.add_argument("--max_new_tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    parser.add_argument("--top_k", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    ns = parser.parse_args(list(args) if args is not None else None)
    model, vocab = _load_lm(ns.ckpt)
    try:
        ids = vocab.encode(ns.prompt)
    except (KeyError, ValueError) as err:
        raise CLIError(f"--prompt {ns.prompt!r} has tokens the checkpoint's vocabulary lacks ({err}): use "
                       "characters/words of the training text") from None
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


# ---------------------------------------------------------------------------------------------- entry point
def _one_line(err: BaseException) -> str:
    while err.__cause__ is not None and isinstance(err.__cause__, ValueError | TypeError | OSError):
        err = err.__cause__  # jsonargparse wraps errors of link functions / class instantiation
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    return first


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``lightning-rnn`` (``[project.scripts]``). ``args`` defaults to ``sys.argv[1:]``.

    Exits with status 2 and a one-line message on a user error. Use :func:`cli_main` to get the
    :class:`LightningRNNCLI` object back (tests, notebooks).
    """
    try:
        cli_main(args)
    finally:
        _finish_wandb()


def _finish_wandb(exit_code: int | None = None) -> None:
    """Close a W&B run the command opened, so its offline directory is complete (summary written)."""
    if "wandb" not in sys.modules:
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)


def cli_main(args: Sequence[str] | None = None) -> Any:
    """Like :func:`main`, but returns the :class:`LightningRNNCLI` (or the text, for ``generate``)."""
    argv = list(sys.argv[1:] if args is None else args)
    try:
        if argv and argv[0] == "generate":
            return generate_main(argv[1:])
        return LightningRNNCLI(args=argv)
    except CLIError as err:
        _exit(err.message, err)
    except (ValueError, TypeError, FileNotFoundError, UnicodeDecodeError) as err:
        # The library's argument checks raise ValueError/TypeError "Expected X, got Y": a user error.
        _exit(_one_line(err), err)
    except RuntimeError as err:
        if "state_dict" in str(err) or "size mismatch" in str(err):
            _exit(f"the checkpoint does not match the model ({_one_line(err)}): use the config the checkpoint "
                  "was trained with (or no --ckpt_path)", err)
        raise


def _exit(message: str, err: BaseException) -> None:
    if os.environ.get(_TRACEBACK_ENV):
        raise err
    print(f"{_PROG}: error: {message}", file=sys.stderr, flush=True)
    _finish_wandb(exit_code=2)
    raise SystemExit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
