"""The adding problem: why a tanh RNN cannot learn long-term dependencies and an LSTM / GRU can.

Each input is a sequence of T pairs (value ~ U(0, 1), marker in {0, 1}); exactly two markers are 1, one in
each half of the sequence. The target, read at the last step, is the sum of the two marked values
(Hochreiter & Schmidhuber 1997; Le et al. 2015). Predicting the mean, 1.0, gives MSE = Var(U1 + U2) =
1/6 ≈ 0.167: a model that cannot carry information across ~T/2 steps stays at that baseline.

For each T in (50, 100, 200) a tanh RNN, a GRU and an LSTM (same hidden size, optimizer and clipping) are
trained with full backpropagation through time (a ``TBPTTModule`` with ``tbptt_steps=None``: the target
is at the end). ``GradientFlowMonitor`` probes ‖∂L_T/∂h_{T−k}‖ during training: the tanh RNN's gradient
dies within a few steps (its *gradient horizon*), so the first marker, ~T/2 steps back, gets no signal.
The figure ``docs/adding_problem.png`` shows the validation MSE of every run against the 0.167 baseline
and the per-lag gradient norms of each cell at the end of training.

Run::

    python examples/adding_problem.py              # a few minutes on 2 CPU cores; writes docs/adding_problem.png
    python examples/adding_problem.py --quick      # seconds (smoke test), no figure
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

from lightning_rnn import TBPTTModule, TBPTTStep
from lightning_rnn.callbacks import GradientFlowMonitor
from lightning_rnn.nn import RNNStack

BASELINE_MSE = 1 / 6  # Var(U1 + U2) for U ~ U(0, 1): the MSE of always predicting 1.0
CELLS = ("rnn", "gru", "lstm")


def adding_batch(n: int, length: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """n adding-problem sequences: inputs (n, T, 2) and targets (n,)."""
    values = torch.rand(n, length, generator=generator)  # (n, T)
    half = length // 2
    first = torch.randint(0, half, (n,), generator=generator)
    second = torch.randint(half, length, (n,), generator=generator)
    markers = torch.zeros(n, length)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    target = values[rows, first] + values[rows, second]  # (n,)
    return torch.stack([values, markers], dim=-1), target


class AddingStream(IterableDataset):
    """An endless stream of fresh batches (batch_size=None in the DataLoader)."""

    def __init__(self, length: int, batch_size: int, seed: int) -> None:
        self.length, self.batch_size, self.seed = length, batch_size, seed

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        while True:
            yield adding_batch(self.batch_size, self.length, g)


class AddingModel(TBPTTModule):
    """One recurrent layer reads the whole sequence; a linear head reads the last state."""

    def __init__(self, cell: str = "lstm", hidden_size: int = 64, lr: float = 3e-3, clip: float = 1.0) -> None:
        super().__init__(tbptt_steps=None, gradient_clip_val=clip)  # full BPTT: the target is at the end
        self.save_hyperparameters()
        self.rnn = RNNStack(cell, 2, hidden_size)
        self.head = nn.Linear(hidden_size, 1)

    def tbptt_step(self, chunk: Any, state: Any) -> TBPTTStep:
        x, y = chunk  # (N, T, 2), (N,)
        out, state = self.rnn(x, state)  # (N, T, H)
        pred = self.head(out[:, -1]).squeeze(-1)  # (N,)
        return TBPTTStep(loss=nn.functional.mse_loss(pred, y), state=state)

    def gradient_flow_probe(self, batch: Any, max_steps: int | None = None) -> tuple[list[Any], Tensor]:
        """States after every step and the loss (N, T): only the last step has a target (NaN elsewhere)."""
        x, y = batch
        if max_steps is not None:
            x = x[:, :max_steps]
        _, states = self.rnn.forward_steps(x)  # T states
        last = states[-1][0] if isinstance(states[-1], tuple) else states[-1]  # (layers, N, H)
        loss_last = (self.head(last[-1]).squeeze(-1) - y).pow(2)  # (N,) computed from states[-1] itself
        nan = torch.full((x.shape[0], x.shape[1] - 1), float("nan"), device=x.device)
        return states, torch.cat([nan, loss_last[:, None]], dim=1)  # (N, T)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class MSEHistory(Callback):
    """Records (step, val/loss) after every validation."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.mse: list[float] = []

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or "val/loss" not in trainer.callback_metrics:
            return
        self.steps.append(trainer.global_step)
        self.mse.append(float(trainer.callback_metrics["val/loss"]))


