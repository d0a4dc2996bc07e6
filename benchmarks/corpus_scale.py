
"""Corpus scale: TextStreamDataModule's memory and setup time from megabytes to a gigabyte of text.

Generates text files of the requested sizes from an embedded corpus (the pydoc topics and the standard library's
own sources, repeated; every repetition has ~2% of its ASCII letters replaced at random, so the file is not
trivially compressible and no two repetitions are equal), then, each in a FRESH process:

- first ``setup()``: an empty cache; ``prepare_data()`` + ``setup()`` tokenise the file (time, MB/s);
- cached ``setup()``: a new process opening the cache entry the first run wrote (time);

and, in both processes, ``setup()`` followed by N training batches of a small ``RNNLanguageModel`` under
Lightning's ``Trainer``: peak RSS (VmHWM) and peak anonymous RSS (RssAnon, sampled every 2 ms), each also as
"extra" over the process's RSS right before ``setup()``. The summary gives the extra peak RSS per extra
character between the smallest and the 100 MB file (target <= 2.5 bytes), tokenisation throughput (target
>= 20 MB/s on 2 cores) and cached setup time (target <= 2 s).

Usage (idle machine; pin to 2 cores for the 2-core target):
    taskset -c 0,1 python benchmarks/corpus_scale.py                       # 4M,10M,100M,1G: ~10 minutes
    python benchmarks/corpus_scale.py --sizes 4M,10M --batches 20          # seconds
    python benchmarks/corpus_scale.py --level word --min-freq 5 --sizes 4M,100M
      (the perturbed text has many distinct words: the model's full softmax over them dominates the training
      memory; the "setup RSS" column is the data module's alone)
Options: --workdir DIR keeps the generated files (and reuses them); --batch-size, --bptt, --batches.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_UNITS = {"K": 10**3, "M": 10**6, "G": 10**9}


def parse_size(text: str) -> int:
    text = text.strip().upper().rstrip("B")
    if text and text[-1] in _UNITS:
        return int(float(text[:-1]) * _UNITS[text[-1]])
    return int(text)


# ------------------------------------------------------------------------------ data
def base_corpus(max_bytes: int = 16_000_000) -> bytes:
    """The pydoc topics and the standard library's top-level sources, UTF-8, about ``max_bytes``."""
    import pydoc_data.topics as topics

    from lightning_rnn.data import stdlib_corpus_files

    parts = [text.encode("utf-8") for _, text in sorted(topics.topics.items())]
    total = sum(map(len, parts))
    for path in stdlib_corpus_files(None):
        if total >= max_bytes:
            break
        data = path.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        parts.append(data)
        total += len(data)
    return b"\n".join(parts)


def generate(path: Path, size: int, seed: int = 0) -> None:
    """Write ``size`` bytes (cut at a line end) of repeated, perturbed base corpus to ``path``."""
    import numpy as np

    base = np.frombuffer(base_corpus(), dtype=np.uint8)
    letters = ((base >= 65) & (base <= 90)) | ((base >= 97) & (base <= 122))  # ASCII: never inside a UTF-8 sequence
    alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)
    rng = np.random.default_rng(seed)
    written = 0
    with open(path, "wb") as f:
        while written < size:
            block = base.copy()
            flip = letters & (rng.random(block.size) < 0.02)
            block[flip] = rng.choice(alphabet, size=int(flip.sum()))
            block = block[: size - written]
            if written + block.size >= size:  # end on a line boundary (whole UTF-8 sequences)
                block = block[: int(np.flatnonzero(block == 10)[-1]) + 1] if (block == 10).any() else block[:0]
                if block.size == 0:
                    break
            f.write(block.tobytes())
            written += block.size


# ------------------------------------------------------------------------------ child
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class _AnonPeak(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = _status_kib("RssAnon")
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, _status_kib("RssAnon"))
            time.sleep(0.002)


def child(args: argparse.Namespace) -> None:
    import lightning.pytorch as pl
    import torch

    from lightning_rnn import RNNConfig, RNNLanguageModel
    from lightning_rnn.data import TextStreamDataModule

    torch.manual_seed(0)
    dm = TextStreamDataModule(args.file, batch_size=args.batch_size, bptt=args.bptt, level=args.level,
                              val_fraction=0.05, test_fraction=0.05, cache_dir=args.cache_dir,
                              min_freq=args.min_freq)
    base_rss, base_anon = _status_kib("VmRSS"), _status_kib("RssAnon")
    sampler = _AnonPeak()
    sampler.start()
    start = time.perf_counter()
    dm.prepare_data()
    dm.setup("fit")
    setup_s = time.perf_counter() - start
    setup_hwm = _status_kib("VmHWM")
    model = RNNLanguageModel(len(dm.vocab), encoder=RNNConfig(hidden_size=64), embedding_dim=32)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=args.batches, limit_val_batches=0, num_sanity_val_steps=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(model, datamodule=dm)
    sampler.stop.set()
    sampler.join()
    corpus_chars = sum(ids.numel() for ids, _ in dm._splits.values())
    print(json.dumps({
        "setup_s": setup_s, "tokens": corpus_chars, "vocab": len(dm.vocab),
        "dtype": str(dm._splits["train"][0].dtype), "base_rss_mib": base_rss / 1024, "base_anon_mib": base_anon / 1024,
        "setup_peak_rss_mib": setup_hwm / 1024, "peak_rss_mib": _status_kib("VmHWM") / 1024,
        "peak_anon_mib": sampler.peak / 1024, "steps": int(trainer.global_step),
    }))


