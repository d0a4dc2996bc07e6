"""AdaptiveTBPTT vs fixed truncation lengths on a task whose dependency length D is known.

Delayed copy (tagging): inputs are i.i.d. tokens from a vocabulary of V symbols; the target at step t is the
input at step t − D (no target for t < D). A model must carry each token D steps forward, so TBPTT with a
chunk length k <= D cannot teach it (no gradient reaches D steps back) and stays at the chance loss ln V;
k > D can, but only the k − D targets of a chunk whose source lies in the same chunk teach it, so k = D + 2
learns slowly and a few times D is needed; k = T gives few optimizer steps per token. Every method trains the same GRU on the same batches (the same number of tokens); fixed
k in {D/2, D+2, 2D, 4D, T} against ``AdaptiveTBPTT`` (started at k = T, not told D). Reported: final validation
cross-entropy (nats per target; chance = ln V), training tokens/s (probes included), and the k each run
ended with. One run per method and seed (``--seeds N`` repeats every method with N seeds), run one after
the other (not interleaved repetitions: a run is a whole training), so tokens/s ratios carry a few percent
of noise.

Run::

    python benchmarks/adaptive_tbptt.py            # ~1.5 minutes on 2 idle CPU cores
    python benchmarks/adaptive_tbptt.py --seeds 3  # each method with 3 seeds: mean / min / max val CE
    python benchmarks/adaptive_tbptt.py --quick    # seconds (smoke test)
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer, seed_everything
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_rnn import TBPTTModule, TBPTTStep
from lightning_rnn.callbacks import AdaptiveTBPTT
from lightning_rnn.nn import RNNStack

IGNORE = -100


def delayed_copy_batch(n: int, length: int, vocab: int, delay: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Inputs (n, length) token ids; targets (n, length): inputs shifted right by ``delay``, IGNORE before."""
    x = torch.randint(0, vocab, (n, length), generator=g)
    y = torch.full_like(x, IGNORE)
    y[:, delay:] = x[:, :-delay]
    return x, y


