"""Training throughput of a 2-layer LSTM / GRU under each dropout scheme, and every state-mode variant tried.

One training step = forward + backward of ``out.sum()`` (default: input 512, hidden 512, batch 32, 64
steps, the machine's default CPU threads). Ratios are to the fused ``torch.nn.LSTM`` (``torch.nn.GRU``
for the GRU rows) without dropout: above 1 is faster. Rows:

- ``RNNStack`` without dropout, with locked input / layer / output dropout, with ``"weight"`` recurrent
  dropout (DropConnect: the fused kernel stays in use), with zoneout;
- ``recurrent_dropout_mode="state"`` (Gal's per-sequence mask on h_{t-1}) in every implementation tried:
  ``hand-written`` (the default: ``autograd.Function`` with a hand-written backward, one weight-gradient
  product per layer), ``autograd step loop`` (the same recurrence recorded op by op by autograd),
  ``torch.compile step`` (the autograd step with the per-step cell — recurrent product + element-wise
  gates — compiled by ``torch.compile``; skipped with ``--no-compile``, compile time excluded);
- a plain ``nn.LSTMCell`` Python loop (what one writes by hand for per-step masks).

Every state-mode variant is checked to compute the same output and gradients as the default (same
masks, max abs difference printed) before timing. Repetitions are interleaved across variants
(round-robin, so drifts in machine load hit every variant alike); medians are reported in one markdown
table. Figures only mean something on an idle machine.

Usage::

    python benchmarks/dropout_throughput.py            # ~3-5 minutes (torch.compile warm-up included)
    python benchmarks/dropout_throughput.py --no-compile
    python benchmarks/dropout_throughput.py --threads 1   # one core: the recurrences' compute alone
    python benchmarks/dropout_throughput.py --threads 1 --cpu-time   # indicative even on a busy machine
    python benchmarks/dropout_throughput.py --quick    # a few seconds smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_rnn.nn import RNNStack


class LSTMCellLoop(nn.Module):
    """Stacked ``nn.LSTMCell`` run step by step in Python (the hand-written baseline)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.cells = nn.ModuleList(
            nn.LSTMCell(input_size if i == 0 else hidden_size, hidden_size) for i in range(num_layers)
        )

    def forward(self, x: Tensor) -> Tensor:  # x: (N, L, F)
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


class AutogradStepRNNStack(RNNStack):
    """State mode through the autograd step loop (``RNNStack(second_order=True)``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, second_order=True, **kwargs)


def _lstm_cell(xt: Tensor, hm: Tensor, c: Tensor, w_t: Tensor) -> tuple[Tensor, Tensor]:
    gates = torch.addmm(xt, hm, w_t)
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _gru_cell(xt: Tensor, hm: Tensor, h: Tensor, w_t: Tensor, b_hh: Tensor) -> Tensor:
    gh = torch.addmm(b_hh, hm, w_t)
    hid = h.shape[1]
    r, z = torch.sigmoid(xt[:, : 2 * hid] + gh[:, : 2 * hid]).chunk(2, 1)
    n = torch.tanh(xt[:, 2 * hid :] + r * gh[:, 2 * hid :])
    return n + z * (h - n)


class CompiledStepRNNStack(RNNStack):
    """State mode with the per-step cell compiled by ``torch.compile`` (padded input, no zoneout)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lstm_cell = torch.compile(_lstm_cell, dynamic=False)
        self._gru_cell = torch.compile(_gru_cell, dynamic=False)

    def _step_layer(self, x, batch_sizes, hx, layer, masks):  # noqa: ANN001, ANN202
        assert batch_sizes is None and self.num_directions == 1 and self.bias
        w_ih, w_hh, b_ih, b_hh = self._weights(layer, masks)
        mask = masks.state[layer]
        w_t = w_hh.t()
        outs = []
        if self.cell == "lstm":
            xp = F.linear(x, w_ih, b_ih + b_hh)
            h, c = hx[0][0], hx[1][0]
            for t in range(xp.shape[0]):
                h, c = self._lstm_cell(xp[t], h * mask, c, w_t)
                outs.append(h)
            return torch.stack(outs), (h[None], c[None])
        xp = F.linear(x, w_ih, b_ih)
        h = hx[0]
        for t in range(xp.shape[0]):
            h = self._gru_cell(xp[t], h * mask, h, w_t, b_hh)
            outs.append(h)
        return torch.stack(outs), h[None]


