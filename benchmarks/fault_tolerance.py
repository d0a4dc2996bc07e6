"""Fault tolerance of `lightning-rnn fit`: SIGKILL at a random moment, resume from `last.ckpt`, compare with the
uninterrupted run.

For each shipped config (shrunk from the command line; W&B off), three CLI processes: one killed with
SIGKILL at a random time after its first `runs/checkpoints/last.ckpt` (written every `--every` optimizer
steps), then `fit --ckpt_path runs/checkpoints/last.ckpt` to `--steps`, and an uninterrupted run to `--steps`.
Prints the step the killed run's checkpoint held and the largest absolute difference between the final
parameters of the resumed and the uninterrupted run (0 means the resume is exact).

    python benchmarks/fault_tolerance.py                      # 4 configs x 3 runs, a few minutes on CPU
    python benchmarks/fault_tolerance.py --configs tagger_delay --seeds 3
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
         "--report.max_new_tokens=0"]
SHRINK = {
    "char_lm": ["--model.init_args.embedding_dim=16", "--model.init_args.encoder.hidden_size=32",
                "--model.init_args.tbptt_steps=16", "--data.init_args.batch_size=8", "--data.init_args.bptt=32",
                "--data.init_args.max_bytes=200000", "--trainer.val_check_interval=50",
                "--trainer.limit_val_batches=2"],
    "classify_code": ["--model.init_args.embedding_dim=16", "--model.init_args.encoder.hidden_size=32",
                      "--data.init_args.packages=[json, email, http]", "--data.init_args.samples_per_class=80",
                      "--data.init_args.max_length=60", "--data.init_args.batch_size=16",
                      "--trainer.val_check_interval=10"],
    "tagger_delay": ["--model.init_args.encoder.hidden_size=16", "--model.init_args.tbptt_steps=8",
                     "--data.init_args.length=40", "--data.init_args.delay=3", "--data.init_args.num_train=64",
                     "--data.init_args.num_val=16", "--data.init_args.batch_size=8"],
    "seq2seq_reverse": ["--model.init_args.embedding_dim=16", "--model.init_args.encoder.hidden_size=16",
                        "--model.init_args.decoder_hidden_size=32", "--data.init_args.num_train=256",
                        "--data.init_args.num_val=32", "--data.init_args.num_test=32",
                        "--data.init_args.batch_size=16", "--trainer.val_check_interval=10"],
}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", PYTHONPATH=str(ROOT))
    return env


def _cmd(config: str, steps: int, every: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lightning_rnn.cli", "fit", "--config", str(ROOT / "examples" / f"{config}.yaml"),
            *SHRINK[config], *QUIET, f"--trainer.max_steps={steps}", f"--trainer.callbacks.every_n_steps={every}",
            *extra]


def _run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])


def trial(config: str, steps: int, every: int, rng: random.Random) -> tuple[int, int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        killed, reference = Path(tmp) / "killed", Path(tmp) / "reference"
        killed.mkdir()
        reference.mkdir()
        last = killed / "runs" / "checkpoints" / "last.ckpt"
        proc = subprocess.Popen(_cmd(config, 10 * steps, every), cwd=killed, env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not last.exists() and proc.poll() is None:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 2.0))  # a random moment after the first checkpoint
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        step = torch.load(last, weights_only=True)["global_step"]
        if step >= steps:
            raise RuntimeError(f"the killed run got to step {step} >= --steps {steps}: raise --steps")
        _run(_cmd(config, steps, every, "--ckpt_path", str(last)), killed)
        _run(_cmd(config, steps, every), reference)
        a = torch.load(last, weights_only=True)
        b = torch.load(reference / "runs" / "checkpoints" / "last.ckpt", weights_only=True)
        diff = max(float((a["state_dict"][k].float() - b["state_dict"][k].float()).abs().max()) for k in b["state_dict"])
        return step, int(b["global_step"]), diff


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=list(SHRINK), choices=list(SHRINK))
    p.add_argument("--steps", type=int, default=200, help="optimizer steps of the compared runs")
    p.add_argument("--every", type=int, default=10, help="last.ckpt every N optimizer steps")
    p.add_argument("--seeds", type=int, default=1, help="kills per config (random moments)")
    args = p.parse_args()
    rng = random.Random(0)
    print(f"{'config':<18}{'killed at step':>16}{'final step':>12}{'max |param diff|':>20}")
    for config in args.configs:
        for _ in range(args.seeds):
            step, final, diff = trial(config, args.steps, args.every, rng)
            print(f"{config:<18}{step:>16}{final:>12}{diff:>20.3g}", flush=True)


if __name__ == "__main__":
    main()
