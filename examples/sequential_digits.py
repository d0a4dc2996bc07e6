"""Sequential (and permuted) digits: tanh RNN vs GRU vs LSTM read an image pixel by pixel.

The 8x8 handwritten digits that ship inside scikit-learn (``sklearn.datasets.load_digits``, 1797 images, no
download) are read one pixel per step: a 64-step sequence of 1 feature, one label at the end — a small
cousin of sequential MNIST (784 steps). In "permuted" order the pixels are shuffled by one fixed permutation,
which spreads the strokes over the whole sequence and makes the dependencies longer. The classifier is
:class:`lightning_rnn.RNNClassifier` with ``summary="last"`` (the final state predicts the class).

Run::

    python examples/sequential_digits.py            # ~2 minutes on 2 CPU cores
    python examples/sequential_digits.py --quick    # seconds, a smoke run

Needs scikit-learn (an optional dependency of this example only).
"""

from __future__ import annotations

import argparse
import time

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_rnn import RNNClassifier, RNNConfig


def load(permuted: bool, seed: int, limit: int | None = None) -> tuple[TensorDataset, TensorDataset]:
    """Digits as (N, 64, 1) pixel sequences in [0, 1]; a fixed 80/20 split (and a fixed permutation)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0  # (1797, 64)
    y = torch.tensor(digits.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=g)
    x, y = x[order], y[order]
    if limit is not None:
        x, y = x[:limit], y[:limit]
    if permuted:
        x = x[:, torch.randperm(64, generator=torch.Generator().manual_seed(1234))]
    x = x.unsqueeze(-1)  # (N, 64, 1)
    split = int(0.8 * len(x))
    return TensorDataset(x[:split], y[:split]), TensorDataset(x[split:], y[split:])


def run(cell: str, permuted: bool, args: argparse.Namespace) -> dict[str, float]:
    pl.seed_everything(args.seed, verbose=False)
    train, test = load(permuted, args.seed, 100 if args.quick else None)
    model = RNNClassifier(10, encoder=RNNConfig(hidden_size=args.hidden, cell=cell), input_size=1, lr=args.lr, gradient_clip_val=1.0, tbptt_steps=args.tbptt)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=args.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(model, DataLoader(train, batch_size=args.batch_size, shuffle=True))
    seconds = time.perf_counter() - start
    (metrics,) = trainer.test(model, DataLoader(test, batch_size=256), verbose=False)
    return {"acc": metrics["test/acc"], "f1": metrics["test/f1"], "seconds": seconds}


def main(argv: list[str] | None = None) -> dict[tuple[str, str], dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 images, 1 epoch, hidden 16: a smoke run")
    parser.add_argument("--cells", default="rnn,gru,lstm")
    parser.add_argument("--orders", default="sequential,permuted")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tbptt", type=int, default=None, help="tbptt_steps (default: full BPTT over 64 steps)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.hidden = 1, 16
    results = {}
    for order in args.orders.split(","):
        for cell in args.cells.split(","):
            results[(order, cell)] = run(cell, order == "permuted", args)
    print(f"\nsequential digits (64 steps), hidden {args.hidden}, {args.epochs} epochs, seed {args.seed}")
    print("| order | cell | test accuracy | test macro F1 | train seconds |")
    print("|---|---|---|---|---|")
    for (order, cell), r in results.items():
        print(f"| {order} | {cell} | {r['acc']:.3f} | {r['f1']:.3f} | {r['seconds']:.0f} |")
    return results


if __name__ == "__main__":
    main()
