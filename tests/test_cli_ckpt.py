"""`--ckpt_path` with every subcommand on the checkpoints `lightning-rnn fit` writes, for every shipped config
and a user module taking **kwargs: fit -> validate -> test -> predict -> fit --ckpt_path (resume)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch import nn

from lightning_rnn import TBPTTModule, TBPTTStep
from lightning_rnn.cli import cli_main

from .test_cli import TINY, _corpus, _error_line
from .test_cli_configs import CONFIGS, EXAMPLES, QUIET

pytestmark = pytest.mark.usefixtures("cli_env")

NO_LOG = ["--trainer.logger=false", *QUIET]


def _shrink(name: str, corpus: Path) -> list[str]:
    if name == "char_lm":
        return [f"--data.init_args.source={corpus}", *[a for a in TINY if not a.startswith("--report")],
                "--report.max_new_tokens=0", "--trainer.max_steps=6", "--trainer.val_check_interval=2"]
    return [a for a in CONFIGS[name][0] if not a.startswith("--trainer.max_steps")] + ["--trainer.max_steps=6"]


def _run(subcommand: str, name: str, extra: list[str], corpus: Path) -> Any:
    args = [subcommand, "--config", str(EXAMPLES / f"{name}.yaml"), *_shrink(name, corpus), *NO_LOG, *extra]
    if subcommand != "fit":
        args = [a for a in args if not a.startswith(("--report", "--trainer.max_steps", "--trainer.val_check"))]
    return cli_main(args)


@pytest.mark.parametrize("name", [
    "tagger_delay",  # the fastest config runs by default, the others with -m slow (5 CLI runs each)
    pytest.param("char_lm", marks=pytest.mark.slow),
    pytest.param("classify_code", marks=pytest.mark.slow),
    pytest.param("seq2seq_reverse", marks=pytest.mark.slow),
])
def test_every_subcommand_reuses_the_checkpoints_fit_writes(name: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    corpus = _corpus(tmp_path / "corpus.py")
    fitted = _run("fit", name, [], corpus)
    last = tmp_path / "runs" / "checkpoints" / "last.ckpt"
    assert last.is_file() and fitted.trainer.global_step >= 6
    ckpt = torch.load(last, weights_only=True)
    hparams = ckpt["hyper_parameters"]
    assert None not in {hparams.get(k, 0) for k in ("pad_id", "bos_id", "eos_id", "src_vocab", "num_classes")}
    model_cls = type(fitted.model)
    accepted = set(model_cls.__init__.__code__.co_varnames)
    assert set(hparams) - {"_class_path", "_instantiator"} <= accepted, "only arguments the model accepts"

    assert isinstance(hparams["encoder"], dict)  # the RNNConfig as data: the file loads weights_only

    validated = _run("validate", name, ["--ckpt_path", str(last)], corpus)
    assert any(k.startswith("val/") for k in validated.trainer.callback_metrics)
    assert validated.model.hparams["encoder"] == hparams["encoder"]
    tested = _run("test", name, ["--ckpt_path", str(last)], corpus)
    assert any(k.startswith("test/") for k in tested.trainer.callback_metrics)
    has_predict = type(fitted.model).predict_step is not LightningModule.predict_step
    has_loader = type(fitted.datamodule).predict_dataloader is not LightningDataModule.predict_dataloader
    if has_predict and has_loader:  # modules with a predict_step, data modules with a predict loader
        predicted = _run("predict", name, ["--ckpt_path", str(last)], corpus)
        assert predicted.trainer.predict_loop.predictions
    # resume: continues from the checkpoint's step, same weights at the start
    resumed = _run("fit", name, ["--ckpt_path", str(last), "--trainer.max_steps=10"], corpus)
    assert resumed.trainer.global_step >= 10 and ckpt["global_step"] >= 6


def test_ckpt_path_rebuilds_the_encoder_it_was_trained_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An encoder set on the command line at fit is rebuilt by `--ckpt_path` alone (the config's encoder is
    replaced by the checkpoint's), with identical weights and predictions."""
    monkeypatch.chdir(tmp_path)
    corpus = _corpus(tmp_path / "corpus.py")
    encoder = ["--model.init_args.encoder.cell=rnn", "--model.init_args.encoder.num_layers=2",
               "--model.init_args.encoder.zoneout=0.1"]
    fitted = _run("fit", "tagger_delay", encoder, corpus)
    last = tmp_path / "runs" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)["hyper_parameters"]["encoder"]
    assert (saved["cell"], saved["hidden_size"], saved["num_layers"], saved["zoneout"]) == ("rnn", 8, 2, 0.1)
    predicted = _run("predict", "tagger_delay", ["--ckpt_path", str(last)], corpus)
    rnn = predicted.model.rnn
    assert (rnn.cell, rnn.hidden_size, rnn.num_layers, rnn.zoneout) == ("rnn", 8, 2, 0.1)
    for (name, a), b in zip(predicted.model.state_dict().items(), torch.load(last, weights_only=True)["state_dict"].values()):
        assert torch.equal(a, b), name
    again = fitted.trainer.predict(fitted.model, datamodule=fitted.datamodule, ckpt_path=str(last))
    for a, b in zip(predicted.trainer.predict_loop.predictions, again):
        assert torch.equal(a["probs"], b["probs"])


