"""`lightning-rnn fit` on the shipped configs other than the language model: examples/classify_code.yaml
(RNNClassifier), examples/tagger_delay.yaml (RNNTagger), examples/seq2seq_reverse.yaml (Seq2SeqAttention).

Each config is shrunk to seconds from the command line. The sizes the data module knows must arrive in
the model through the CLI's links, the monitored metric must be logged and checkpointed, the report must
not speak of bits per token, and `--print_config` must round-trip.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_rnn import RNNClassifier, RNNTagger, Seq2SeqAttention
from lightning_rnn.cli import cli_main, main
from lightning_rnn.cli.vocab import vocab_from_checkpoint

from .test_cli import _error_line

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]

# config -> (command-line shrink to seconds, model class, monitored metric, linked model arguments)
CONFIGS = {
    "classify_code": (
        [
            "--model.init_args.embedding_dim=8",
            "--model.init_args.encoder.hidden_size=16",
            "--data.init_args.packages=[json, email, http]",
            "--data.init_args.samples_per_class=40",
            "--data.init_args.max_length=40",
            "--data.init_args.batch_size=16",
            "--trainer.max_steps=8",
            "--trainer.val_check_interval=4",
        ],
        RNNClassifier,
        "val/acc",
        ("vocab_size", "num_classes"),
    ),
    "tagger_delay": (
        [
            "--model.init_args.encoder.hidden_size=8",
            "--model.init_args.tbptt_steps=8",
            "--data.init_args.length=20",
            "--data.init_args.delay=3",
            "--data.init_args.num_train=16",
            "--data.init_args.num_val=8",
            "--data.init_args.batch_size=8",
            "--trainer.max_steps=8",  # 2 batches x up to 3 chunks per epoch: validation after epoch 1
        ],
        RNNTagger,
        "val/acc",
        ("vocab_size", "num_classes"),
    ),
    "seq2seq_reverse": (
        [
            "--model.init_args.embedding_dim=8",
            "--model.init_args.encoder.hidden_size=8",
            "--model.init_args.decoder_hidden_size=16",
            "--model.init_args.num_attention_maps=1",
            "--data.init_args.num_train=64",
            "--data.init_args.num_val=16",
            "--data.init_args.num_test=16",
            "--data.init_args.batch_size=16",
            "--trainer.max_steps=6",
            "--trainer.val_check_interval=3",
        ],
        Seq2SeqAttention,
        "val/exact_match",
        ("src_vocab", "tgt_vocab", "pad_id", "bos_id", "eos_id"),
    ),
}
#: where each linked model argument comes from on the data module
DATA_ATTR = {"vocab_size": "vocab_size", "num_classes": "num_classes", "src_vocab": "src_vocab_size",
             "tgt_vocab": "tgt_vocab_size", "pad_id": "pad_id", "bos_id": "bos_id", "eos_id": "eos_id"}


pytestmark = pytest.mark.usefixtures("cli_env")


def _args(name: str, *extra: str) -> list[str]:
    return ["fit", "--config", str(EXAMPLES / f"{name}.yaml"), *CONFIGS[name][0], *QUIET, *extra]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fit_links_sizes_logs_metric_and_checkpoints(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _, model_class, monitor, linked = CONFIGS[name]
    monkeypatch.chdir(tmp_path)
    # in-process (the model and data module are inspected), without the config's W&B logger: see the
    # subprocess test below for that
    cli = cli_main(_args(name, "--trainer.logger=false"))
    model, dm, trainer = cli.model, cli.datamodule, cli.trainer
    assert type(model) is model_class
    for arg in linked:  # the sizes reached the model from the data module, not from the config
        assert model.hparams[arg] == getattr(dm, DATA_ATTR[arg]), arg
    if name == "classify_code":
        assert model.num_classes == dm.num_classes == 3 and model.vocab_size == len(dm.vocab)
    if name == "tagger_delay":
        assert (model.num_classes, model.vocab_size) == (2, 2)
    if name == "seq2seq_reverse":
        assert model.hparams.src_vocab == model.hparams.tgt_vocab == 53
    value = trainer.callback_metrics[monitor]
    assert math.isfinite(float(value))
    ckpt_cb = trainer.checkpoint_callback
    assert ckpt_cb.monitor == monitor and ckpt_cb.best_model_score is not None
    best = Path(ckpt_cb.best_model_path)
    assert best.name == "best.ckpt" and best.is_file()
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    for arg in linked:
        assert ckpt["hyper_parameters"][arg] == getattr(dm, DATA_ATTR[arg])
    reloaded = model_class.load_from_checkpoint(best, map_location="cpu", weights_only=True)  # the checkpoint stands alone
    assert reloaded.hparams[linked[0]] == model.hparams[linked[0]]
    if name == "classify_code":  # the character vocabulary travels with the checkpoint
        assert vocab_from_checkpoint(ckpt) == dm.vocab
    out = capsys.readouterr().out
    score = float(ckpt_cb.best_model_score)
    assert f"best {monitor} (best checkpoint): {score:.4f}" in out
    assert "last validation: " in out and monitor in out.split("last validation: ")[1]
    assert "bits per" not in out and "sample (temperature" not in out


@pytest.mark.slow  # fast: the in-process fits above, the W&B run of tests/test_cli.py
def test_wandb_run_of_a_config(tmp_path: Path) -> None:
    """The config's own W&B offline logger, in a fresh process (as tests/test_cli.py isolates W&B runs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true")
    proc = subprocess.run([sys.executable, "-m", "lightning_rnn.cli", *_args("tagger_delay")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    records = next(runs[0].glob("run-*.wandb")).read_bytes()
    for key in ("train/loss", "val/acc", "val/f1", "val/loss"):
        assert key.encode() in records, f"{key} not logged in the W&B run"
    ckpts = list((tmp_path / "runs").rglob("best.ckpt"))
    assert len(ckpts) == 1 and str(ckpts[0].resolve()) in proc.stdout
    assert "best val/acc (best checkpoint):" in proc.stdout and "W&B run:" in proc.stdout


@pytest.mark.parametrize("name", list(CONFIGS))
def test_print_config_round_trips(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, model_class, _, linked = CONFIGS[name]
    with pytest.raises(SystemExit) as exc:
        main([*_args(name), "--print_config"])
    assert exc.value.code in (0, None)
    printed = capsys.readouterr().out
    cfg = yaml.safe_load(printed)
    assert cfg["model"]["class_path"] == f"lightning_rnn.{model_class.__name__}"
    for arg in linked:
        assert arg not in cfg["model"]["init_args"], f"{arg} is linked, it must not be configurable"
    saved = tmp_path / "saved.yaml"
    saved.write_text(printed)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(saved), "--print_config"])
    assert capsys.readouterr().out == printed


def test_data_module_without_a_linked_size_is_one_line_error(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "mismatch.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"class_path": "lightning_rnn.RNNClassifier", "init_args": {"encoder": {"hidden_size": 8}}},
        "data": {"class_path": "lightning_rnn.data.ReversalDataModule", "init_args": {"num_train": 8}},
        "trainer": {"max_steps": 1, "logger": False},
    }))
    line = _error_line(capsys, ["fit", "--config", str(config)])
    assert "lightning_rnn.data.ReversalDataModule" in line and "`num_classes`" in line
    assert "missing 1 required positional argument: 'num_classes'" in line


@pytest.mark.parametrize("kind", ["missing", "no_tab", "one_class"])
def test_bad_classification_source_is_one_line_error(kind: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "data.tsv"
    if kind == "no_tab":
        path.write_text("pos\tfine\nthis line has no tab\n")
    elif kind == "one_class":
        path.write_text("pos\tfine\npos\tgood\n")
    args = ["fit", "--config", str(EXAMPLES / "classify_code.yaml"), f"--data.init_args.source={path}",
            "--trainer.logger=false"]
    line = _error_line(capsys, args)
    assert str(path) in line
    expected = {"missing": "does not exist", "no_tab": "line 2", "one_class": "Expected at least 2 classes"}
    assert expected[kind] in line


def test_linked_argument_set_in_the_config_is_not_overridden_silently(capsys: pytest.CaptureFixture[str]) -> None:
    args = _args("classify_code", "--trainer.logger=false")
    line = _error_line(capsys, [*args, "--model.init_args.num_classes=5"])
    assert "Expected model.init_args.num_classes to come from the data module" in line
    assert "TextClassificationDataModule.num_classes = 3), got 5" in line