class DelayedCopy(TBPTTModule):
    """Embedding -> GRU (fused kernel in training, ``forward_steps`` in the probe) -> Linear, per-step CE."""

    def __init__(self, vocab: int, hidden: int, tbptt_steps: int, lr: float) -> None:
        super().__init__(tbptt_steps=tbptt_steps, gradient_clip_val=1.0)
        self.vocab = vocab
        self.embed = nn.Embedding(vocab, 16)
        self.rnn = RNNStack("gru", 16, hidden)
        self.head = nn.Linear(hidden, vocab)
        self.lr = lr

    def tbptt_step(self, chunk: Any, state: Any) -> TBPTTStep:
        x, y = chunk  # (N, k), (N, k)
        out, state = self.rnn(self.embed(x), state)  # (N, k, H)
        logits = self.head(out)  # (N, k, V)
        valid = (y != IGNORE).sum()
        if int(valid) == 0:
            return TBPTTStep(logits.sum() * 0.0, state, weight=valid)
        loss = F.cross_entropy(logits.transpose(1, 2), y, ignore_index=IGNORE)
        return TBPTTStep(loss, state, weight=valid)

    def gradient_flow_probe(self, batch: Any, max_steps: int | None = None) -> tuple[list[Any], Tensor]:
        x, y = batch
        if max_steps is not None:
            x, y = x[:, :max_steps], y[:, :max_steps]
        _, states = self.rnn.forward_steps(self.embed(x))  # L states, each (layers, N, H)
        top = torch.stack([s[-1] for s in states], 1)  # (N, L, H): the loss at t reads states[t] itself
        losses = F.cross_entropy(self.head(top).transpose(1, 2), y, ignore_index=IGNORE, reduction="none")
        return states, losses.masked_fill(y == IGNORE, float("nan"))  # (N, L), NaN where no target

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class TrainTimer(Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        self.t0 = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.seconds = time.perf_counter() - self.t0


def run(name: str, k: int, args: argparse.Namespace, adaptive: bool, seed: int = 0) -> dict[str, Any]:
    seed_everything(seed, verbose=False)
    g = torch.Generator().manual_seed(1 + 1000 * seed)  # seed 0: the data of the single-seed table
    train = [delayed_copy_batch(args.batch_size, args.length, args.vocab, args.delay, g) for _ in range(args.batches)]
    val = delayed_copy_batch(256, args.length, args.vocab, args.delay, torch.Generator().manual_seed(2))
    model = DelayedCopy(args.vocab, args.hidden, k, args.lr)
    timer = TrainTimer()
    callbacks: list[Callback] = [timer]
    cb = None
    if adaptive:
        cb = AdaptiveTBPTT(every_n_steps=args.every, bias_bound=args.bias_bound, min_steps=args.min_steps,
                           max_steps=args.length, probe_steps=args.length - 4, num_targets=4)
        callbacks.append(cb)
    trainer = Trainer(max_epochs=args.epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks,
                      accelerator="cpu", devices=1)
    trainer.fit(model, DataLoader(train, batch_size=None, shuffle=False))
    model.eval()
    with torch.no_grad():
        x, y = val
        logits, _ = model.rnn(model.embed(x))
        loss = float(F.cross_entropy(model.head(logits).transpose(1, 2), y, ignore_index=IGNORE))
    tokens = args.batches * args.epochs * args.batch_size * args.length
    ks = [h["steps"] for h in cb.history] if cb is not None else []
    return {"name": name, "k": model.tbptt_steps, "loss": loss, "tok_s": tokens / timer.seconds,
            "steps": trainer.global_step, "ks": ks, "seed": seed}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few seconds: tiny sizes")
    p.add_argument("--delay", type=int, default=8, help="D, the dependency length")
    p.add_argument("--length", type=int, default=128, help="T, sequence length of a batch")
    p.add_argument("--vocab", type=int, default=8)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=150)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--bias-bound", type=float, default=0.1)
    p.add_argument("--min-steps", type=int, default=2)
    p.add_argument("--every", type=int, default=50, help="AdaptiveTBPTT probes every this many optimizer steps")
    p.add_argument("--seeds", type=int, default=1, help="repeat every method with seeds 0..N-1 (init and data)")
    args = p.parse_args(argv)
    if args.quick:
        args.delay, args.length, args.hidden, args.batches, args.epochs, args.every = 4, 16, 16, 6, 1, 3
    d = args.delay
    fixed = [("fixed k=D/2", max(2, d // 2)), ("fixed k=D+2", d + 2), ("fixed k=2D", 2 * d), ("fixed k=4D", 4 * d)]
    seen: set[int] = set()
    fixed = [(name, k) for name, k in fixed if k < args.length and not (k in seen or seen.add(k))]
    fixed.append(("fixed k=T", args.length))
    methods = [(name, k, False) for name, k in fixed]
    # AdaptiveTBPTT starts from the whole sequence (k=T) and shrinks k to what the measured gradient needs
    methods.append(("AdaptiveTBPTT", args.length, True))
    runs = [run(name, k, args, adaptive, seed) for seed in range(args.seeds) for name, k, adaptive in methods]
    print(f"delayed copy: D={d}, T={args.length}, V={args.vocab} (chance ln V = {math.log(args.vocab):.3f}), "
          f"GRU {args.hidden}, {args.batches * args.epochs} batches of {args.batch_size}x{args.length}, "
          f"{args.seeds} seed(s)")
    ref_tok = statistics.fmean(r["tok_s"] for r in runs if r["name"] == "fixed k=T")
    results = []
    if args.seeds == 1:
        print(f"{'method':<16} {'final k':>8} {'val CE':>8} {'opt steps':>10} {'tokens/s':>10} {'tok/s vs k=T':>13}")
    else:
        print(f"{'method':<16} {'final k':>12} {'val CE mean':>12} {'min':>7} {'max':>7} {'tokens/s':>10} "
              f"{'tok/s vs k=T':>13}")
    for name, _, _ in methods:
        rows = [r for r in runs if r["name"] == name]
        loss = statistics.fmean(r["loss"] for r in rows)
        tok = statistics.fmean(r["tok_s"] for r in rows)
        ks = [r["k"] for r in rows]
        results.append({**rows[0], "loss": loss, "tok_s": tok, "losses": [r["loss"] for r in rows], "k": ks[0],
                        "final_ks": ks})
        if args.seeds == 1:
            r = rows[0]
            print(f"{name:<16} {r['k']:>8} {loss:>8.3f} {r['steps']:>10} {tok:>10.0f} {tok / ref_tok:>13.2f}")
        else:
            kk = "/".join(str(k) for k in ks)
            print(f"{name:<16} {kk:>12} {loss:>12.3f} {min(r['loss'] for r in rows):>7.3f} "
                  f"{max(r['loss'] for r in rows):>7.3f} {tok:>10.0f} {tok / ref_tok:>13.2f}")
    for r in runs:
        if r["name"] == "AdaptiveTBPTT":
            print(f"AdaptiveTBPTT k after each probe (seed {r['seed']}): {r['ks']}")
    return results


if __name__ == "__main__":
    main()
