"""Faults: checkpoints are data (a pickle that would run code is refused everywhere), bad checkpoint files are
one line in every subcommand, unwritable / full checkpoint directories fail before training, saves never
leave a truncated file under the final name, and a few nonsense inputs are refused."""

from __future__ import annotations

import errno
import io
import os
import shutil
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer

from lightning_rnn import RNNConfig, RNNLanguageModel, RNNTagger, Seq2SeqAttention
from lightning_rnn.callbacks import AdaptiveGradientClipping, CheckpointDirCheck, LastCheckpoint
from lightning_rnn.checkpoint_io import CheckpointError, SafeCheckpointIO, load_checkpoint
from lightning_rnn.cli import main
from lightning_rnn.data import BitStreamTaggingDataModule, CharVocab, TextStreamDataModule

from .test_cli import _error_line
from .test_cli_configs import CONFIGS, EXAMPLES

pytestmark = pytest.mark.usefixtures("cli_env")
SUBCOMMANDS = ["fit", "validate", "test", "predict"]


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _tagger_ckpt(path: Path, **extra: Any) -> Path:
    model = RNNTagger(encoder=RNNConfig(hidden_size=4), num_classes=2, vocab_size=2, embedding_dim=2)
    torch.save({"state_dict": model.state_dict(), "pytorch-lightning_version": "2.6.0",
                "hyper_parameters": {"_class_path": "lightning_rnn.RNNTagger", **dict(model.hparams)}, **extra}, path)
    return path


