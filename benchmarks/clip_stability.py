"""Learning-rate sweeps: no clipping vs fixed thresholds vs AdaptiveGradientClipping's modes, on two tasks.

``--task adding``: the adding problem (Hochreiter & Schmidhuber 1997) with T = 100 steps: input (N, T, 2) =
(uniform value, marker), two markers (one in each half), target = sum of the two marked values. Predicting
the mean scores MSE = 2/12 = 0.167. Model: a 1-layer tanh ``nn.RNN`` (H = 64) and a linear read-out, plain
SGD, batch 32 — the setting in which Pascanu et al. (2013) saw gradients explode. 6 learning rates 0.03-3.

``--task lm``: a character-level LSTM language model (embedding 32, 1 x 128 LSTM, tied to nothing) on real
text — the Python standard library's own source files, 1 MB of it — trained on random 64-character
windows (batch 32), plain SGD as in AWD-LSTM (which uses lr = 30 with a fixed clip of 0.25); 6 learning rates
0.3-30. The score is the cross-entropy (bits/char) of 16 held-out batches from the last 10% of the text.

For speed the sweeps are plain PyTorch loops (one process per core, one thread each) that call the very
functions ``AdaptiveGradientClipping.on_before_optimizer_step`` calls, in the same order
(``grad_norm`` -> skip if non-finite -> ``QuantileClipRule`` / ``ZScoreClipRule`` / ``adaptive_clip_grad_`` ->
``clip_grads_``), with the callback's defaults, untuned. Fixed clipping is ``torch.nn.utils.clip_grad_norm_``.
``--warmup N`` adds a linear learning-rate warm-up over the first N steps, for every method alike.

A run *diverges* when its loss becomes non-finite (or, for the adaptive modes, 10 consecutive non-finite
gradient norms stop it, as the callback would) or when its final score is worse than where it started
(adding: 2 x the mean-predictor MSE; lm: log2 V bits/char, the uniform prediction). Reported per method:
the fraction of learning rates that do not diverge, the median final score over all learning rates (a
diverged run counts as +inf), the best one, the fraction of steps clipped (median over the stable runs),
and every run's final score.

Usage:
    python benchmarks/clip_stability.py                       # both tasks: 25 min on 2 cores shared (load ~6)
    python benchmarks/clip_stability.py --task lm --warmup 50 # one task, with LR warm-up
    python benchmarks/clip_stability.py --quick               # 3 learning rates, few steps: under a minute
Writes docs/clip_stability.png (one panel per task) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_rnn.functional import (  # noqa: E402
    QuantileClipRule,
    ZScoreClipRule,
    adaptive_clip_grad_,
    clip_grads_,
    grad_norm,
)

ADDING_BASELINE = 2.0 / 12.0  # MSE of predicting the mean sum (1.0)
ADAPTIVE = ["quantile", "zscore", "agc"]
METHODS = {
    "adding": ["none", "fixed 0.1", "fixed 1", "fixed 10", *ADAPTIVE],
    "lm": ["none", "fixed 0.25", "fixed 1", "fixed 10", *ADAPTIVE],  # 0.25: AWD-LSTM's hand-tuned clip
}
LRS = {
    "adding": [0.03, 0.076, 0.19, 0.48, 1.2, 3.0],
    "lm": [0.3, 0.76, 1.9, 4.8, 12.0, 30.0],
}
QUICK_LRS = {"adding": [0.03, 0.3, 3.0], "lm": [0.3, 3.0, 30.0]}
LM_BYTES, LM_WINDOW, LM_BATCH, LM_VAL_BATCHES = 1_000_000, 64, 32, 16


def adding_batch(n: int, t: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    values = torch.rand(n, t, generator=gen)  # (N, T)
    markers = torch.zeros(n, t)
    first = torch.randint(0, t // 2, (n,), generator=gen)
    second = torch.randint(t // 2, t, (n,), generator=gen)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = torch.stack([values, markers], dim=-1)  # (N, T, 2)
    y = (values * markers).sum(dim=1, keepdim=True)  # (N, 1)
    return x, y


class AddingRNN(nn.Module):
    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.rnn = nn.RNN(2, hidden, nonlinearity="tanh", batch_first=True)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(x)  # (N, T, H)
        return self.out(h[:, -1])  # (N, 1)


class CharLSTM(nn.Module):
    def __init__(self, vocab: int, embedding: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embedding)
        self.rnn = nn.LSTM(embedding, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.embed(x))  # (N, L, H)
        return self.out(h)  # (N, L, V)


def lm_corpus() -> tuple[torch.Tensor, int, float]:
    """Character ids of the stdlib corpus (``LM_BYTES`` of it), the vocabulary size, unigram entropy (nats)."""
    from lightning_rnn.data import CharVocab, read_text_source, stdlib_corpus_files

    text = "".join(t for _, t in read_text_source(stdlib_corpus_files(LM_BYTES), max_bytes=LM_BYTES))
    vocab = CharVocab.build(text)
    ids = torch.as_tensor(vocab.encode(text), dtype=torch.long)
    p = torch.bincount(ids).double()
    p = p[p > 0] / p.sum()
    return ids, len(vocab), float(-(p * p.log()).sum())


def lm_batch(ids: torch.Tensor, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.randint(0, len(ids) - LM_WINDOW - 1, (n,), generator=gen)
    idx = starts[:, None] + torch.arange(LM_WINDOW + 1)  # (N, L + 1)
    windows = ids[idx]
    return windows[:, :-1], windows[:, 1:]  # (N, L), (N, L)


class Clipper:
    """The callback's decision path on plain tensors (see the module docstring)."""

    def __init__(self, method: str, model: nn.Module) -> None:
        self.method = method
        self.rule = None
        if method == "quantile":
            self.rule = QuantileClipRule(quantile=0.1, window=1000)
        elif method == "zscore":
            self.rule = ZScoreClipRule(alpha=0.97, z_threshold=2.5, warmup_steps=25)
        # AGC leaves the output layer alone, as the callback does by default (last nn.Linear).
        self.agc_params = [p for name, p in model.named_parameters() if not name.startswith("out.")]
        self.consecutive_nonfinite = 0
        self.clipped = 0

    def __call__(self, params: list[torch.Tensor]) -> bool:
        """Clips in place; returns False if this step must be skipped."""
        grads = [p.grad for p in params if p.grad is not None]
        if self.method == "none":
            return True
        if self.method.startswith("fixed"):
            c = float(self.method.split()[1])
            self.clipped += int(float(torch.nn.utils.clip_grad_norm_(params, c)) > c)
            return True
        norm = float(grad_norm(grads))
        if not math.isfinite(norm):
            self.consecutive_nonfinite += 1
            for p in params:
                p.grad = None
            return False
        self.consecutive_nonfinite = 0
        if self.method == "agc":
            self.clipped += int(adaptive_clip_grad_(self.agc_params, clip_factor=0.01, eps=1e-3) > 0)
        else:
            self.clipped += int(clip_grads_(grads, self.rule.step(norm), norm))
        return True