# ------------------------------------------------------------------------------ parent
def run_child(args: argparse.Namespace, file: Path, cache_dir: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", "--file", str(file), "--cache-dir", str(cache_dir),
           "--level", args.level, "--batch-size", str(args.batch_size), "--bptt", str(args.bptt),
           "--batches", str(args.batches), "--min-freq", str(args.min_freq)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed for {file}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="4M,10M,100M,1G", help="comma-separated file sizes (K/M/G = 10^3/6/9 bytes)")
    parser.add_argument("--level", default="char", choices=["char", "word"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--bptt", type=int, default=128)
    parser.add_argument("--batches", type=int, default=100, help="training batches after setup()")
    parser.add_argument("--min-freq", type=int, default=1, help="vocabulary min_freq")
    parser.add_argument("--workdir", default=None, help="keep generated files here (default: a temporary directory)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    sizes = sorted(parse_size(s) for s in args.sizes.split(","))
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="corpus-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# corpus_scale: level={args.level} min_freq={args.min_freq} batch_size={args.batch_size} bptt={args.bptt} batches={args.batches} "
          f"cpus={len(os.sched_getaffinity(0))} workdir={work}")
    header = (f"{'size':>7} {'tokens':>11} {'vocab':>7} {'dtype':>7} | {'first s':>8} {'MB/s':>7} {'setup RSS':>9} "
              f"{'peak RSS':>9} {'peak anon':>9} {'+RSS':>8} | {'cached s':>8} {'peak RSS':>9} {'peak anon':>9} "
              f"{'+RSS':>8}   (MiB; setup RSS: peak at the end of setup(), before the model exists)")
    print(header)
    rows = []
    try:
        for size in sizes:
            file = work / f"corpus_{size}.txt"
            if not file.exists() or file.stat().st_size > size or file.stat().st_size < size * 0.99:
                generate(file, size)
            cache = work / f"cache_{size}_{args.level}"
            shutil.rmtree(cache, ignore_errors=True)
            first = run_child(args, file, cache)
            cached = run_child(args, file, cache)
            mb = file.stat().st_size / 1e6
            rows.append((size, mb, first, cached))
            print(f"{size / 1e6:>6.0f}M {first['tokens']:>11,} {first['vocab']:>7,} "
                  f"{first['dtype'].replace('torch.', ''):>7} | "
                  f"{first['setup_s']:>8.2f} {mb / first['setup_s']:>7.1f} {first['setup_peak_rss_mib']:>9.0f} "
                  f"{first['peak_rss_mib']:>9.0f} "
                  f"{first['peak_anon_mib']:>9.0f} {first['peak_rss_mib'] - first['base_rss_mib']:>8.0f} | "
                  f"{cached['setup_s']:>8.2f} {cached['peak_rss_mib']:>9.0f} {cached['peak_anon_mib']:>9.0f} "
                  f"{cached['peak_rss_mib'] - cached['base_rss_mib']:>8.0f}", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    if len(rows) >= 2:
        small = rows[0]
        big = max((r for r in rows if r[0] <= 100 * 10**6), key=lambda r: r[0], default=rows[-1])
        if big is small:
            big = rows[1]
        d_chars = big[2]["tokens"] - small[2]["tokens"] if args.level == "char" else (big[1] - small[1]) * 1e6
        for label, k in (("first", 2), ("cached", 3)):
            d_rss = (big[k]["peak_rss_mib"] - small[k]["peak_rss_mib"]) * 2**20
            d_anon = (big[k]["peak_anon_mib"] - small[k]["peak_anon_mib"]) * 2**20
            print(f"extra peak RSS per extra character ({small[0] / 1e6:.0f}M -> {big[0] / 1e6:.0f}M, {label} run): "
                  f"{d_rss / d_chars:.3f} bytes (anonymous: {d_anon / d_chars:.3f}); target <= 2.5")
    if len(rows) >= 2:
        d_setup = (big[2]["setup_peak_rss_mib"] - small[2]["setup_peak_rss_mib"]) * 2**20
        print(f"extra setup() peak RSS per extra character (first run, tokenising): {d_setup / d_chars:.3f} bytes")
    print(f"tokenisation throughput (first setup, largest file): {rows[-1][1] / rows[-1][2]['setup_s']:.1f} MB/s; "
          f"target >= 20 MB/s on 2 cores")
    print(f"cached setup, largest file: {rows[-1][3]['setup_s']:.2f} s; target <= 2 s")


if __name__ == "__main__":
    main()
