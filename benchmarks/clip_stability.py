"""Learning-rate sweep: no clipping vs fixed thresholds vs AdaptiveGradientClipping's modes.

Task: the adding problem (Hochreiter & Schmidhuber 1997) with T = 100 steps: input (N, T, 2) = (uniform value,
marker), two markers (one in each half), target = sum of the two marked values. Predicting the mean scores
MSE = 2/12 = 0.167. Model: a 1-layer tanh ``nn.RNN`` (H = 64) and a linear read-out, plain SGD, batch 32 —
the setting in which Pascanu et al. (2013) saw gradients explode.

For speed the sweep is a plain PyTorch loop (one process per core, one thread each) that calls the very
functions ``AdaptiveGradientClipping.on_before_optimizer_step`` calls, in the same order
(``grad_norm`` -> skip if non-finite -> ``QuantileClipRule`` / ``ZScoreClipRule`` / ``adaptive_clip_grad_`` ->
``clip_grads_``), with the callback's defaults. Fixed clipping is ``torch.nn.utils.clip_grad_norm_``.

A run *diverges* when its loss becomes non-finite (or, for the adaptive modes, 10 consecutive non-finite
gradient norms stop it, as the callback would) or when its final loss (mean of the last 10% of steps) is above
2 x the mean-predictor baseline. Reported per method: the fraction of learning rates that do not diverge, the
median final loss over all learning rates (a diverged run counts as +inf), and the best final loss.

Usage:
    python benchmarks/clip_stability.py            # 6 learning rates (0.03-3), 600 steps: ~4 min on 2 free cores
    python benchmarks/clip_stability.py --quick    # 3 learning rates, 60 steps: well under a minute
Writes docs/clip_stability.png (and prints a Markdown table).
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

BASELINE = 2.0 / 12.0  # MSE of predicting the mean sum (1.0)
METHODS = ["none", "fixed 0.1", "fixed 1", "fixed 10", "quantile", "zscore", "agc"]


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


class Clipper:
    """The callback's decision path on plain tensors (see the module docstring)."""

    def __init__(self, method: str, model: AddingRNN) -> None:
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


def run(job: tuple[str, float, int, int]) -> dict:
    method, lr, steps, seed = job
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model = AddingRNN()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    clipper = Clipper(method, model)
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(seed + 1)
    losses: list[float] = []
    diverged = False
    for _ in range(steps):
        x, y = adding_batch(32, 100, gen)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        value = float(loss.detach())
        if not math.isfinite(value):
            if method in ("quantile", "zscore", "agc"):
                clipper(params)  # the callback skips the step and counts it
                if clipper.consecutive_nonfinite >= 10:
                    diverged = True
                    break
                continue
            diverged = True
            break
        losses.append(value)
        if clipper(params):
            opt.step()
        elif clipper.consecutive_nonfinite >= 10:
            diverged = True
            break
    tail = losses[-max(1, steps // 10) :]
    final = statistics.fmean(tail) if tail and not diverged else math.inf
    if not math.isfinite(final) or final > 2 * BASELINE:
        diverged = True
    return {
        "method": method,
        "lr": lr,
        "final": final if not diverged else math.inf,
        "raw_final": statistics.fmean(tail) if tail else math.inf,
        "diverged": diverged,
        "clipped": clipper.clipped / max(len(losses), 1),
        "curve": losses[:: max(1, steps // 100)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 learning rates, 60 steps")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "--plot", default=str(Path(__file__).resolve().parents[1] / "docs" / "clip_stability.png")
    )
    args = parser.parse_args()
    lrs = [0.03, 0.3, 3.0] if args.quick else [0.03, 0.076, 0.19, 0.48, 1.2, 3.0]
    steps = args.steps or (60 if args.quick else 600)
    jobs = [(m, lr, steps, 0) for lr in lrs for m in METHODS]
    start = time.perf_counter()
    with mp.get_context("spawn").Pool(args.workers) as pool:
        results = pool.map(run, jobs, chunksize=1)
    elapsed = time.perf_counter() - start

    print(f"adding problem T=100, tanh RNN H=64, SGD batch 32, {steps} steps, lrs={lrs} ({elapsed:.0f}s)")
    print(
        f"baseline (predict the mean) MSE = {BASELINE:.3f}; diverged = non-finite or final > {2 * BASELINE:.3f}\n"
    )
    header = "| method | stable fraction | median final MSE | best final MSE | " + " | ".join(
        f"lr={lr:g}" for lr in lrs
    )
    print(header + " |")
    print("|" + "---|" * (4 + len(lrs)))
    for m in METHODS:
        rows = [r for r in results if r["method"] == m]
        finals = [r["final"] for r in rows]
        stable = sum(not r["diverged"] for r in rows) / len(rows)
        med = statistics.median(finals)
        best = min(finals)
        cells = " | ".join("div" if r["diverged"] else f"{r['final']:.3f}" for r in rows)
        print(f"| {m} | {stable:.2f} | {med:.3f} | {best:.3f} | {cells} |")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for m in METHODS:
        rows = sorted((r for r in results if r["method"] == m), key=lambda r: r["lr"])
        ys = [
            min(r["raw_final"], 1.0) if math.isfinite(r["raw_final"]) and not r["diverged"] else 1.0
            for r in rows
        ]
        style = "-o" if m in ("quantile", "zscore", "agc") else "--x"
        ax.plot([r["lr"] for r in rows], ys, style, label=m)
    ax.axhline(BASELINE, color="gray", lw=0.8, ls=":", label="predict-the-mean")
    ax.set_xscale("log")
    ax.set_xlabel("SGD learning rate")
    ax.set_ylabel("final MSE (diverged drawn at 1.0)")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Adding problem T=100, tanh RNN: {steps} steps")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=120)
    print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
