"""The text printed after ``lightning-rnn fit``: the best checkpoint's metric, a sample for language models,
and where the run, its checkpoints and its plots are."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_rnn.cli.vocab import vocab_of

__all__ = ["fit_report"]


def _unigram_entropy_bits(datamodule: Any) -> float | None:
    """Entropy (bits/token) of the training tokens' unigram distribution, for data modules with public
    ``streams("train")`` (:class:`~lightning_rnn.data.TextStreamDataModule`)."""
    streams = getattr(datamodule, "streams", None)
    if not callable(streams):
        return None
    try:
        tokens = streams("train")[0]
    except Exception:  # a split too short for the batch shape: no entropy line
        return None
    if not isinstance(tokens, torch.Tensor) or tokens.numel() == 0:
        return None
    flat, counts = tokens.flatten(), torch.zeros(0, dtype=torch.float64)
    for a in range(0, flat.numel(), 1 << 24):  # chunks: a memory-mapped corpus is never copied whole to int64
        part = torch.bincount(flat[a : a + (1 << 24)].long()).double()
        counts = torch.nn.functional.pad(counts, (0, max(0, part.numel() - counts.numel())))
        counts[: part.numel()] += part
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum())


def _encodable_prompt(vocab: Any, prompt: str) -> str:
    """The prompt, or a prompt the vocabulary can encode (one known token)."""
    try:
        ids = vocab.encode(prompt)
        unk = getattr(vocab, "unk_id", None)
        if len(ids) and (unk is None or unk not in ids):
            return prompt
    except (KeyError, ValueError):
        pass
    return vocab.decode([min(1, len(vocab) - 1)])


def _run_dirs(trainer: Trainer, since: float | None = None) -> list[tuple[str, str]]:
    """(what, where) pairs: logger run directory, checkpoints, plots."""
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
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.save_last and cb.last_model_path:
            rows.append(("last checkpoint", str(Path(cb.last_model_path).resolve())))
            break
    if trainer.log_dir:  # PNGs the callbacks wrote during this run (GradientFlowMonitor: <log_dir>/gradient_flow)
        plots = [p for p in Path(trainer.log_dir).glob("**/*.png") if "wandb" not in p.parts
                 and (since is None or p.stat().st_mtime >= since)]
        for d in sorted({str(p.parent.resolve()) for p in plots}):
            rows.append(("plots", d))
    return rows


def _fmt(value: Any) -> str:
    value = float(value)
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.4g}"


def fit_report(trainer: Trainer, model: LightningModule, datamodule: Any, *, prompt: str = "def ",
               max_new_tokens: int = 300, temperature: float = 0.8, since: float | None = None) -> str:
    """The text printed after ``lightning-rnn fit``.

    A :class:`~lightning_rnn.RNNLanguageModel`: the validation bits per token of the best checkpoint, the
    unigram entropy of the training tokens and a sample. Any other model: the best checkpoint's monitored
    metric and the last validation metrics (``val/*``). Then where the run, the checkpoints and the plots are.
    """
    from lightning_rnn import RNNLanguageModel

    lines = ["", "=" * 78]
    ckpt = trainer.checkpoint_callback
    has_best = isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_score is not None
    metrics = trainer.callback_metrics
    if isinstance(model, RNNLanguageModel):
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
            best = type(model).load_from_checkpoint(ckpt.best_model_path, map_location="cpu", weights_only=True)
        except Exception:  # pragma: no cover - a subclass whose checkpoint cannot be re-created alone
            best = model
    metrics = trainer.callback_metrics
    vocab = vocab_of(datamodule)
    unit = "char" if getattr(vocab, "kind", None) == "char" else "token"
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
    if vocab is not None and max_new_tokens > 0:
        ids = vocab.encode(_encodable_prompt(vocab, prompt))
        generator = torch.Generator().manual_seed(0)
        out = best.cpu().generate(torch.as_tensor(ids, dtype=torch.long), max_new_tokens, temperature=temperature,
                                  generator=generator)
        lines += [f"sample (temperature {temperature}):", "-" * 78, vocab.decode(out.tolist()), "-" * 78]
    return lines
