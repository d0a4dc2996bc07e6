"""The AWD-LSTM recipe: examples/awd_lstm.yaml through `lightning-rnn fit`, and the same model as the <= 30 lines of
user Python shown in the docs (docs/guides/awd_lstm.md), both run tiny."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Trainer

from lightning_rnn import RNNLanguageModel
from lightning_rnn.cli import cli_main, main
from lightning_rnn.data.corpus import PYDOC_TOPICS, pydoc_topics_text, read_text_source

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "awd_lstm.yaml"

#: the docs' snippet, verbatim (docs/guides/awd_lstm.md shows the same text; a test below checks that)
SNIPPET = '''\
import lightning as L

from lightning_rnn import RNNConfig, RNNLanguageModel
from lightning_rnn.callbacks import NTASGD
from lightning_rnn.data import TextStreamDataModule

# English prose on every machine: the Python documentation's help topics (or a path to your own text)
data = TextStreamDataModule("stdlib:pydoc_topics", level="word", batch_size=20, eval_batch_size=10,
                            bptt=280, val_fraction=0.1, test_fraction=0.1)
model = RNNLanguageModel(
    data.vocab_size, embedding_dim=200, tie_weights=True,
    encoder=RNNConfig(hidden_size=200, num_layers=3,
                      input_dropout=0.65, layer_dropout=0.3, output_dropout=0.4,  # locked (step-tied) dropout
                      recurrent_dropout=0.5),  # DropConnect on W_hh
    tbptt_steps=70, variable_bptt=True,  # chunk lengths ~ N(70, 5), lr scaled per chunk
    embedding_dropout=0.1,  # whole vocabulary rows
    ar_alpha=2.0, tar_beta=1.0,  # AR / TAR on the last layer's outputs
    optimizer="sgd", lr=30.0, weight_decay=1.2e-6, gradient_clip_val=0.25,
)
trainer = L.Trainer(max_epochs=150, callbacks=[NTASGD(n=5, monitor="val/loss")])
trainer.fit(model, data)  # SGD, then averaging once val/loss stops improving
trainer.test(model, data)  # the averaged weights
'''

#: the docs' example of AR/TAR in a user's own TBPTTModule, verbatim
CUSTOM_SNIPPET = '''\
import torch
from torch import nn

from lightning_rnn import TBPTTModule, TBPTTStep
from lightning_rnn.functional import activation_regularization, temporal_activation_regularization
from lightning_rnn.nn import LockedDropout


class MyLM(TBPTTModule):
    def __init__(self, vocab: int = 100, hidden: int = 64):
        super().__init__(tbptt_steps=35, carry_state=True)
        self.embed = nn.Embedding(vocab, hidden)
        self.rnn = nn.LSTM(hidden, hidden, batch_first=True)
        self.drop = LockedDropout(0.4)
        self.head = nn.Linear(hidden, vocab)

    def tbptt_step(self, chunk, state):
        x, y = chunk  # (N, L), (N, L)
        raw, state = self.rnn(self.embed(x), state)  # (N, L, H), before output dropout
        out = self.drop(raw)  # after it
        loss = nn.functional.cross_entropy(self.head(out).flatten(0, 1), y.flatten(), ignore_index=-100)
        mask = y != -100  # padding steps count in neither penalty
        ar = activation_regularization(out, 2.0, mask)  # 2 * mean(out ** 2)
        tar = temporal_activation_regularization(raw, 1.0, mask)  # 1 * mean((h_t - h_(t-1)) ** 2)
        return TBPTTStep(loss, state, penalty=ar + tar, metrics={"ar": ar.detach(), "tar": tar.detach()})

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)
'''

#: the snippet shrunk to seconds: (text in the snippet, replacement)
SHRINK = [
    ("batch_size=20, eval_batch_size=10,\n                            bptt=280", "batch_size=4, eval_batch_size=4, bptt=24"),
    ("embedding_dim=200", "embedding_dim=8"),
    ("hidden_size=200, num_layers=3", "hidden_size=8, num_layers=2"),
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
    doc = ROOT / "docs" / "guides" / "awd_lstm.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)
    assert SNIPPET in blocks and CUSTOM_SNIPPET in blocks


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
        "--model.init_args.embedding_dim=8", "--model.init_args.encoder.hidden_size=8", "--model.init_args.encoder.num_layers=2",
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
    assert hp.embedding_dropout > 0
    for name in ("input_dropout", "layer_dropout", "output_dropout", "recurrent_dropout"):
        assert hp.encoder[name] > 0, name
    nt = [cb for cb in trainer.callbacks if type(cb).__name__ == "NTASGD"]
    assert len(nt) == 1 and nt[0].n == 5 and len(nt[0].history) == 3  # one evaluation per epoch
    assert {"train/ar", "train/tar", "val/loss"} <= set(trainer.callback_metrics)
    best = Path(trainer.checkpoint_callback.best_model_path)
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    assert ckpt["callbacks"]["NTASGD"]["history"]
    assert "validation bits per token (best checkpoint)" in capsys.readouterr().out


def test_custom_module_snippet_trains_with_the_penalty() -> None:
    namespace: dict = {}
    exec(compile(CUSTOM_SNIPPET, "awd_custom_snippet", "exec"), namespace)
    model = namespace["MyLM"](vocab=12, hidden=8)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 12, (2, 40), generator=g), torch.randint(0, 12, (2, 40), generator=g))]
    trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit(model, torch.utils.data.DataLoader(batches, batch_size=None))
    assert trainer.global_step == 2  # chunks of 35 + 5
    assert float(trainer.callback_metrics["train/ar"]) > 0 and float(trainer.callback_metrics["train/tar"]) > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


@pytest.mark.usefixtures("cli_env")
def test_config_print_config_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIG), "--print_config"])
    printed = capsys.readouterr().out
    cfg = yaml.safe_load(printed)
    assert cfg["model"]["init_args"]["ar_alpha"] == 2.0 and "vocab_size" not in cfg["model"]["init_args"]
    assert any(cb["class_path"] == "lightning_rnn.callbacks.NTASGD" for cb in cfg["trainer"]["callbacks"])
    saved = tmp_path / "saved.yaml"
    saved.write_text(printed)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(saved), "--print_config"])
    assert capsys.readouterr().out == printed
