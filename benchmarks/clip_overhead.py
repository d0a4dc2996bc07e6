"""Per-step cost of AdaptiveGradientClipping on an LSTM language-model step (2x512 by default) inside Trainer.fit.

Two measurements, one run, configurations interleaved (round-robin short fits), medians:

* step time (on_train_batch_start -> on_train_batch_end) with the callback vs without: the ratio a user sees;
* the callback's own hook time (``on_before_optimizer_step``, timed around the call, logging included) as a
  fraction of the step time without the callback: the same quantity without the noise of two medians.

Times are process CPU time (``time.process_time``, all threads) by default, which a busy shared machine
distorts far less than wall-clock time; ``--clock wall`` for wall-clock time.

The callback logs with one ``log_dict`` call per optimizer step and lets Lightning decide which steps reach
the loggers. ``--stub-logging`` replaces that call by a no-op: the difference is what the logging costs.
On a small model (``--hidden 64 --layers 1``) a step is short, so the same cost is a larger share of it.

Usage:
    python benchmarks/clip_overhead.py            # 3 rounds x 8 steps per configuration, a few min on 2 cores
    python benchmarks/clip_overhead.py --quick    # seconds
    python benchmarks/clip_overhead.py --rounds 3 --steps 8 --length 64 --clock wall [--stub-logging]
    python benchmarks/clip_overhead.py --hidden 64 --layers 1 --steps 40 [--stub-logging]   # small model
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_rnn.callbacks import AdaptiveGradientClipping  # noqa: E402

VOCAB = 256


class LSTMLM(pl.LightningModule):
    def __init__(self, hidden: int = 512, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, hidden)
        self.lstm = nn.LSTM(hidden, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, VOCAB)

    def training_step(self, batch, batch_idx):
        x, y = batch  # (N, L), (N, L)
        h, _ = self.lstm(self.embed(x))  # (N, L, H)
        return nn.functional.cross_entropy(self.out(h).flatten(0, 1), y.flatten())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


CLOCK = time.process_time


class StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t0 = CLOCK()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(CLOCK() - self._t0)


class TimedClip(AdaptiveGradientClipping):
    """The callback with its hook timed (the timing itself costs two perf_counter calls)."""

    hook_times: list[float]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        t0 = CLOCK()
        super().on_before_optimizer_step(trainer, pl_module, optimizer)
        self.hook_times.append(CLOCK() - t0)


LOG_EVERY = 50  # Trainer(log_every_n_steps); --log-every-n-steps 1 logs on every step


HIDDEN, LAYERS = 512, 2


def fit_once(
    clip: TimedClip | None, steps: int, batch: int, length: int, seed: int
) -> tuple[list[float], list[float]]:
    torch.manual_seed(seed)
    x = torch.randint(0, VOCAB, (steps * batch, length))
    data = DataLoader(TensorDataset(x, x.roll(-1, dims=1)), batch_size=batch)
    timer = StepTimer()
    callbacks: list[pl.Callback] = [timer]
    if clip is not None:
        clip.hook_times = []
        callbacks.append(clip)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        logger=False,
        log_every_n_steps=LOG_EVERY,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(LSTMLM(HIDDEN, LAYERS), data)
    skip = 2  # warm-up steps (allocator, oneDNN primitive creation)
    return timer.times[skip:], (clip.hook_times[skip:] if clip is not None else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=None)
    parser.add_argument("--clock", choices=["process", "wall"], default="process")
    parser.add_argument("--stub-logging", action="store_true",
                        help="replace the callback's logging by a no-op (what its `log_dict` call costs)")
    parser.add_argument("--log-every-n-steps", type=int, default=50, help="Trainer(log_every_n_steps)")
    parser.add_argument("--hidden", type=int, default=512, help="LSTM units (and embedding size)")
    parser.add_argument("--layers", type=int, default=2, help="LSTM layers")
    args = parser.parse_args()
    if args.stub_logging:
        AdaptiveGradientClipping._log = lambda *a, **k: None  # type: ignore[method-assign]
    global CLOCK, LOG_EVERY, HIDDEN, LAYERS
    CLOCK = time.process_time if args.clock == "process" else time.perf_counter
    LOG_EVERY = args.log_every_n_steps
    HIDDEN, LAYERS = args.hidden, args.layers
    rounds = args.rounds or (1 if args.quick else 3)
    steps = args.steps or (3 if args.quick else 8)
    length = args.length or (16 if args.quick else 32)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    configs: dict[str, TimedClip | None] = {
        "no callback": None,
        "quantile": TimedClip("quantile"),
        "zscore": TimedClip("zscore"),
        "agc": TimedClip("agc"),
    }
    step_times: dict[str, list[float]] = {k: [] for k in configs}
    hook_times: dict[str, list[float]] = {k: [] for k in configs}
    for r in range(rounds):
        for name, clip in configs.items():  # interleaved: every round runs every configuration
            if clip is not None:  # a fresh callback per fit, same configuration
                clip = configs[name] = TimedClip(clip.mode)
            s, h = fit_once(clip, steps + 2, args.batch, length, seed=r)
            step_times[name] += s
            hook_times[name] += h
            print(
                f"  round {r + 1}/{rounds} {name}: median step {statistics.median(s) * 1e3:.0f} ms",
                flush=True,
            )

    base = statistics.median(step_times["no callback"])
    logging_note = "logging stubbed" if args.stub_logging else "one log_dict per step"
    print(
        f"{LAYERS}x{HIDDEN} LSTM LM (vocab {VOCAB}), batch {args.batch} x length {length}, SGD, {logging_note}, CPU threads "
        f"{torch.get_num_threads()}; {rounds} rounds x {steps} steps per configuration, medians of "
        f"{args.clock} time"
    )
    print(f"step time without callback: {base * 1e3:.1f} ms\n")
    # Minimums too: on a busy machine the fastest repetition is the best estimate of the uncontended cost.
    base_min = min(step_times["no callback"])
    print(
        "| configuration | step (ms) median / min | step ratio vs none, median / min | hook (ms) median / min | hook / step, median / min |"
    )
    print("|---|---|---|---|---|")
    for name in configs:
        med, best = statistics.median(step_times[name]), min(step_times[name])
        if name == "no callback":
            print(f"| {name} | {med * 1e3:.1f} / {best * 1e3:.1f} | 1.000 / 1.000 | - | - |")
            continue
        hook, hook_min = statistics.median(hook_times[name]), min(hook_times[name])
        print(
            f"| {name} | {med * 1e3:.1f} / {best * 1e3:.1f} | {med / base:.3f} / {best / base_min:.3f} | "
            f"{hook * 1e3:.2f} / {hook_min * 1e3:.2f} | {hook / base:.2%} / {hook_min / base_min:.2%} |"
        )


if __name__ == "__main__":
    main()
