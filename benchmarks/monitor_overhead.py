"""Training-time overhead of SpectralNormMonitor and GradientFlowMonitor at their defaults.

Two measurements, printed as ratios:

1. End to end (one process, configurations interleaved, medians over repetitions): tokens/s of an LSTM
   language model (``lightning_rnn.RNNLanguageModel``, TBPTT chunks of 35) trained with ``Trainer.fit``
   with no callbacks, with each monitor at its defaults, and with both. The timed window skips the first
   batch (warm-up and the monitors' first-batch measurement) and spans a multiple of 200 optimizer steps,
   so every monitor fires at exactly its default rate (spectral every 50 steps, gradient flow every 200).
2. Amortised per call (low noise): median time of one monitor call / (every_n_steps x median time of one
   training step), for the same model and for a 2x512 LSTM LM (steps timed with a plain loop).

Usage:
    python benchmarks/monitor_overhead.py            # ~2-4 min on 2 CPU cores
    python benchmarks/monitor_overhead.py --quick    # a few seconds, smoke test
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_rnn import RNNConfig, RNNLanguageModel
from lightning_rnn.callbacks import GradientFlowMonitor, SpectralNormMonitor


class _BatchClock(Callback):
    """Wall time of the window [start of batch `skip`, end of training]."""

    def __init__(self, skip: int = 1) -> None:
        self.skip = skip
        self.start = self.end = 0.0
        self.batch_times: list[float] = []
        self._t = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        now = time.perf_counter()
        if batch_idx > 0:
            self.batch_times.append(now - self._t)
        if batch_idx == self.skip:
            self.start = now
        self._t = now

    def on_train_end(self, trainer, pl_module):
        self.end = time.perf_counter()


def _loader(vocab: int, batch: int, bptt: int, steps: int, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (steps * batch, bptt + 1), generator=g)
    return DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=batch, shuffle=False)


def _model(args, hidden: int) -> RNNLanguageModel:
    torch.manual_seed(0)
    return RNNLanguageModel(args.vocab, hidden, encoder=RNNConfig(hidden_size=hidden, num_layers=args.layers), tbptt_steps=args.bptt, lr=1e-3)


def _fit(args, callbacks: list[Callback], steps: int) -> tuple[float, list[float], RNNLanguageModel]:
    clock = _BatchClock(skip=1)
    model = _model(args, args.hidden)
    with tempfile.TemporaryDirectory() as root:  # the heatmap PNGs land here
        trainer = Trainer(
            accelerator="cpu", devices=1, max_steps=steps + 1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, callbacks=[*callbacks, clock],
            default_root_dir=root,
        )
        trainer.fit(model, _loader(args.vocab, args.batch, args.bptt, steps + 1))
    tokens = steps * args.batch * args.bptt
    return tokens / (clock.end - clock.start), clock.batch_times, model


def _median_time(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _amortised(args, hidden: int, reps: int) -> tuple[float, float, float]:
    """(step seconds, spectral % at defaults, gradient-flow % at defaults) for an LM of this size."""
    model = _model(args, hidden)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randint(0, args.vocab, (args.batch, args.bptt + 1), generator=torch.Generator().manual_seed(1))
    batch = (x[:, :-1], x[:, 1:])

    def train_step() -> None:  # what one TBPTT chunk costs: fused forward + backward + Adam
        out, _ = model.rnn(model.embedding(batch[0]))
        loss = F.cross_entropy(model.decoder(out).flatten(0, 1), batch[1].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()

    step = _median_time(train_step, reps)
    spectral, flow = SpectralNormMonitor(), GradientFlowMonitor()
    spectral.setup(None, model, "fit")  # type: ignore[arg-type]
    t_spec = _median_time(spectral.measure, max(reps, 5))
    t_flow = _median_time(lambda: flow.probe(model, batch), reps)
    return step, 100 * t_spec / (spectral.every_n_steps * step), 100 * t_flow / (flow.every_n_steps * step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few-seconds smoke run")
    parser.add_argument("--hidden", type=int, default=128, help="hidden size (= embedding size) of the end-to-end LM")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--bptt", type=int, default=35)
    parser.add_argument("--steps", type=int, default=400, help="timed optimizer steps per run (multiple of 200)")
    parser.add_argument("--reps", type=int, default=2, help="interleaved repetitions of the end-to-end runs")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--big-hidden", type=int, default=512, help="hidden size of the amortised 2xH LM (0: skip)")
    args = parser.parse_args()
    if args.quick:
        args.hidden, args.steps, args.reps, args.big_hidden, args.vocab = 32, 10, 1, 0, 100
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; LSTM LM {args.layers}x{args.hidden}, "
          f"vocab {args.vocab}, batch {args.batch}x{args.bptt} tokens, {args.steps} timed steps, {args.reps} reps")

    configs = {
        "none": lambda: [],
        "spectral": lambda: [SpectralNormMonitor()],
        "gradient_flow": lambda: [GradientFlowMonitor()],
        "both": lambda: [SpectralNormMonitor(), GradientFlowMonitor()],
    }
    if args.quick:  # make both monitors fire inside the short window
        configs["spectral"] = lambda: [SpectralNormMonitor(every_n_steps=5)]
        configs["gradient_flow"] = lambda: [GradientFlowMonitor(every_n_steps=5)]
        configs["both"] = lambda: [SpectralNormMonitor(every_n_steps=5), GradientFlowMonitor(every_n_steps=5)]
    rates: dict[str, list[float]] = {name: [] for name in configs}
    step_times: list[float] = []
    for _ in range(args.reps):
        for name, make in configs.items():
            rate, batch_times, _ = _fit(args, make(), args.steps)
            rates[name].append(rate)
            if name == "none":
                step_times.extend(batch_times)
    base = statistics.median(rates["none"])
    print("\nEnd to end (median tokens/s; overhead = 1 - rate / rate_none):")
    for name, r in rates.items():
        med = statistics.median(r)
        print(f"  {name:14s} {med:10.0f} tok/s   overhead {100 * (1 - med / base):+6.2f}%   "
              f"(runs: {', '.join(f'{v:.0f}' for v in r)})")

    sizes = [args.hidden] + ([args.big_hidden] if args.big_hidden else [])
    print("\nAmortised at defaults (median call time / (every_n_steps x median step time)):")
    for hidden in sizes:
        step, spec, flow = _amortised(args, hidden, reps=2 if args.quick else 5)
        print(f"  LSTM LM {args.layers}x{hidden}: step {1e3 * step:7.1f} ms   spectral {spec:6.3f}%   "
              f"gradient flow {flow:6.3f}%   both {spec + flow:6.3f}%")


if __name__ == "__main__":
    main()