def build(args: argparse.Namespace) -> dict[str, tuple[str, nn.Module]]:
    """name -> (baseline group, model)."""
    f, h, layers = args.input_size, args.hidden_size, args.num_layers
    state = {"recurrent_dropout": 0.3, "recurrent_dropout_mode": "state"}
    models: dict[str, tuple[str, nn.Module]] = {}
    for cell, torch_cls in (("lstm", nn.LSTM), ("gru", nn.GRU)):
        models[f"torch.nn.{torch_cls.__name__}, no dropout (baseline)"] = (cell, torch_cls(f, h, layers, batch_first=True))
        models[f"{cell}: RNNStack, no dropout"] = (cell, RNNStack(cell, f, h, layers))
        models[f"{cell}: locked input/layer/output 0.3"] = (
            cell, RNNStack(cell, f, h, layers, input_dropout=0.3, layer_dropout=0.3, output_dropout=0.3)
        )
        models[f"{cell}: recurrent 0.3, weight mode"] = (cell, RNNStack(cell, f, h, layers, recurrent_dropout=0.3))
        models[f"{cell}: recurrent 0.3, state mode, hand-written (default)"] = (cell, RNNStack(cell, f, h, layers, **state))
        models[f"{cell}: recurrent 0.3, state mode, autograd step loop"] = (
            cell, AutogradStepRNNStack(cell, f, h, layers, **state)
        )
        if args.compile:
            models[f"{cell}: recurrent 0.3, state mode, torch.compile step"] = (
                cell, CompiledStepRNNStack(cell, f, h, layers, **state)
            )
        models[f"{cell}: zoneout 0.1, hand-written"] = (cell, RNNStack(cell, f, h, layers, zoneout=0.1))
    models["lstm: nn.LSTMCell python loop, no dropout"] = ("lstm", LSTMCellLoop(f, h, layers))
    return models


CLOCK = time.perf_counter


def step(model: nn.Module, x: Tensor) -> float:
    start = CLOCK()
    out = model(x)
    out = out[0] if isinstance(out, tuple) else out
    out.sum().backward()
    elapsed = CLOCK() - start
    for p in model.parameters():
        p.grad = None
    return elapsed


def check_state_variants(models: dict[str, tuple[str, nn.Module]], x: Tensor) -> dict[str, float]:
    """Max |difference| of output and gradients of every state-mode variant to the default, same masks."""

    def run(m: nn.Module) -> list[Tensor]:
        torch.manual_seed(123)
        out, _ = m(x)
        grads = torch.autograd.grad(out.square().sum(), list(m.parameters()))
        return [out.detach(), *grads]

    diffs = {}
    for cell in ("lstm", "gru"):
        ref_name = f"{cell}: recurrent 0.3, state mode, hand-written (default)"
        ref_model = models[ref_name][1]
        ref = run(ref_model)
        for name, (group, m) in models.items():
            if group == cell and "state mode" in name and name != ref_name:
                m.load_state_dict(ref_model.state_dict())
                diffs[name] = max(float((a - b).abs().max()) for a, b in zip(run(m), ref))
    return diffs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-size", type=int, default=512)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--reps", type=int, default=15, help="timed repetitions per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile variant")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time by process CPU time instead of wall time (with --threads 1: robust to load)")
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions (smoke run)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    if args.quick:
        args.input_size = args.hidden_size = 64
        args.seq_len, args.reps, args.warmup = 16, 3, 1

    torch.manual_seed(0)
    models = build(args)
    for _, m in models.values():
        m.train()
    x = torch.randn(args.batch_size, args.seq_len, args.input_size)
    diffs = check_state_variants(models, x)
    for _ in range(args.warmup):  # includes torch.compile's compilation
        for _, m in models.values():
            step(m, x)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.reps):  # interleaved: one repetition of every variant per round
        for name, (_, m) in models.items():
            times[name].append(step(m, x))

    tokens = args.batch_size * args.seq_len
    base: dict[str, float] = {}
    for name, (group, _) in models.items():
        if name.startswith("torch.nn."):
            base[group] = statistics.median(times[name])
    print(
        f"{args.num_layers}-layer training step (forward+backward): input {args.input_size}, hidden "
        f"{args.hidden_size}, batch {args.batch_size}, {args.seq_len} steps, {torch.get_num_threads()} threads, "
        f"{'process CPU' if args.cpu_time else 'wall'} time, "
        f"torch {torch.__version__}; median of {args.reps} interleaved repetitions; ratio = fused torch "
        f"time / variant time (LSTM rows vs torch.nn.LSTM, GRU rows vs torch.nn.GRU)\n"
    )
    print("| variant | ms / step | tokens/s | ratio to fused torch | max abs diff to default state mode |")
    print("|---|---:|---:|---:|---:|")
    for name, (group, _) in models.items():
        med = statistics.median(times[name])
        diff = f"{diffs[name]:.1e}" if name in diffs else ""
        print(f"| {name} | {med * 1e3:.1f} | {tokens / med:,.0f} | {base[group] / med:.2f}x | {diff} |")


if __name__ == "__main__":
    main()
