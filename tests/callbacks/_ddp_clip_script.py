"""2-process CPU DDP run for tests/callbacks/test_adaptive_clipping.py (not collected by pytest).

Usage: python _ddp_clip_script.py OUT_DIR STEPS. Lightning's DDP launcher re-runs this script once per extra
rank; every rank writes OUT_DIR/rank{r}.json with its per-step norms/thresholds and its final parameters.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_rnn.callbacks import AdaptiveGradientClipping


class Model(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(3, 8, batch_first=True)
        self.head = nn.Linear(8, 1)
        self.local_loss: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        h, _ = self.rnn(x)  # (N, L, H)
        loss = ((self.head(h[:, -1]) - y) ** 2).mean() * 30.0
        self.local_loss.append(float(loss))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Record(pl.Callback):
    def __init__(self, clip: AdaptiveGradientClipping) -> None:
        self.clip = clip
        self.rows: dict[str, list] = {"thresholds": [], "norms": [], "clipped": []}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.rows["thresholds"].append(self.clip.last_threshold)
        self.rows["norms"].append(self.clip.last_norm)
        self.rows["clipped"].append(self.clip.last_clipped)


def main(out_dir: str, steps: int) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    n = 2 * 8 * steps
    x = torch.randn(n, 6, 3, generator=g)  # (N, L, 3)
    y = torch.randn(n, 1, generator=g) * 3
    clip = AdaptiveGradientClipping("quantile", quantile=0.5)
    record = Record(clip)
    model = Model()
    trainer = pl.Trainer(
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        max_epochs=1,
        callbacks=[clip, record],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=8))
    rank = trainer.global_rank
    result = dict(record.rows)
    result["params"] = [p.detach().reshape(-1).tolist() for p in model.parameters()]
    result["state"] = clip.state_dict()
    result["local_loss"] = model.local_loss
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
