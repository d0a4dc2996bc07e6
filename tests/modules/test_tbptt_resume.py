"""Checkpoint and resume: a resumed TBPTT run continues exactly like an uninterrupted one."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from lightning_rnn import RNNConfig, RNNLanguageModel

from ._tbptt_models import trainer


class LossRecorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def _stream(seed: int = 0, batches: int = 3, rows: int = 3, length: int = 24):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 20, (rows, batches * length + 1), generator=g)
    return [
        (tokens[:, i * length : (i + 1) * length], tokens[:, i * length + 1 : (i + 1) * length + 1])
        for i in range(batches)
    ]


def _model() -> RNNLanguageModel:
    torch.manual_seed(0)
    # dropout and variable-length BPTT both draw random numbers: resume must restore those streams too
    return RNNLanguageModel(20, 8, encoder=RNNConfig(hidden_size=16, input_dropout=0.2, recurrent_dropout=0.2), tbptt_steps=6, variable_bptt=True, lr=0.01)


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path):
    data = torch.utils.data.DataLoader(_stream(), batch_size=None)

    full_rec = LossRecorder()
    full = _model()
    torch.manual_seed(1)
    t_full = trainer(max_epochs=2, callbacks=[full_rec])
    t_full.fit(full, data)

    first_rec = LossRecorder()
    part = _model()
    torch.manual_seed(1)
    t1 = trainer(max_epochs=1, callbacks=[first_rec])
    t1.fit(part, data)
    ckpt = tmp_path / "epoch1.ckpt"
    t1.save_checkpoint(ckpt)

    torch.manual_seed(123)  # a different process state; the checkpoint must restore what matters
    resumed = _model()
    second_rec = LossRecorder()
    t2 = trainer(max_epochs=2, callbacks=[second_rec])
    t2.fit(resumed, data, ckpt_path=ckpt)

    assert len(full_rec.losses) == 6
    assert first_rec.losses + second_rec.losses == full_rec.losses
    assert t2.global_step == t_full.global_step
    for (name, p), (_, q) in zip(full.named_parameters(), resumed.named_parameters()):
        torch.testing.assert_close(p, q, msg=f"parameter {name} differs after resume")

