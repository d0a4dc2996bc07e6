
"""Trains a TBPTT model under Trainer(strategy="ddp", accelerator="cpu") or in one process; saves the result.

Usage: python ddp_tbptt_script.py {regressor|lm|lm_adaptive|classifier|tagger} DEVICES OUT_DIR [SOURCE_FILE]
Each rank writes OUT_DIR/rank<r>.pt with its final parameters, the rows of every batch it saw and its
global_step. Collectives time out after 60 s, so a desync between ranks fails the run instead of hanging it.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import lightning.pytorch as pl
import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))


class Recorder(pl.Callback):
    def __init__(self) -> None:
        self.batches: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        first = batch["inputs"] if isinstance(batch, dict) else batch[0]
        self.batches.append(first.detach().clone())


def _labelled(kind: str, devices: int, rank: int):
    """Two global batches of 6 variable-length rows; rank r of `devices` owns a contiguous block of each and
    pads it to its own longest row (the single process pads to the global longest)."""
    from lightning_rnn.data import pad_collate

    g = torch.Generator().manual_seed(0)
    lengths = [[2, 9, 4, 3, 7, 5], [8, 3, 6, 2, 4, 10]]
    per = 6 // devices
    batches = []
    for ls in lengths:
        items = []
        for n in ls:
            seq = torch.randint(1, 7, (n,), generator=g)
            label = torch.randint(0, 3, (n,), generator=g) if kind == "tagger" else torch.randint(0, 3, (), generator=g)
            items.append((seq, label))
        batches.append(pad_collate(items[rank * per : (rank + 1) * per]))
    return torch.utils.data.DataLoader(batches, batch_size=None)


def main() -> None:
    kind, devices, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    pl.seed_everything(0, workers=True)
    recorder = Recorder()
    if devices > 1:
        from lightning.pytorch.strategies import DDPStrategy

        strategy: object = DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=60))
    else:
        strategy = "auto"
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
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
    elif kind in ("classifier", "tagger"):
        from lightning_rnn import RNNClassifier, RNNConfig, RNNTagger

        cls = RNNClassifier if kind == "classifier" else RNNTagger
        model = cls(3, vocab_size=7, embedding_dim=4, encoder=RNNConfig(hidden_size=6), tbptt_steps=3, optimizer="sgd",
                    lr=0.5)
        data = {"train_dataloaders": _labelled(kind, devices, rank)}
    else:
        from lightning_rnn import RNNConfig, RNNLanguageModel
        from lightning_rnn.data import TextStreamDataModule

        dm = TextStreamDataModule(sys.argv[4], batch_size=4 // devices, bptt=12, val_fraction=0.1, test_fraction=0.0)
        if kind == "lm_adaptive":  # tail clusters go unused in some chunks: plain "ddp" must still work
            model = RNNLanguageModel(40, 16, encoder=RNNConfig(hidden_size=24), tbptt_steps=6, optimizer="sgd", lr=0.5, output="adaptive", adaptive_cutoffs=[4, 10])
        else:
            model = RNNLanguageModel(40, 16, encoder=RNNConfig(hidden_size=24), tbptt_steps=6, optimizer="sgd", lr=0.5)
        data = {"datamodule": dm}
    trainer.fit(model, **data)
    os.makedirs(out, exist_ok=True)
    torch.save(
        {
            "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "batches": recorder.batches,
            "global_step": trainer.global_step,
        },
        os.path.join(out, f"rank{trainer.global_rank}.pt"),
    )


if __name__ == "__main__":
    main()
