"""Trains a TBPTT model under Trainer(strategy="ddp", accelerator="cpu") or in one process; saves the result.

Usage: python ddp_tbptt_script.py {regressor|lm} DEVICES OUT_DIR [SOURCE_FILE]
Each rank writes OUT_DIR/rank<r>.pt with its final parameters and the rows of every batch it saw.
"""

from __future__ import annotations

import os
import sys

import lightning.pytorch as pl
import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))


class Recorder(pl.Callback):
    def __init__(self) -> None:
        self.batches: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        first = batch["inputs"] if isinstance(batch, dict) else batch[0]
        self.batches.append(first.detach().clone())


def main() -> None:
    kind, devices, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    pl.seed_everything(0, workers=True)
    recorder = Recorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_epochs=1,
        limit_train_batches=6,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[recorder],
    )
    rank = trainer.global_rank
    if kind == "regressor":
        from tests.modules._tbptt_models import SeqRegressor, TensorPairs, make_data

        model = SeqRegressor(tbptt_steps=5)
        x, y = make_data(n=8, length=20)
        # global batches of 4 rows; rank r of `devices` owns a contiguous block of each global batch
        per = 4 // devices
        rows = [i for b in range(2) for i in range(4 * b + rank * per, 4 * b + (rank + 1) * per)]
        data = {"train_dataloaders": torch.utils.data.DataLoader(TensorPairs(x[rows], y[rows]), batch_size=per)}
    else:
        from lightning_rnn import RNNLanguageModel
        from lightning_rnn.data import TextStreamDataModule

        dm = TextStreamDataModule(sys.argv[4], batch_size=4 // devices, bptt=12, val_fraction=0.1, test_fraction=0.0)
        model = RNNLanguageModel(40, 16, 24, tbptt_steps=6, optimizer="sgd", lr=0.5)
        data = {"datamodule": dm}
    trainer.fit(model, **data)
    os.makedirs(out, exist_ok=True)
    torch.save(
        {"params": {k: v.detach().clone() for k, v in model.state_dict().items()}, "batches": recorder.batches},
        os.path.join(out, f"rank{trainer.global_rank}.pt"),
    )


if __name__ == "__main__":
    main()
