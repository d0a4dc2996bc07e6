"""Small TBPTT modules shared by the engine tests (plain torch.nn recurrent layers)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_rnn import TBPTTModule, TBPTTStep


class SeqRegressor(TBPTTModule):
    """x (N, L, F) -> y (N, L, 1) with an nn.LSTM; SGD so updates are easy to reproduce by hand."""

    def __init__(self, lr: float = 0.1, hidden: int = 8, features: int = 3, record: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.lstm = nn.LSTM(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)
        self.lr = lr
        self.record = record
        self.seen_states: list[Any] = []
        self.chunk_lengths: list[int] = []

    def forward(self, x, state=None):
        out, state = self.lstm(x, state)
        return self.head(out), state

    def tbptt_step(self, chunk, state):
        x, y = chunk
        if self.record and self.training:
            self.seen_states.append(state)
            self.chunk_lengths.append(x.shape[1])
        pred, state = self(x, state)
        return TBPTTStep(F.mse_loss(pred, y), state)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class TensorPairs(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def make_data(n: int = 4, length: int = 20, features: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, length, features, generator=g)
    y = x.cumsum(1)[..., :1] * 0.1
    return x, y


def loader(x, y, batch_size: int) -> DataLoader:
    return DataLoader(TensorPairs(x, y), batch_size=batch_size, shuffle=False)


def trainer(**kwargs: Any) -> pl.Trainer:
    defaults: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)
