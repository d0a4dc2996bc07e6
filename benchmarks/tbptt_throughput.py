"""TBPTT throughput: RNNLanguageModel trained by Lightning's Trainer vs a hand-written plain-PyTorch TBPTT loop.

Same model, data, optimizer (Adam) and chunking on both sides; no dropout, no callbacks, no progress bar.
One run, interleaved repetitions, medians; prints tokens/s and the ratio (target >= 0.95x). Then peak memory
(RSS, separate processes) vs sequence length for TBPTT and full BPTT.

Usage:
    python benchmarks/tbptt_throughput.py            # ~3 minutes on 2 cores
    python benchmarks/tbptt_throughput.py --quick    # seconds
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from lightning_rnn import RNNConfig, RNNLanguageModel

ROOT = Path(__file__).resolve().parents[1]


class _Timer(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.start


def lightning_run(model: RNNLanguageModel, batches: list) -> float:
    timer = _Timer()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(model, torch.utils.data.DataLoader(batches, batch_size=None))
    return timer.seconds


def plain_run(model: RNNLanguageModel, batches: list, k: int) -> float:
    """What a user writes by hand: chunk, forward, CE, backward, step, detach, carry across batches."""
    opt = torch.optim.Adam(model.parameters(), lr=model.hparams.lr)
    model.train()
    start = time.perf_counter()
    state = None
    for inputs, targets in batches:
        for s in range(0, inputs.shape[1], k):
            logits, state = model(inputs[:, s : s + k], state)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[:, s : s + k].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state = tuple(h.detach() for h in state) if isinstance(state, tuple) else state.detach()
    return time.perf_counter() - start


def peak_rss(length: int, k: int | None) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = ROOT / "tests" / "modules" / "memory_script.py"
    out = subprocess.run(
        [sys.executable, str(script), str(length), "none" if k is None else str(k)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--bptt", type=int, default=64, help="chunk length k")
    parser.add_argument("--seq", type=int, default=256, help="batch time length T (T / k chunks per batch)")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    if args.quick:
        args.hidden, args.seq, args.batches, args.reps = 64, 64, 2, 2

    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.manual_seed(0)
    tokens = torch.randint(0, args.vocab, (args.batch, args.batches * args.seq + 1))
    batches = [
        (tokens[:, i * args.seq : (i + 1) * args.seq], tokens[:, i * args.seq + 1 : (i + 1) * args.seq + 1])
        for i in range(args.batches)
    ]
    base = RNNLanguageModel(args.vocab, args.hidden, encoder=RNNConfig(hidden_size=args.hidden, num_layers=args.layers), tbptt_steps=args.bptt, carry_state=True, lr=1e-3)
    n_tokens = args.batch * args.seq * args.batches
    # warm-up both paths once
    lightning_run(copy.deepcopy(base), batches[:1])
    plain_run(copy.deepcopy(base), batches[:1], args.bptt)
    light, plain = [], []
    for _ in range(args.reps):
        light.append(n_tokens / lightning_run(copy.deepcopy(base), batches))
        plain.append(n_tokens / plain_run(copy.deepcopy(base), batches, args.bptt))
    lm, pm = statistics.median(light), statistics.median(plain)
    print(
        f"## TBPTT throughput ({args.layers}x{args.hidden} LSTM, V={args.vocab}, batch {args.batch}, "
        f"T={args.seq}, k={args.bptt}, {torch.get_num_threads()} threads, {args.reps} interleaved reps)\n"
    )
    print("| training loop | tokens/s (median) | ratio |")
    print("|---|---:|---:|")
    print(f"| hand-written plain-PyTorch TBPTT loop | {pm:,.0f} | 1.00x |")
    print(f"| `RNNLanguageModel` + `Trainer` | {lm:,.0f} | {lm / pm:.2f}x |")

    lengths = [200, 400] if args.quick else [500, 1000, 2000, 4000]
    print("\n## Peak memory (RSS MiB, LM 1x256 LSTM, batch 16, one batch) vs sequence length\n")
    print("| T | TBPTT k=50 | full BPTT |")
    print("|---:|---:|---:|")
    for length in lengths:
        print(f"| {length} | {peak_rss(length, 50):,.0f} | {peak_rss(length, None):,.0f} |")


if __name__ == "__main__":
    main()
