"""Tagging long streams with long-range structure: running parity and delayed copy, with TBPTT.

Each sequence is a random bit stream x_1..x_T (T = 200 by default, variable lengths, padded with
:func:`lightning_rnn.data.pad_collate`), tagged step by step by :class:`lightning_rnn.RNNTagger`:

- ``parity``: y_t = x_1 xor ... xor x_t. One bit of memory updated every step: a short-range *update* rule
  whose effect lasts forever. Truncated BPTT with small k learns it, because the gradient never has to
  reach further back than one step to learn the update.
- ``delay``: y_t = x_{t-d} (0 for t <= d). The label depends on the input d steps back: to learn it, the
  gradient must reach back d steps, so TBPTT with k < d cannot learn it (accuracy stays near chance),
  while k > d can. The table shows this cliff: truncation bounds the dependency length that can be
  *learned*, not the one that can be *carried*.

Run::

    python examples/tagging_parity.py            # ~1-2 minutes on 2 CPU cores
    python examples/tagging_parity.py --quick    # seconds, a smoke run
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from lightning_rnn import RNNTagger
from lightning_rnn.data import pad_collate


def make_streams(task: str, n: int, length: int, delay: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n bit streams of random length in [length/2, length], tagged for ``task``."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        t = int(torch.randint(length // 2, length + 1, (1,), generator=g))
        x = torch.randint(0, 2, (t,), generator=g)
        if task == "parity":
            y = torch.cumsum(x, 0) % 2
        else:
            y = torch.zeros_like(x)
            y[delay:] = x[:-delay]
        items.append((x, y))
    return items




def run(task: str, k: int | None, args: argparse.Namespace) -> float:
    pl.seed_everything(args.seed, verbose=False)
    train = make_streams(task, args.train, args.length, args.delay, args.seed)
    test = make_streams(task, args.test, args.length, args.delay, args.seed + 1)
    model = RNNTagger(
        2, vocab_size=2, embedding_dim=4, hidden_size=args.hidden, cell=args.cell, tbptt_steps=k, lr=args.lr,
        gradient_clip_val=1.0,
    )
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=args.epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(train, batch_size=args.batch_size, shuffle=True, collate_fn=pad_collate))
    (metrics,) = trainer.test(model, DataLoader(test, batch_size=256, collate_fn=pad_collate), verbose=False)
    return float(metrics["test/acc"])


def main(argv: list[str] | None = None) -> dict[tuple[str, int | None], float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny data, 1 epoch: a smoke run")
    parser.add_argument("--tasks", default="parity,delay")
    parser.add_argument("--ks", default="5,40", help="tbptt_steps values to compare")
    parser.add_argument("--delay", type=int, default=15)
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--train", type=int, default=512)
    parser.add_argument("--test", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--cell", default="lstm")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.train, args.test, args.epochs, args.length, args.hidden = 32, 16, 1, 40, 8
    results = {}
    for task in args.tasks.split(","):
        for k in [int(v) for v in args.ks.split(",")]:
            results[(task, k)] = run(task, k, args)
    print(f"\nper-token test accuracy, {args.cell} hidden {args.hidden}, T <= {args.length}, delay {args.delay}")
    print("| task | tbptt_steps | test accuracy |")
    print("|---|---|---|")
    for (task, k), acc in results.items():
        print(f"| {task} | {k} | {acc:.3f} |")
    return results


if __name__ == "__main__":
    main()