def run_one(cell: str, length: int, args: argparse.Namespace) -> dict[str, Any]:
    seed_everything(0, verbose=False)
    model = AddingModel(cell, hidden_size=args.hidden_size, lr=args.lr)
    g = torch.Generator().manual_seed(1234)
    val = adding_batch(args.val_size, length, g)
    history = MSEHistory()
    monitor = GradientFlowMonitor(every_n_steps=args.eval_every, num_targets=1, heatmap=args.logger != "none")
    if args.logger == "wandb":
        logger: Any = WandbLogger(project="lightning-rnn", name=f"adding_{cell}_T{length}", save_dir=args.save_dir,
                                  offline=True)
    elif args.logger == "csv":
        logger = CSVLogger(args.save_dir, name=f"adding_{cell}_T{length}")
    else:
        logger = False
    trainer = Trainer(
        max_steps=args.steps,
        val_check_interval=args.eval_every,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        logger=logger,
        log_every_n_steps=max(1, args.eval_every // 2),
        callbacks=[history, monitor],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(
        model,
        train_dataloaders=DataLoader(AddingStream(length, args.batch_size, seed=length), batch_size=None),
        val_dataloaders=DataLoader([val], batch_size=None),
    )
    if args.logger == "wandb":
        import wandb

        wandb.finish()
    last = monitor.last
    return {
        "cell": cell,
        "T": length,
        "steps": history.steps,
        "mse": history.mse,
        "final_mse": history.mse[-1] if history.mse else math.nan,
        "curve": last.normalized.tolist() if last is not None else [],
        "horizon": None if last is None else last.horizon,
    }


def save_figure(results: list[dict[str, Any]], lengths: list[int], path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot, no global backend change

    colors = {"rnn": "C3", "gru": "C0", "lstm": "C2"}
    names = {"rnn": "tanh RNN", "gru": "GRU", "lstm": "LSTM"}
    fig = Figure(figsize=(4.0 * (len(lengths) + 1), 3.3), dpi=100)
    axes = fig.subplots(1, len(lengths) + 1)
    for ax, length in zip(axes, lengths):
        for r in results:
            if r["T"] == length:
                ax.plot(r["steps"], r["mse"], color=colors[r["cell"]], label=names[r["cell"]])
        ax.axhline(BASELINE_MSE, color="k", ls="--", lw=1, label="predict 1.0 (0.167)")
        ax.set_yscale("log")
        ax.set_title(f"adding problem, T = {length}")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("validation MSE")
    axes[0].legend(fontsize=8)
    ax = axes[-1]
    show = lengths[len(lengths) // 2]
    for r in results:
        if r["T"] == show and r["curve"]:
            curve = torch.tensor(r["curve"]).clamp_min(1e-12)
            ax.plot(range(len(curve)), curve, color=colors[r["cell"]], label=names[r["cell"]])
    ax.axhline(1e-2, color="k", ls=":", lw=1, label="horizon threshold 1e-2")
    ax.set_yscale("log")
    ax.set_ylim(1e-8, 10)
    ax.set_title(f"‖∂L_T/∂h_(T−k)‖ / ‖∂L_T/∂h_T‖, T = {show}")
    ax.set_xlabel("lag k (steps back from the target)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds: T=20, a few steps, no figure")
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    parser.add_argument("--steps", type=int, default=800, help="optimizer steps per run")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval_every", type=int, default=50)
    parser.add_argument("--val_size", type=int, default=1000)
    parser.add_argument("--logger", choices=["csv", "wandb", "none"], default="csv")
    parser.add_argument("--save_dir", default="runs")
    parser.add_argument("--figure", default="docs/adding_problem.png", help="PNG to write ('' for none)")
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths, args.steps, args.eval_every, args.val_size, args.batch_size = [20], 6, 3, 64, 16
        args.hidden_size = 16
    results = []
    print(f"{'cell':>5} {'T':>4} {'val MSE':>9} {'/ 0.167':>8} {'grad horizon':>13}")
    for length in args.lengths:
        for cell in args.cells:
            r = run_one(cell, length, args)
            results.append(r)
            horizon = "> T" if r["horizon"] is None else str(r["horizon"])
            print(f"{cell:>5} {length:>4} {r['final_mse']:>9.4f} {r['final_mse'] / BASELINE_MSE:>8.3f} "
                  f"{horizon:>13}", flush=True)
    if args.figure and not args.quick:
        save_figure(results, args.lengths, Path(args.figure))
        print(f"figure: {args.figure}")
    return results


if __name__ == "__main__":
    main()