class KwargsTagger(TBPTTModule):
    """A user module that takes **kwargs (the data module's num_classes arrives through them)."""

    def __init__(self, vocab_size: int, hidden_size: int = 8, **kwargs: Any) -> None:
        super().__init__(tbptt_steps=kwargs.pop("tbptt_steps", 8))
        self.save_hyperparameters()
        self.embed = nn.Embedding(vocab_size, 4)
        self.rnn = nn.GRU(4, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, int(kwargs.get("num_classes", 2)))

    def tbptt_step(self, chunk: dict, state: Any) -> TBPTTStep:
        out, state = self.rnn(self.embed(chunk["inputs"]), state)
        loss = nn.functional.cross_entropy(self.head(out).transpose(1, 2), chunk["labels"], ignore_index=-100)
        return TBPTTStep(loss, state)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), 1e-2)


def test_user_module_with_kwargs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = ["--model", f"{__name__}.KwargsTagger", "--data", "lightning_rnn.data.BitStreamTaggingDataModule",
            "--data.init_args.length=16", "--data.init_args.num_train=16", "--data.init_args.num_val=8",
            "--data.init_args.num_test=8", "--data.init_args.batch_size=8", *NO_LOG]
    fitted = cli_main(["fit", *base, "--trainer.max_steps=4", "--trainer.callbacks+=lightning_rnn.callbacks.LastCheckpoint",
                       "--trainer.callbacks.dirpath=ck", "--trainer.callbacks.every_n_steps=2"])
    assert fitted.model.hparams["num_classes"] == 2 and "pad_id" not in fitted.model.hparams
    last = tmp_path / "ck" / "last.ckpt"
    again = KwargsTagger.load_from_checkpoint(last, weights_only=True)  # loads in Python too
    assert again.hparams["vocab_size"] == 2
    cli_main(["validate", *base, "--ckpt_path", str(last)])
    resumed = cli_main(["fit", *base, "--trainer.max_steps=8", "--ckpt_path", str(last)])
    assert resumed.trainer.global_step >= 8


def test_checkpoint_of_another_class_or_size_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    corpus = _corpus(tmp_path / "corpus.py")
    _run("fit", "tagger_delay", ["--trainer.max_steps=2"], corpus)
    last = str(tmp_path / "runs" / "checkpoints" / "last.ckpt")
    args = ["validate", "--config", str(EXAMPLES / "classify_code.yaml"), *CONFIGS["classify_code"][0][:-2], *NO_LOG,
            "--ckpt_path", last]
    line = _error_line(capsys, args)
    assert "is a checkpoint of lightning_rnn.RNNTagger, the config's model is lightning_rnn.RNNClassifier" in line
    # the same class with another size from the data: a tagger checkpoint (2 input bits) on 3-symbol data
    args = ["validate", "--config", str(EXAMPLES / "tagger_delay.yaml"), *CONFIGS["tagger_delay"][0][:-1], *NO_LOG,
            "--ckpt_path", last, "--data", "lightning_rnn.data.ReversalDataModule"]
    line = _error_line(capsys, args)
    assert "trained with" in line or "is a checkpoint of" in line or "Expected" in line