@pytest.fixture
def evil(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "code_ran"
    path = _tagger_ckpt(tmp_path / "evil.ckpt", payload=_RunsCode(marker))
    return path, marker


def test_a_checkpoint_that_would_run_code_is_refused_by_every_loading_entry_point(
        evil: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, marker = evil
    for load in (lambda: load_checkpoint(path), lambda: SafeCheckpointIO().load_checkpoint(path)):
        with pytest.raises(CheckpointError) as err:
            load()
        assert "would call posix.system" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(Exception):  # noqa: B017 - Lightning's own loader (torch's message)
        RNNTagger.load_from_checkpoint(path, weights_only=True)
    trainer = Trainer(plugins=[SafeCheckpointIO()], logger=False, enable_progress_bar=False, max_steps=1)
    dm = BitStreamTaggingDataModule(num_train=4, num_val=4, num_test=4, length=8, batch_size=4)
    with pytest.raises(CheckpointError):
        trainer.validate(RNNTagger(encoder=RNNConfig(hidden_size=4), num_classes=2, vocab_size=2), dm, ckpt_path=path)
    tagger = ["--config", str(EXAMPLES / "tagger_delay.yaml"), "--trainer.logger=false"]
    for sub in SUBCOMMANDS:
        line = _error_line(capsys, [sub, *tagger, "--ckpt_path", str(path)])
        assert "would call posix.system" in line
    assert "would call posix.system" in _error_line(capsys, ["generate", "--ckpt", str(path)])
    assert not marker.exists(), "unpickling the checkpoint ran code"


def _bad_file(kind: str, tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / f"{kind}.ckpt"
    if kind == "empty":
        path.write_bytes(b"")
        return path, "empty or truncated"
    if kind == "truncated":
        buf = io.BytesIO()
        torch.save({"state_dict": {"w": torch.zeros(4096)}}, buf)
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        return path, "empty or truncated"
    if kind == "random":
        path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
        return path, "not a PyTorch checkpoint"
    if kind == "not_lightning":
        torch.save({"weights": torch.zeros(2)}, path)
        return path, "not a Lightning checkpoint"
    return tmp_path / "missing.ckpt", "does not exist"


@pytest.mark.parametrize("kind", ["empty", "truncated", "random", "not_lightning", "missing"])
def test_bad_checkpoint_file_is_one_line_in_every_subcommand(kind: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    path, expected = _bad_file(kind, tmp_path)
    tagger = ["--config", str(EXAMPLES / "tagger_delay.yaml"), "--trainer.logger=false"]
    for sub in SUBCOMMANDS:
        line = _error_line(capsys, [sub, *tagger, "--ckpt_path", str(path)])
        assert expected in line and str(path) in line, line
    assert expected in _error_line(capsys, ["generate", "--ckpt", str(path)])


def test_generate_refuses_a_checkpoint_of_another_class(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _tagger_ckpt(tmp_path / "tagger.ckpt", TextStreamDataModule={"vocab": CharVocab.build("ab").to_dict()})
    line = _error_line(capsys, ["generate", "--ckpt", str(path)])
    assert "is a checkpoint of lightning_rnn.RNNTagger, not of a language model" in line


class ShoutingLM(RNNLanguageModel):
    """A user's subclass: generate must restore this class, not the base."""

    def generate(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = super().generate(*args, **kwargs)
        return out[: len(args[0]) if args else 0]  # prompt only: visibly this class's generate


def _lm_ckpt(path: Path, cls: type = RNNLanguageModel) -> Path:
    vocab = CharVocab.build("def abc\n")
    model = cls(vocab_size=len(vocab), embedding_dim=4, encoder=RNNConfig(hidden_size=4))
    hparams = {"_class_path": f"{cls.__module__}.{cls.__qualname__}", **dict(model.hparams),
               "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    torch.save({"state_dict": model.state_dict(), "pytorch-lightning_version": "2.6.0", "hyper_parameters": hparams,
                "TextStreamDataModule": {"vocab": vocab.to_dict(), "bptt": 8}}, path)
    return path


def test_generate_refuses_a_checkpoint_naming_its_own_instantiator(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = _lm_ckpt(tmp_path / "lm.ckpt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["hyper_parameters"]["_instantiator"] = "os.system"
    torch.save(ckpt, path)
    assert "refused, a checkpoint must not choose code to run" in _error_line(capsys, ["generate", "--ckpt", str(path)])


def test_generate_restores_the_checkpoints_own_class(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _lm_ckpt(tmp_path / "sub.ckpt", ShoutingLM)
    main(["generate", "--ckpt", str(path), "--prompt", "abc", "--max_new_tokens", "5", "--seed", "0"])
    assert capsys.readouterr().out == "abc\n"  # the subclass's generate ran (the base would add 5 tokens)


def test_generate_unknown_prompt_characters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _lm_ckpt(tmp_path / "lm.ckpt")
    line = _error_line(capsys, ["generate", "--ckpt", str(path), "--prompt", "dex", "--max_new_tokens", "2"])
    assert "1 unknown: 'x'" in line and "--unknown" in line
    main(["generate", "--ckpt", str(path), "--prompt", "dex", "--max_new_tokens", "2", "--unknown", "drop"])
    assert capsys.readouterr().out.startswith("de")
    main(["generate", "--ckpt", str(path), "--prompt", "dex", "--max_new_tokens", "2", "--unknown", "unk"])
    assert capsys.readouterr().out.startswith("de<unk>")


# ---------------------------------------------------------------------------------------------- disk faults
def test_atomic_save_never_leaves_a_truncated_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.ckpt"
    io_ = SafeCheckpointIO()
    io_.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    real_save = torch.save

    def disk_full(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        io_.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert os.listdir(tmp_path) == ["last.ckpt"]  # no temporary file left behind
    assert load_checkpoint(path)["state_dict"]["w"].tolist() == [1.0, 1.0, 1.0]  # the previous one, whole


def _fit_with_checkpoint_dir(dirpath: str, tmp_path: Path) -> None:
    dm = BitStreamTaggingDataModule(num_train=4, num_val=4, num_test=4, length=8, batch_size=4)
    model = RNNTagger(encoder=RNNConfig(hidden_size=4), num_classes=2, vocab_size=2)
    trainer = Trainer(max_steps=2, logger=False, enable_progress_bar=False, default_root_dir=tmp_path,
                      callbacks=[CheckpointDirCheck(), LastCheckpoint(dirpath, every_n_steps=1)],
                      plugins=[SafeCheckpointIO()])
    trainer.fit(model, dm)


def test_unwritable_checkpoint_dir_fails_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the CLI writes config.yaml into the working directory
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="Expected a writable checkpoint directory") as err:
        _fit_with_checkpoint_dir(str(blocker / "ckpts"), tmp_path)
    assert "\n" not in str(err.value)
    args = ["fit", "--config", str(EXAMPLES / "tagger_delay.yaml"), *CONFIGS["tagger_delay"][0],
            "--trainer.logger=false", f"--trainer.callbacks.dirpath={blocker / 'ckpts'}"]
    line = _error_line(capsys, args)
    assert "Expected a writable checkpoint directory" in line and "a_file" in line


def test_full_disk_fails_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 100, 100))
    with pytest.raises(OSError, match="free for a checkpoint"):
        _fit_with_checkpoint_dir(str(tmp_path / "ck"), tmp_path)
    assert not (tmp_path / "ck" / "last.ckpt").exists()


# ---------------------------------------------------------------------------------------------- nonsense
@pytest.mark.parametrize("max_bytes", [0, -5])
def test_max_bytes_below_one_is_refused(max_bytes: int) -> None:
    with pytest.raises(ValueError, match=f"Expected max_bytes to be an int >= 1 or None .*got {max_bytes}"):
        TextStreamDataModule(source="abc " * 100, max_bytes=max_bytes)


def test_two_adaptive_clipping_callbacks_are_refused(tmp_path: Path) -> None:
    dm = BitStreamTaggingDataModule(num_train=4, num_val=0, num_test=0, length=8, batch_size=4)
    trainer = Trainer(max_steps=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path,
                      callbacks=[AdaptiveGradientClipping(quantile=0.9), AdaptiveGradientClipping(quantile=0.5)])
    with pytest.raises(ValueError, match="Expected one AdaptiveGradientClipping callback per Trainer, got 2"):
        trainer.fit(RNNTagger(encoder=RNNConfig(hidden_size=4), num_classes=2, vocab_size=2), dm)


def test_seq2seq_pad_id_equal_to_eos_id_is_refused() -> None:
    with pytest.raises(ValueError, match="Expected pad_id different from eos_id"):
        Seq2SeqAttention(src_vocab=10, tgt_vocab=10, pad_id=2, bos_id=1, eos_id=2)
