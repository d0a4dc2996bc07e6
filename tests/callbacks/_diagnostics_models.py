"""Small models with a gradient_flow_probe, for the diagnostics and AdaptiveTBPTT callback tests."""

from __future__ import annotations

import tempfile
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_rnn import TBPTTModule, TBPTTStep


class TinyLSTMLM(pl.LightningModule):
    """Embedding -> nn.LSTM (with inter-layer dropout) -> Linear; records its training losses.

    ``gradient_flow_probe`` unrolls the same nn.LSTM on length-1 slices and computes the losses from the
    returned states (top layer's h), as the protocol asks; with ``probe_uses_rng`` it also draws random
    numbers, to check that the monitor forks the RNG.
    """

    def __init__(self, vocab: int = 12, hidden: int = 10, layers: int = 2, dropout: float = 0.3,
                 probe_uses_rng: bool = True) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 6)
        self.lstm = nn.LSTM(6, hidden, layers, batch_first=True, dropout=dropout)
        self.head = nn.Linear(hidden, vocab)
        self.probe_uses_rng = probe_uses_rng
        self.losses: list[float] = []
        self.probe_modes: list[tuple[bool, float]] = []  # (training, LSTM dropout) seen by each probe

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out, _ = self.lstm(self.emb(x))
        loss = F.cross_entropy(self.head(out).flatten(0, 1), y.flatten())
        self.losses.append(loss.item())
        self.log("train_loss", loss)
        return loss

    def gradient_flow_probe(self, batch: Any, max_steps: int | None = None):
        x, y = batch
        if max_steps is not None:
            x, y = x[:, :max_steps], y[:, :max_steps]
        self.probe_modes.append((self.training, self.lstm.dropout))
        e = self.emb(x)  # (N, L, E)
        if self.probe_uses_rng:
            e = e + 0.0 * torch.rand_like(e)
        state, states = None, []
        for t in range(x.shape[1]):
            _, state = self.lstm(e[:, t : t + 1], state)  # ((layers, N, H), (layers, N, H))
            states.append(state)
        top = torch.stack([s[0][-1] for s in states], 1)  # (N, L, H)
        losses = F.cross_entropy(self.head(top).transpose(1, 2), y, reduction="none")  # (N, L)
        return states, losses

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def token_loader(n: int = 8, length: int = 12, vocab: int = 12, batch_size: int = 4, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (n, length + 1), generator=g)
    return DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def quiet_trainer(**kwargs: Any) -> pl.Trainer:
    defaults = dict(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
                    enable_checkpointing=False, logger=False, log_every_n_steps=1,
                    default_root_dir=tempfile.mkdtemp(prefix="lrnn-diag-"))  # never the repository
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


class FixedMemoryRNN(TBPTTModule):
    """h_t = act(W h_{t-1} + U x_t), W fixed (a buffer) with a chosen spectral norm; y_t regressed from h_t.

    ``act="tanh"`` with ‖W‖ = 0.3: every Jacobian has norm <= 0.3, gradients die within a few steps.
    ``act="linear"`` with W orthogonal: every Jacobian is orthogonal, G(k) is flat, memory is unbounded.
    """

    def __init__(self, act: str, norm: float, hidden: int = 8, features: int = 3, lr: float = 0.01,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        g = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(hidden, hidden, generator=g))
        self.register_buffer("w", q * norm)  # all singular values = norm
        self.inp = nn.Linear(features, hidden)
        self.head = nn.Linear(hidden, 1)
        self.act = torch.tanh if act == "tanh" else (lambda z: z)
        self.lr = lr
        self.hidden = hidden

    def _steps(self, x: torch.Tensor, h: torch.Tensor | None) -> list[torch.Tensor]:
        h = x.new_zeros(x.shape[0], self.hidden) if h is None else h
        u = self.inp(x)  # (N, L, H)
        states = []
        for t in range(x.shape[1]):
            h = self.act(h @ self.w.T + u[:, t])  # (N, H)
            states.append(h)
        return states

    def tbptt_step(self, chunk: Any, state: Any) -> TBPTTStep:
        x, y = chunk
        states = self._steps(x, state)
        pred = self.head(torch.stack(states, 1))  # (N, L, 1)
        return TBPTTStep(F.mse_loss(pred, y), states[-1])

    def gradient_flow_probe(self, batch: Any, max_steps: int | None = None):
        x, y = batch
        if max_steps is not None:
            x, y = x[:, :max_steps], y[:, :max_steps]
        states = self._steps(x, None)
        pred = self.head(torch.stack(states, 1))  # (N, L, 1)
        return states, (pred - y).pow(2).squeeze(-1)  # (N, L)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)