def run(job: tuple[str, str, float, int, int, int]) -> dict:
    task, method, lr, steps, warmup, seed = job
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    if task == "adding":
        model: nn.Module = AddingRNN()
        baseline = ADDING_BASELINE

        def loss_of(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            x, y = batch
            return nn.functional.mse_loss(model(x), y)

        def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
            return adding_batch(32, 100, gen)

        val = None
    else:
        ids, vocab, baseline = lm_corpus()
        split = int(0.9 * len(ids))
        train_ids, val_ids = ids[:split], ids[split:]
        model = CharLSTM(vocab)
        val_gen = torch.Generator().manual_seed(1234)
        val = [lm_batch(val_ids, LM_BATCH, val_gen) for _ in range(LM_VAL_BATCHES)]

        def loss_of(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            x, y = batch
            return nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())

        def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
            return lm_batch(train_ids, LM_BATCH, gen)

    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    clipper = Clipper(method, model)
    params = list(model.parameters())
    losses: list[float] = []
    diverged = False
    for _ in range(steps):
        loss = loss_of(next_batch())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        value = float(loss.detach())
        if not math.isfinite(value):
            if method in ADAPTIVE:
                clipper(params)  # the callback skips the step and counts it
                if clipper.consecutive_nonfinite >= 10:
                    diverged = True
                    break
                sched.step()
                continue
            diverged = True
            break
        losses.append(value)
        if clipper(params):
            opt.step()
        elif clipper.consecutive_nonfinite >= 10:
            diverged = True
            break
        sched.step()
    if val is not None and not diverged:
        with torch.no_grad():
            raw = statistics.fmean(float(loss_of(b)) for b in val)
    else:
        tail = losses[-max(1, steps // 10) :]
        raw = statistics.fmean(tail) if tail else math.inf
    limit = 2 * baseline if task == "adding" else math.log(vocab)  # lm: worse than the untrained model
    if not math.isfinite(raw) or raw > limit:
        diverged = True
    scale = 1.0 if task == "adding" else 1.0 / math.log(2)  # lm: nats -> bits per character
    return {
        "task": task,
        "method": method,
        "lr": lr,
        "final": raw * scale if not diverged else math.inf,
        "raw_final": raw * scale,
        "baseline": baseline * scale,
        "diverged": diverged,
        "clipped": clipper.clipped / max(len(losses), 1),
        "curve": losses[:: max(1, steps // 100)],
    }


def table(task: str, results: list[dict], lrs: list[float]) -> str:
    unit = "MSE" if task == "adding" else "bits/char"
    lines = [
        f"| method | stable fraction | median final {unit} | best final {unit} | clipped steps | "
        + " | ".join(f"lr={lr:g}" for lr in lrs)
        + " |",
        "|" + "---|" * (5 + len(lrs)),
    ]
    for m in METHODS[task]:
        rows = sorted((r for r in results if r["task"] == task and r["method"] == m), key=lambda r: r["lr"])
        finals = [r["final"] for r in rows]
        stable = [r for r in rows if not r["diverged"]]
        clipped = f"{statistics.median(r['clipped'] for r in stable):.0%}" if stable and m != "none" else "-"
        cells = " | ".join("div" if r["diverged"] else f"{r['final']:.3f}" for r in rows)
        med, best = statistics.median(finals), min(finals)
        lines.append(
            f"| {m} | {len(stable) / len(rows):.2f} | {'div' if math.isinf(med) else f'{med:.3f}'} | "
            f"{'div' if math.isinf(best) else f'{best:.3f}'} | {clipped} | {cells} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=["adding", "lm", "both"], default="both")
    parser.add_argument("--quick", action="store_true", help="3 learning rates, 40 steps")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (adding 600, lm 400)")
    parser.add_argument("--warmup", type=int, default=0, help="linear LR warm-up steps (0: none)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "--plot", default=str(Path(__file__).resolve().parents[1] / "docs" / "clip_stability.png")
    )
    args = parser.parse_args()
    tasks = ["adding", "lm"] if args.task == "both" else [args.task]
    default_steps = {"adding": 600, "lm": 400}
    lrs = {t: (QUICK_LRS if args.quick else LRS)[t] for t in tasks}
    steps = {t: args.steps or (40 if args.quick else default_steps[t]) for t in tasks}
    jobs = [(t, m, lr, steps[t], args.warmup, 0) for t in tasks for lr in lrs[t] for m in METHODS[t]]
    start = time.perf_counter()
    with mp.get_context("spawn").Pool(args.workers) as pool:
        results = pool.map(run, jobs, chunksize=1)
    elapsed = time.perf_counter() - start

    print(f"clip stability sweep ({elapsed:.0f}s, warm-up {args.warmup} steps)\n")
    for t in tasks:
        base = next(r["baseline"] for r in results if r["task"] == t)
        if t == "adding":
            print(f"adding problem T=100, tanh RNN H=64, SGD batch 32, {steps[t]} steps")
            print(f"baseline (predict the mean) MSE = {base:.3f}; diverged = non-finite or final > {2 * base:.3f}")
        else:
            print(f"char LM on the stdlib source, LSTM 1x128, SGD batch 32x{LM_WINDOW}, {steps[t]} steps")
            print(f"unigram entropy = {base:.3f} bits/char (context-free); diverged = non-finite or val above "
                  "log2 V (the uniform prediction)")
        print(table(t, results, lrs[t]) + "\n")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        base = next(r["baseline"] for r in results if r["task"] == t)
        ceiling = 1.0 if t == "adding" else 1.5 * base  # where diverged runs are drawn
        for m in METHODS[t]:
            rows = sorted((r for r in results if r["task"] == t and r["method"] == m), key=lambda r: r["lr"])
            ys = [ceiling if r["diverged"] else min(r["raw_final"], ceiling) for r in rows]
            style = "-o" if m in ADAPTIVE else "--x"
            ax.plot([r["lr"] for r in rows], ys, style, label=m)
        ax.axhline(base, color="gray", lw=0.8, ls=":", label="context-free baseline")
        ax.set_xscale("log")
        ax.set_xlabel("SGD learning rate")
        if t == "adding":
            ax.set_ylabel(f"final MSE (diverged drawn at {ceiling:g})")
            ax.set_title(f"Adding problem T=100, tanh RNN: {steps[t]} steps")
        else:
            ax.set_ylabel(f"val bits/char (diverged drawn at {ceiling:.2f})")
            ax.set_title(f"Char LSTM LM, stdlib source: {steps[t]} steps")
        ax.set_ylim(0, ceiling * 1.05)
        ax.legend(fontsize=7, ncol=2)
    if args.warmup:
        fig.suptitle(f"linear LR warm-up over {args.warmup} steps", fontsize=9)
    fig.tight_layout()
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=110)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
