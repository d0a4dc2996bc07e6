"""Exact resume: a run stopped mid-epoch and resumed from its step-k checkpoint continues like the
uninterrupted run (same batches, same carried state, same RNG, same callback state: AdaptiveGradientClipping's
gradient-norm history): per-batch losses and
final parameters equal on CPU to float tolerance. Every shipped module with its data module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from lightning_rnn import RNNClassifier, RNNConfig, RNNLanguageModel, RNNTagger, Seq2SeqAttention
from lightning_rnn.callbacks import AdaptiveGradientClipping
from lightning_rnn.checkpoint_io import SafeCheckpointIO
from lightning_rnn.data import (
    BitStreamTaggingDataModule,
    ReversalDataModule,
    TextClassificationDataModule,
    TextStreamDataModule,
)


class Record(Callback):
    """Per-batch training loss by global step; saves a checkpoint after batch ``save_at`` (0-based count)."""

    def __init__(self, save_at: int | None = None, path: Path | None = None) -> None:
        self.losses: dict[int, float] = {}
        self.save_at, self.path, self.seen = save_at, path, 0

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses[trainer.global_step] = float(loss)
        self.seen += 1
        if self.save_at is not None and self.seen == self.save_at:
            trainer.save_checkpoint(self.path)


def _text(tmp: Path) -> Path:
    import inspect
    import json.decoder
    import json.encoder

    path = tmp / "corpus.txt"
    path.write_text(inspect.getsource(json.decoder) + inspect.getsource(json.encoder), encoding="utf-8")
    return path


def _case(name: str, tmp: Path) -> tuple[Any, Any]:
    """(model, data module), tiny, with dropout (so the RNG matters) and several epochs of few batches."""
    if name == "tagger":
        dm = BitStreamTaggingDataModule("delay", length=24, delay=3, num_train=24, num_val=8, num_test=8,
                                        batch_size=8, seed=3)
        model = RNNTagger(encoder=RNNConfig(hidden_size=8, input_dropout=0.2, output_dropout=0.2), num_classes=2, vocab_size=2, embedding_dim=4, tbptt_steps=7, lr=0.01)
    elif name == "classifier":
        dm = TextClassificationDataModule(packages=["json", "email"], samples_per_class=16, max_length=30,
                                          batch_size=8)
        model = RNNClassifier(encoder=RNNConfig(hidden_size=8, input_dropout=0.2), vocab_size=dm.vocab_size, num_classes=dm.num_classes, embedding_dim=8, dropout=0.2, lr=0.01)
    elif name == "seq2seq":
        dm = ReversalDataModule(num_train=40, num_val=8, num_test=8, num_symbols=6, train_max_len=6,
                                test_max_len=6, batch_size=8)
        model = Seq2SeqAttention(encoder=RNNConfig(bidirectional=True, hidden_size=8, input_dropout=0.2), src_vocab=dm.src_vocab_size, tgt_vocab=dm.tgt_vocab_size, embedding_dim=8, decoder_hidden_size=8, lr=0.01)
    else:  # language model on a text stream, state carried across batches
        dm = TextStreamDataModule(source=str(_text(tmp)), batch_size=4, bptt=12, val_fraction=0.1,
                                  test_fraction=0.0)
        model = RNNLanguageModel(encoder=RNNConfig(hidden_size=8, input_dropout=0.2, output_dropout=0.2), vocab_size=dm.vocab_size, embedding_dim=8, tbptt_steps=5, carry_state=True, lr=0.01)
    return model, dm


def _trainer(max_steps: int, callbacks: list, tmp: Path) -> Trainer:
    # a stateful callback whose state steers training: the clip threshold comes from the gradient-norm history
    clip = AdaptiveGradientClipping(mode="quantile", quantile=0.5, window=50)
    return Trainer(max_steps=max_steps, callbacks=[*callbacks, clip], logger=False, enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                   val_check_interval=2, check_val_every_n_epoch=None, limit_val_batches=1,
                   plugins=[SafeCheckpointIO()], default_root_dir=tmp, accelerator="cpu", devices=1)


@pytest.mark.parametrize("name", [
    "tagger",
    pytest.param("classifier", marks=pytest.mark.slow),
    pytest.param("seq2seq", marks=pytest.mark.slow),
    "lm",
])
def test_resume_mid_epoch_equals_uninterrupted_run(name: str, tmp_path: Path) -> None:
    ckpt = tmp_path / "mid.ckpt"
    seed_everything(0)
    model, dm = _case(name, tmp_path)
    full = Record(save_at=5, path=ckpt)  # batch 5: mid-epoch of the second epoch for most cases
    max_steps = 3 * 5 * 2 + 1 if name in ("tagger", "lm") else 14
    _trainer(max_steps, [full], tmp_path).fit(model, dm)
    saved_step = torch.load(ckpt, weights_only=True)["global_step"]
    assert 0 < saved_step < max(full.losses), "the checkpoint must be in the middle of the run"

    seed_everything(123)  # a different process state: everything must come from the checkpoint
    resumed_model, dm2 = _case(name, tmp_path)
    resumed = Record()
    _trainer(max_steps, [resumed], tmp_path).fit(resumed_model, dm2, ckpt_path=ckpt)

    assert_resumed_like_uninterrupted(full, resumed, saved_step, model, resumed_model)


def assert_resumed_like_uninterrupted(full: Record, resumed: Record, saved_step: int, model: Any,
                                      resumed_model: Any) -> None:
    """The losses after ``saved_step`` and the final parameters equal the uninterrupted run's (float tolerance)."""
    after = {s: v for s, v in full.losses.items() if s > saved_step}
    assert after and resumed.losses.keys() == after.keys()
    for step in after:
        assert resumed.losses[step] == pytest.approx(after[step], rel=1e-5, abs=1e-6), step
    for (key, a), b in zip(model.state_dict().items(), resumed_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=key)


def test_load_from_checkpoint_leaves_the_rng_alone(tmp_path: Path) -> None:
    """Loading for inference draws only what building the model draws (weight init), never sets the RNG
    from the checkpoint (issue: load_from_checkpoint used to call torch.set_rng_state)."""
    seed_everything(0)
    model, dm = _case("tagger", tmp_path)
    ckpt = tmp_path / "a.ckpt"
    _trainer(3, [Record(save_at=1, path=ckpt)], tmp_path).fit(model, dm)
    saved = torch.load(ckpt, weights_only=True)["callbacks"]["ExactResume"]["rng"]["torch"]
    torch.manual_seed(7)
    RNNTagger(**torch.load(ckpt, weights_only=True)["hyper_parameters"])
    expected = torch.get_rng_state()
    torch.manual_seed(7)
    RNNTagger.load_from_checkpoint(ckpt, weights_only=True)
    assert torch.equal(torch.get_rng_state(), expected) and not torch.equal(expected, saved)
