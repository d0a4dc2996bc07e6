"""2-process CPU DDP run for tests/callbacks/test_nt_asgd.py (not collected by pytest).

Usage: python _ddp_nt_asgd_script.py OUT_DIR. Each rank logs its own, unsynchronised ``val/rank_score``: rank 0's
triggers NT-ASGD after epoch 3, rank 1's never would. Every rank writes OUT_DIR/rank{r}.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

from lightning_rnn import RNNConfig, RNNLanguageModel
from lightning_rnn.callbacks import NTASGD
from lightning_rnn.data import TextStreamDataModule

SCORES = {0: [5.0, 4.0, 4.5, 4.6, 4.7, 4.8], 1: [5.0, 4.0, 3.0, 2.0, 1.0, 0.5]}


class RankScoredLM(RNNLanguageModel):
    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self.log("val/rank_score", SCORES[self.global_rank][self.current_epoch], sync_dist=False)


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    text = "the quick brown fox jumps over the lazy dog; " * 40
    dm = TextStreamDataModule(text, batch_size=2, bptt=16, val_fraction=0.2, test_fraction=0.0)
    model = RankScoredLM(dm.vocab_size, 8, RNNConfig(hidden_size=8), tbptt_steps=8, optimizer="sgd", lr=0.5)
    cb = NTASGD(n=1, monitor="val/rank_score")
    trainer = pl.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=6, callbacks=[cb], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    trainer.fit(model, dm)
    result = {
        "rank": trainer.global_rank,
        "switch_step": cb.switch_step,
        "n_averaged": cb.n_averaged,
        "global_step": trainer.global_step,
        "history": cb.history,
        "average": [p.reshape(-1).tolist() for p in cb.averaged_parameters()],
        "params": [p.detach().reshape(-1).tolist() for p in model.parameters()],
    }
    (Path(out_dir) / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
