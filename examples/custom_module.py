"""Your own model on the TBPTT engine: the template for "use it in your project".

A many-to-many regression on a generated time series. Every series is a noisy sum of three sines with
random frequencies and phases; at every step the model sees the noisy value and predicts the *clean*
value ``horizon`` steps ahead. Series are long (T = 600 by default) and trained with truncated BPTT
(chunks of 50 steps, state carried and detached between them, one optimizer step per chunk), with
step-tied dropout on the recurrent stack and lightning-rnn's three callbacks:

- ``SpectralNormMonitor``: the largest singular value of each recurrent gate block, logged over training;
- ``GradientFlowMonitor``: how much gradient survives k steps back (per-lag norms, heatmap PNG);
- ``AdaptiveGradientClipping``: AutoClip-style clipping threshold chosen from the gradient-norm history.

What you write for your own model is the ``SineForecaster`` class: ``tbptt_step`` (one chunk in, loss and
state out), ``configure_optimizers`` and, for ``GradientFlowMonitor``, ``gradient_flow_probe`` (the same
network unrolled step by step, which ``RNNStack.forward_steps`` does for you).

Run::

    python examples/custom_module.py                 # ~25 s on 2 idle CPU cores, saves docs/custom_module.png
    python examples/custom_module.py --quick         # seconds (smoke test)
    python examples/custom_module.py --logger csv    # CSV instead of W&B (offline)
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_rnn import TBPTTModule, TBPTTStep
from lightning_rnn.callbacks import AdaptiveGradientClipping, GradientFlowMonitor, SpectralNormMonitor
from lightning_rnn.nn import RNNStack


def make_series(n: int, length: int, horizon: int, noise: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """n noisy series (n, L, 1) and their clean values ``horizon`` steps ahead (n, L, 1)."""
    t = torch.arange(length + horizon, dtype=torch.float32)  # (L + h,)
    freq = torch.empty(n, 3, 1).uniform_(0.02, 0.12, generator=generator)  # (n, 3, 1) cycles per step
    phase = torch.empty(n, 3, 1).uniform_(0, 2 * math.pi, generator=generator)
    amp = torch.empty(n, 3, 1).uniform_(0.3, 1.0, generator=generator)
    clean = (amp * torch.sin(2 * math.pi * freq * t + phase)).sum(1)  # (n, L + h)
    noisy = clean[:, :length] + noise * torch.randn(n, length, generator=generator)
    return noisy.unsqueeze(-1), clean[:, horizon:].unsqueeze(-1)


class SineData(LightningDataModule):
    """Generated train/validation series; each batch is ``(x, y)`` of shape (N, L, 1)."""

    def __init__(self, n_train: int = 512, n_val: int = 128, length: int = 600, horizon: int = 5,
                 noise: float = 0.3, batch_size: int = 32, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.train_set = TensorDataset(*make_series(n_train, length, horizon, noise, g))
        self.val_set = TensorDataset(*make_series(n_val, length, horizon, noise, g))
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


class SineForecaster(TBPTTModule):
    """Many-to-many regression: an LSTM reads the noisy series and predicts the clean value ahead."""

    def __init__(self, hidden_size: int = 64, num_layers: int = 1, tbptt_steps: int = 50,
                 recurrent_dropout: float = 0.1, lr: float = 3e-3) -> None:
        super().__init__(tbptt_steps=tbptt_steps)  # chunks of 50 steps, state carried and detached
        self.save_hyperparameters()
        self.rnn = RNNStack("lstm", 1, hidden_size, num_layers, recurrent_dropout=recurrent_dropout)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """Inputs: x (N, L, 1), optional state. Outputs: predictions (N, L, 1), state."""
        out, state = self.rnn(x, state)  # (N, L, H)
        return self.head(out), state  # (N, L, 1)

    def tbptt_step(self, chunk: Any, state: Any) -> TBPTTStep:
        x, y = chunk  # (N, k, 1), (N, k, 1): the batch sliced along time
        pred, state = self(x, state)  # state arrives detached from the previous chunk
        return TBPTTStep(loss=nn.functional.mse_loss(pred, y), state=state)

    def gradient_flow_probe(self, batch: Any, max_steps: int | None = None) -> tuple[list[Any], Tensor]:
        """Per-step states and per-step losses (N, L) for GradientFlowMonitor (same parameters, unrolled)."""
        x, y = batch
        if max_steps is not None:
            x, y = x[:, :max_steps], y[:, :max_steps]
        _, step_states = self.rnn.forward_steps(x)  # L states, each (h, c) of shape (layers, N, H)
        # the loss at t must be computed from step_states[t] itself: read the top layer's h from it
        h_top = torch.stack([h[-1] for h, _ in step_states], dim=1)  # (N, L, H)
        losses = (self.head(h_top) - y).pow(2).mean(-1)  # (N, L)
        return step_states, losses

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def naive_mse(data: SineData) -> float:
    """MSE of predicting the current noisy value (what a model without memory can do at best-ish)."""
    x, y = data.val_set.tensors
    return float(nn.functional.mse_loss(x, y))


class History(Callback):
    """Keeps what the two monitors measured, for the figure (W&B / CSV get the same numbers as metrics)."""

    def __init__(self, spectral: SpectralNormMonitor, clip: AdaptiveGradientClipping) -> None:
        self.spectral, self.clip = spectral, clip
        self.sigma: dict[str, list[tuple[int, float]]] = {}
        self.clip_rows: list[tuple[int, float, float | None]] = []  # (step, pre-clip norm, threshold)
        self._seen: object = None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        last = getattr(self.spectral, "last", None)
        if last is not None and last is not self._seen:  # a new measurement this batch
            self._seen = last
            for block in last:
                self.sigma.setdefault(f"{block.layer}.{block.block}", []).append((trainer.global_step, block.sigma))

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if self.clip.last_norm is not None:  # runs after the clipping callback (listed after it)
            self.clip_rows.append((trainer.global_step, self.clip.last_norm, self.clip.last_threshold))


def save_figure(model: SineForecaster, data: SineData, history: History, path: Path, mse: float,
                baseline: float) -> None:
    from matplotlib.figure import Figure  # no pyplot, no global backend change

    x, y = data.val_set.tensors
    model.eval()
    with torch.no_grad():
        pred, _ = model(x[:1])
    n = min(300, x.shape[1])
    fig = Figure(figsize=(15, 3.2), dpi=100)
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [2, 1, 1]})
    ax = axes[0]
    ax.plot(x[0, :n, 0], lw=0.8, color="0.7", label="input (noisy)")
    ax.plot(y[0, :n, 0], lw=1.5, color="k", label="target (clean, 5 steps ahead)")
    ax.plot(pred[0, :n, 0], lw=1.2, color="C3", label="LSTM prediction")
    ax.set_xlabel("time step")
    ax.set_title(f"custom TBPTTModule: validation MSE {mse:.3f} (naive {baseline:.3f})", fontsize=10)
    ax.legend(fontsize=7, loc="upper right", ncol=3)
    ax = axes[1]
    for key, rows in sorted(history.sigma.items()):
        ax.plot([r[0] for r in rows], [r[1] for r in rows], lw=1.2, label=key)
    ax.set_xlabel("optimizer step")
    ax.set_title("SpectralNormMonitor: σ_max of W_hh per gate", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    ax = axes[2]
    steps = [r[0] for r in history.clip_rows]
    ax.plot(steps, [r[1] for r in history.clip_rows], lw=0.6, color="0.6", label="pre-clip ‖g‖")
    ax.plot(steps, [r[2] if r[2] is not None else float("nan") for r in history.clip_rows], lw=1.2, color="C0",
            label="threshold")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_title("AdaptiveGradientClipping (quantile 0.9)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds: tiny data, few steps, no figure")
    parser.add_argument("--max_steps", type=int, default=None, help="optimizer steps (chunks); default 1200")
    parser.add_argument("--logger", choices=["wandb", "csv"], default="wandb")
    parser.add_argument("--save_dir", default="runs", help="where the run (W&B offline / CSV) is written")
    parser.add_argument("--figure", default="docs/custom_module.png", help="PNG to write ('' for none)")
    args = parser.parse_args(argv)
    seed_everything(0, verbose=False)

    if args.quick:
        data = SineData(n_train=32, n_val=16, length=120, batch_size=16)
        max_steps, every = args.max_steps or 12, 4
    else:
        data = SineData()
        max_steps, every = args.max_steps or 1200, 100
    model = SineForecaster()
    if args.logger == "wandb":
        os.makedirs(args.save_dir, exist_ok=True)
        logger: Any = WandbLogger(project="lightning-rnn", name="custom_module", save_dir=args.save_dir, offline=True)
    else:
        logger = CSVLogger(args.save_dir, name="custom_module")
    spectral = SpectralNormMonitor(every_n_steps=every // 4 or 1)
    clip = AdaptiveGradientClipping(mode="quantile", quantile=0.9)
    history = History(spectral, clip)
    trainer = Trainer(
        max_steps=max_steps,
        val_check_interval=1.0,
        logger=logger,
        log_every_n_steps=10,
        enable_checkpointing=False,
        enable_progress_bar=not args.quick,
        enable_model_summary=False,
        callbacks=[
            spectral,
            GradientFlowMonitor(every_n_steps=every, max_lag=40, num_targets=4),
            clip,
            history,  # after `clip`: reads the norm/threshold it just used
        ],
    )
    trainer.fit(model, datamodule=data)
    trainer.validate(model, datamodule=data, verbose=False)
    mse = float(trainer.callback_metrics["val/loss"])
    baseline = naive_mse(data)
    print(f"validation MSE {mse:.4f}   naive baseline (current noisy value) {baseline:.4f}   "
          f"ratio {mse / baseline:.3f}")
    print(f"run written under {Path(trainer.log_dir or args.save_dir).resolve()}")
    if args.figure and not args.quick:
        save_figure(model, data, history, Path(args.figure), mse, baseline)
        print(f"figure: {args.figure}")
    if args.logger == "wandb":
        import wandb

        wandb.finish()
    return {"val_mse": mse, "baseline_mse": baseline}


if __name__ == "__main__":
    main()
