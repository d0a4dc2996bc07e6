
"""AWD-LSTM ablation: the full recipe vs the same model with each piece removed, and vs no regularization.

A word-level LSTM language model on the Python documentation's help topics (``pydoc_data.topics``, English
prose on every machine, ~65k words: train / validation / test = 80 / 10 / 10 %, contiguous) trained with the
AWD-LSTM recipe (Merity, Keskar & Socher 2017): tied weights, embedding dropout, locked dropout on the
embedding output / between layers / on the output, DropConnect on W_hh ("weight drop"), AR/TAR,
variable-length BPTT, NT-ASGD (SGD, then iterate averaging), clipping 0.25, at the reference code's dropout
and AR/TAR values but a smaller size (``--size``, ``--layers``, ``--vocab``) and SGD learning rate 10 (``--lr``;
the paper's 30 makes the validation perplexity of these small models jump by up to 2.5x between epochs). Rows:

- ``full``: every piece;
- ``- weight drop``, ``- embedding dropout``, ``- locked dropout``, ``- AR/TAR``, ``- NT-ASGD (plain SGD)``,
  ``- variable BPTT (fixed)``: the full recipe with that one piece removed;
- ``+ zoneout``: the full recipe plus zoneout (``RNNLanguageModel(zoneout=p)``); skipped with a note when the
  installed ``RNNLanguageModel`` has no ``zoneout`` argument;
- ``no regularization``: the same LSTM LM (tied weights, SGD, clipping) with no dropout of any kind, no AR/TAR,
  fixed BPTT, plain SGD.

Every row trains the same number of epochs with the same seeds (``--seeds``, default 3), validating
``--evals-per-epoch`` times per epoch (NT-ASGD's trigger counts these evaluations). Reported per row: the
held-out (test split) perplexity of the model at the end of training (for NT-ASGD the averaged weights) and
the best validation perplexity during training, as mean ± standard deviation over seeds (min–max in the
JSON), and the train / validation perplexity curves (mean over seeds) saved as a plot. Then, in one process
with ``--threads`` threads, training tokens/s of the full recipe (and of ``+ zoneout``) against the plain LSTM
LM: the regularizers' cost (NT-ASGD's averaging, one fused add per optimizer step after the switch, is not
included: the timed steps are before it).

Run::

    python benchmarks/awd_ablation.py                       # ~15-25 min on 2 idle CPU cores (default budget)
    python benchmarks/awd_ablation.py --epochs 4 --seeds 3  # a smaller budget
    python benchmarks/awd_ablation.py --quick               # a minute: smoke test of every row
    python benchmarks/awd_ablation.py --skip-throughput     # perplexities only (timings need an idle machine)

Writes ``docs/awd_ablation.png`` (``--plot``) and ``docs/awd_ablation.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROWS = [
    "full",
    "- weight drop",
    "- embedding dropout",
    "- locked dropout",
    "- AR/TAR",
    "- NT-ASGD (plain SGD)",
    "- variable BPTT (fixed)",
    "+ zoneout",
    "no regularization",
]

#: the full recipe: AWD-LSTM's reference values (salesforce/awd-lstm-lm main.py) at a smaller size
FULL: dict[str, Any] = dict(
    embedding_dropout=0.1,
    input_dropout=0.65,
    layer_dropout=0.3,
    output_dropout=0.4,
    recurrent_dropout=0.5,
    ar_alpha=2.0,
    tar_beta=1.0,
    variable_bptt=True,
)
NO_REG: dict[str, Any] = dict(
    embedding_dropout=0.0, input_dropout=0.0, layer_dropout=0.0, output_dropout=0.0, recurrent_dropout=0.0,
    ar_alpha=0.0, tar_beta=0.0, variable_bptt=False,
)


def row_config(row: str, zoneout: float) -> tuple[dict[str, Any], bool]:
    """Model keyword arguments of a row and whether it uses NT-ASGD."""
    kw, nt_asgd = dict(FULL), True
    if row == "- weight drop":
        kw["recurrent_dropout"] = 0.0
    elif row == "- embedding dropout":
        kw["embedding_dropout"] = 0.0
    elif row == "- locked dropout":
        kw.update(input_dropout=0.0, layer_dropout=0.0, output_dropout=0.0)
    elif row == "- AR/TAR":
        kw.update(ar_alpha=0.0, tar_beta=0.0)
    elif row == "- NT-ASGD (plain SGD)":
        nt_asgd = False
    elif row == "- variable BPTT (fixed)":
        kw["variable_bptt"] = False
    elif row == "+ zoneout":
        kw["zoneout"] = zoneout
    elif row == "no regularization":
        kw, nt_asgd = dict(NO_REG), False
    elif row != "full":
        raise ValueError(f"Expected a row in {ROWS}, got {row!r}")
    return kw, nt_asgd


def make_data(args: argparse.Namespace):
    from lightning_rnn.data import TextStreamDataModule

    return TextStreamDataModule("stdlib:pydoc_topics", level="word", batch_size=args.batch_size,
                                eval_batch_size=args.eval_batch_size, bptt=args.bptt, val_fraction=0.1,
                                test_fraction=0.1, max_size=args.vocab)


def make_model(args: argparse.Namespace, vocab_size: int, kw: dict[str, Any]):
    from lightning_rnn import RNNConfig, RNNLanguageModel

    encoder_fields = {f.name for f in dataclasses.fields(RNNConfig)}
    encoder = RNNConfig(hidden_size=args.size, num_layers=args.layers, cell="lstm",
                        **{k: v for k, v in kw.items() if k in encoder_fields})
    return RNNLanguageModel(vocab_size, args.size, encoder, tie_weights=True, tbptt_steps=args.tbptt, optimizer="sgd",
                            lr=args.lr, weight_decay=1.2e-6, gradient_clip_val=0.25,
                            **{k: v for k, v in kw.items() if k not in encoder_fields})


def _curves_callback():
    from lightning.pytorch import Callback

    class Curves(Callback):
        """Mean training CE between evaluations and the validation CE of each evaluation."""

        def __init__(self) -> None:
            self.rows: list[dict[str, float]] = []
            self._sum, self._count = 0.0, 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self._sum += float(loss)
            self._count += 1

        def on_validation_end(self, trainer, pl_module) -> None:
            if trainer.sanity_checking:
                return
            train = self._sum / max(self._count, 1)
            self._sum, self._count = 0.0, 0
            val = float(trainer.callback_metrics["val/loss"])
            self.rows.append({"step": int(trainer.global_step), "train_ce": train, "val_ce": val})

    return Curves()


def run_one(job: tuple[str, int, dict[str, Any]]) -> dict[str, Any]:
    """Train one row with one seed; return its curves, final test perplexity and best validation perplexity."""
    row, seed, argd = job
    import torch
    from lightning.pytorch import Trainer, seed_everything

    from lightning_rnn.callbacks import NTASGD

    torch.set_num_threads(1)
    args = argparse.Namespace(**argd)
    seed_everything(seed, verbose=False)
    data = make_data(args)
    kw, nt_asgd = row_config(row, args.zoneout)
    model = make_model(args, data.vocab_size, kw)
    curves = _curves_callback()
    callbacks = [curves] + ([NTASGD(n=args.nonmono, monitor="val/loss")] if nt_asgd else [])
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=args.epochs, val_check_interval=1.0 / args.evals_per_epoch,
                      callbacks=callbacks, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, deterministic=False)
    start, cpu = time.perf_counter(), time.process_time()
    trainer.fit(model, data)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    test = trainer.test(model, data, verbose=False)[0]
    switch = next((cb.switch_step for cb in callbacks if isinstance(cb, NTASGD)), None)
    return {
        "row": row,
        "seed": seed,
        "test_ppl": math.exp(test["test/loss"]),
        "best_val_ppl": math.exp(min(r["val_ce"] for r in curves.rows)),
        "curves": curves.rows,
        "nt_asgd_switch_step": switch,
        "train_seconds": seconds,
        "train_cpu_seconds": cpu,
        "vocab_size": data.vocab_size,
    }


def throughput(row: str, args: argparse.Namespace) -> float:
    """Training tokens/s of one row: ``--timed-batches`` batches after ``--warmup-batches``, one process."""
    import torch
    from lightning.pytorch import Callback, Trainer, seed_everything

    torch.set_num_threads(args.threads)
    seed_everything(0, verbose=False)
    data = make_data(args)
    kw, _ = row_config(row, args.zoneout)
    model = make_model(args, data.vocab_size, kw)

    class Clock(Callback):
        def __init__(self) -> None:
            self.start = self.end = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == args.warmup_batches:
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.end = time.perf_counter()

    clock = Clock()
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=1,
                      limit_train_batches=args.warmup_batches + args.timed_batches, limit_val_batches=0,
                      callbacks=[clock], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, data)
    return args.timed_batches * args.batch_size * args.bptt / (clock.end - clock.start)


def _fmt(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:8.1f} ± {sd:5.1f}"


def plot(results: list[dict[str, Any]], rows: list[str], path: Path, budget: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for row in rows:
        runs = [r["curves"] for r in results if r["row"] == row]
        n = min(len(c) for c in runs)
        steps = [runs[0][i]["step"] for i in range(n)]
        style = dict(lw=2.2, color="black", zorder=3) if row == "full" else dict(lw=2.0, color="tab:red", ls="--") \
            if row == "no regularization" else dict(lw=1.2)
        for ax, key in ((ax_train, "train_ce"), (ax_val, "val_ce")):
            mean = [math.exp(statistics.fmean(c[i][key] for c in runs)) for i in range(n)]
            ax.plot(steps, mean, label=row, **style)
    ax_train.set_title("training perplexity (mean over seeds; with dropout)")
    ax_val.set_title("validation perplexity (mean over seeds)")
    for ax in (ax_train, ax_val):
        ax.set_xlabel("optimizer steps (TBPTT chunks)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    ax_train.set_ylabel("perplexity")
    ax_val.legend(fontsize=8)
    fig.suptitle(f"AWD-LSTM ablation on pydoc_data.topics (word level): {budget}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20, help="training budget: epochs per run (the same for every row)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--evals-per-epoch", type=int, default=1, help="validations per epoch (NT-ASGD counts them)")
    parser.add_argument("--nonmono", type=int, default=5, help="NT-ASGD's non-monotone interval n")
    parser.add_argument("--size", type=int, default=96, help="embedding = hidden size of every layer (tied)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=4000, help="most frequent words kept; the rest is <unk>")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--eval-batch-size", type=int, default=10)
    parser.add_argument("--bptt", type=int, default=140, help="tokens per batch (split into chunks of --tbptt)")
    parser.add_argument("--tbptt", type=int, default=35, help="BPTT length (variable BPTT draws around it)")
    parser.add_argument("--lr", type=float, default=10.0,
                        help="SGD learning rate (the paper's 30 makes validation jump by up to 2.5x between epochs at "
                             "these sizes)")
    parser.add_argument("--zoneout", type=float, default=0.1, help="p of the '+ zoneout' row")
    parser.add_argument("--rows", nargs="*", default=None, help=f"subset of {ROWS}")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="runs in parallel (1 thread each)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="threads for the tokens/s part")
    parser.add_argument("--warmup-batches", type=int, default=5)
    parser.add_argument("--timed-batches", type=int, default=30)
    parser.add_argument("--skip-throughput", action="store_true", help="perplexities only")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 epoch, 2 seeds, tiny model")
    parser.add_argument("--plot", type=Path, default=None, help="default: docs/awd_ablation.png (--quick: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="default: docs/awd_ablation.json (--quick: a temp dir)")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.seeds, args.size, args.vocab, args.evals_per_epoch = 1, 2, 32, 1000, 3
        args.nonmono, args.timed_batches, args.warmup_batches = 1, 5, 2
    out = Path(tempfile.mkdtemp(prefix="awd-ablation-")) if args.quick else Path("docs")
    args.plot = args.plot or out / "awd_ablation.png"  # a smoke test never overwrites the documented figure
    args.json = args.json or out / "awd_ablation.json"
    rows = args.rows or list(ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {ROWS}")

    jobs = [(row, seed, vars(args)) for row in rows for seed in range(args.seeds)]
    print(f"{len(rows)} rows x {args.seeds} seeds = {len(jobs)} runs of {args.epochs} epochs, {args.jobs} in parallel")
    start = time.perf_counter()
    results: list[dict[str, Any]] = []
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        for result in pool.imap_unordered(run_one, jobs, chunksize=1):
            results.append(result)
            print(f"[{len(results)}/{len(jobs)}] {result['row']}, seed {result['seed']}: test ppl "
                  f"{result['test_ppl']:.1f}, best val ppl {result['best_val_ppl']:.1f}", flush=True)
    results.sort(key=lambda r: (rows.index(r["row"]), r["seed"]))
    print(f"trained in {time.perf_counter() - start:.0f} s; vocabulary {results[0]['vocab_size']} words\n")

    header = f"{'row':<26} {'test ppl (end)':>17} {'best val ppl':>17}  NT-ASGD switch step"
    print(header)
    print("-" * len(header))
    for row in rows:
        rs = [r for r in results if r["row"] == row]
        switches = [r["nt_asgd_switch_step"] for r in rs]
        switch = "-" if all(s is None for s in switches) else ", ".join("none" if s is None else str(s) for s in switches)
        print(f"{row:<26} {_fmt([r['test_ppl'] for r in rs]):>17} {_fmt([r['best_val_ppl'] for r in rs]):>17}  {switch}")
    print("(mean ± standard deviation over seeds)")

    speeds: dict[str, float] = {}
    if not args.skip_throughput:
        for row in [r for r in ("no regularization", "full", "+ zoneout") if r in rows]:
            speeds[row] = throughput(row, args)
        if "no regularization" in speeds:
            base = speeds["no regularization"]
            print(f"\ntraining tokens/s ({args.threads} threads, {args.timed_batches} batches of "
                  f"{args.batch_size}x{args.bptt} tokens):")
            for row, v in speeds.items():
                print(f"  {row:<20} {v:9.0f} tokens/s  ({v / base:.2f}x the plain LSTM LM)")

    budget = (f"{args.layers}x{args.size} LSTM, vocabulary {results[0]['vocab_size']}, {args.epochs} epochs, "
              f"{args.seeds} seeds")
    plot(results, rows, args.plot, budget)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": results,
                                     "tokens_per_second": speeds}, indent=1))
    print(f"\nplot: {args.plot}\nruns: {args.json}")


if __name__ == "__main__":
    main()
