"""Training throughput (forward + backward tokens/s) of a 2-layer LSTM under each dropout scheme.

Compares, on the same data and sizes (default: input 512, hidden 512, batch 32, 64 steps, the machine's
default CPU threads):

- ``torch.nn.LSTM`` without dropout (the baseline, ratio 1.00);
- ``RNNStack`` without dropout;
- ``RNNStack`` with locked input / layer / output dropout (0.3 each);
- ``RNNStack`` with recurrent dropout, ``"weight"`` mode (DropConnect on weight_hh, 0.3);
- ``RNNStack`` with recurrent dropout, ``"state"`` mode (Gal's per-sequence mask on h, 0.3);
- a plain ``nn.LSTMCell`` Python loop (what one writes by hand for per-step masks).

One run, repetitions interleaved across variants (round-robin, so drifts in machine load hit every
variant alike), medians reported, printed as a markdown table of tokens/s and ratio to the baseline.

Usage::

    python benchmarks/dropout_throughput.py            # ~1-2 minutes
    python benchmarks/dropout_throughput.py --quick    # a few seconds smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from lightning_rnn.nn import RNNStack


class LSTMCellLoop(nn.Module):
    """Two stacked ``nn.LSTMCell`` run step by step in Python (the hand-written baseline)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.cells = nn.ModuleList(
            nn.LSTMCell(input_size if i == 0 else hidden_size, hidden_size) for i in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, L, F)
        n = x.shape[0]
        states = [(x.new_zeros(n, c.hidden_size), x.new_zeros(n, c.hidden_size)) for c in self.cells]
        outs = []
        for t in range(x.shape[1]):
            inp = x[:, t]
            for i, cell in enumerate(self.cells):
                states[i] = cell(inp, states[i])
                inp = states[i][0]
            outs.append(inp)
        return torch.stack(outs, 1)


def build(args: argparse.Namespace) -> dict[str, nn.Module]:
    f, h, layers = args.input_size, args.hidden_size, args.num_layers
    return {
        "torch.nn.LSTM, no dropout (baseline)": nn.LSTM(f, h, layers, batch_first=True),
        "RNNStack, no dropout": RNNStack("lstm", f, h, layers),
        "RNNStack, locked input/layer/output 0.3": RNNStack(
            "lstm", f, h, layers, input_dropout=0.3, layer_dropout=0.3, output_dropout=0.3
        ),
        "RNNStack, recurrent 0.3, weight mode": RNNStack("lstm", f, h, layers, recurrent_dropout=0.3),
        "RNNStack, recurrent 0.3, state mode": RNNStack(
            "lstm", f, h, layers, recurrent_dropout=0.3, recurrent_dropout_mode="state"
        ),
        "nn.LSTMCell python loop, no dropout": LSTMCellLoop(f, h, layers),
    }


def step(model: nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    out = model(x)
    out = out[0] if isinstance(out, tuple) else out
    out.sum().backward()
    elapsed = time.perf_counter() - start
    for p in model.parameters():
        p.grad = None
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-size", type=int, default=512)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--reps", type=int, default=15, help="timed repetitions per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions (smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.input_size = args.hidden_size = 64
        args.seq_len, args.reps, args.warmup = 16, 3, 1

    torch.manual_seed(0)
    models = build(args)
    for m in models.values():
        m.train()
    x = torch.randn(args.batch_size, args.seq_len, args.input_size)
    for _ in range(args.warmup):
        for m in models.values():
            step(m, x)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.reps):  # interleaved: one repetition of every variant per round
        for name, m in models.items():
            times[name].append(step(m, x))

    tokens = args.batch_size * args.seq_len
    base = statistics.median(times[next(iter(models))])
    print(
        f"2-layer LSTM training step (forward+backward): input {args.input_size}, hidden {args.hidden_size}, "
        f"batch {args.batch_size}, {args.seq_len} steps, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}; median of {args.reps} interleaved repetitions\n"
    )
    print("| variant | ms / step | tokens/s | ratio to torch.nn.LSTM |")
    print("|---|---:|---:|---:|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med * 1e3:.1f} | {tokens / med:,.0f} | {base / med:.2f}x |")


if __name__ == "__main__":
    main()
