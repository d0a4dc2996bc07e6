"""The AWD-LSTM recipe: examples/awd_lstm.yaml through `lightning-rnn fit`, and the same model as the <= 30 lines of
user Python shown in the docs (changes/awd.md), both run tiny."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from lightning_rnn import RNNLanguageModel
from lightning_rnn.cli import cli_main
from lightning_rnn.data.corpus import PYDOC_TOPICS, pydoc_topics_text, read_text_source

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "awd_lstm.yaml"

#: the docs' snippet, verbatim (changes/awd.md shows the same text; a test below checks that)
SNIPPET = '''\
import lightning as L

from lightning_rnn import RNNLanguageModel
from lightning_rnn.callbacks import NTASGD
from lightning_rnn.data import TextStreamDataModule

# English prose on every machine: the Python documentation's help topics (or a path to your own text)
data = TextStreamDataModule("stdlib:pydoc_topics", level="word", batch_size=20, eval_batch_size=10,
                            bptt=280, val_fraction=0.1, test_fraction=0.1)
model = RNNLanguageModel(
    data.vocab_size, embedding_dim=200, hidden_size=200, num_layers=3, tie_weights=True,
    tbptt_steps=70, variable_bptt=True,  # chunk lengths ~ N(70, 5), lr scaled per chunk
    embedding_dropout=0.1,  # whole vocabulary rows
    input_dropout=0.65, layer_dropout=0.3, output_dropout=0.4,  # locked (step-tied) dropout
    recurrent_dropout=0.5,  # DropConnect on W_hh
    ar_alpha=2.0, tar_beta=1.0,  # AR / TAR on the last layer's outputs
    optimizer="sgd", lr=30.0, weight_decay=1.2e-6, gradient_clip_val=0.25,
)
trainer = L.Trainer(max_epochs=150, callbacks=[NTASGD(n=5, monitor="val/loss")])
trainer.fit(model, data)  # SGD, then averaging once val/loss stops improving
trainer.test(model, data)  # the averaged weights
'''

#: the snippet shrunk to seconds: (text in the snippet, replacement)
SHRINK = [
    ("batch_size=20, eval_batch_size=10,\n                            bptt=280", "batch_size=4, eval_batch_size=4, bptt=24"),
    ("embedding_dim=200, hidden_size=200, num_layers=3", "embedding_dim=8, hidden_size=8, num_layers=2"),
    ("tbptt_steps=70", "tbptt_steps=8"),
    ("max_epochs=150", "max_epochs=3, limit_train_batches=2, limit_val_batches=2, limit_test_batches=2, "
                       "logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False"),
]


def test_pydoc_topics_source_is_english_prose() -> None:
    docs = read_text_source(PYDOC_TOPICS)
    assert len(docs) == 1 and docs[0][1] == pydoc_topics_text()
    words = docs[0][1].split()
    assert len(words) > 20_000 and words.count("the") > 1000  # prose, not code
    assert len(read_text_source(PYDOC_TOPICS, max_bytes=100)[0][1]) == 100


def test_snippet_is_at_most_30_lines_and_matches_the_docs() -> None:
    assert len(SNIPPET.strip().splitlines()) <= 30
    doc = ROOT / "changes" / "awd.md"
    if not doc.is_file():
        pytest.skip("changes/awd.md is not in this tree")
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)
    assert SNIPPET in blocks


def test_snippet_runs_tiny() -> None:
    code = SNIPPET
    for old, new in SHRINK:
        assert old in code, old
        code = code.replace(old, new)
    namespace: dict = {}
    exec(compile(code, "awd_snippet", "exec"), namespace)
    model, trainer = namespace["model"], namespace["trainer"]
    assert model.decoder.weight is model.embedding.weight
    assert (model.ar_alpha, model.tar_beta, model.variable_bptt) == (2.0, 1.0, True)
    assert "test/ppl" in trainer.callback_metrics and len(trainer.callbacks[0].history) == 3
    assert torch.isfinite(trainer.callback_metrics["test/ppl"])


@pytest.mark.usefixtures("cli_env")
def test_config_fits_tiny_with_every_piece(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    cli = cli_main([
        "fit", "--config", str(CONFIG),
        "--model.init_args.embedding_dim=8", "--model.init_args.hidden_size=8", "--model.init_args.num_layers=2",
        "--model.init_args.tbptt_steps=8", "--data.init_args.batch_size=4", "--data.init_args.eval_batch_size=4",
        "--data.init_args.bptt=24", "--trainer.max_epochs=3", "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=2", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--report.max_new_tokens=5",
    ])
    model, dm, trainer = cli.model, cli.datamodule, cli.trainer
    assert type(model) is RNNLanguageModel and dm.source == PYDOC_TOPICS and dm.level == "word"
    hp = model.hparams
    assert hp.vocab_size == dm.vocab_size > 1000 and model.decoder.weight is model.embedding.weight
    assert (hp.variable_bptt, hp.ar_alpha, hp.tar_beta, hp.optimizer, hp.lr, hp.gradient_clip_val) == (
        True, 2.0, 1.0, "sgd", 30.0, 0.25)
    for name in ("embedding_dropout", "input_dropout", "layer_dropout", "output_dropout", "recurrent_dropout"):
        assert hp[name] > 0, name
    nt = [cb for cb in trainer.callbacks if type(cb).__name__ == "NTASGD"]
    assert len(nt) == 1 and nt[0].n == 5 and len(nt[0].history) == 3  # one evaluation per epoch
    assert {"train/ar", "train/tar", "val/loss"} <= set(trainer.callback_metrics)
    best = Path(trainer.checkpoint_callback.best_model_path)
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    assert ckpt["callbacks"]["NTASGD"]["history"]
    assert "validation bits per token (best checkpoint)" in capsys.readouterr().out
