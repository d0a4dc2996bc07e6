"""One real SIGKILL of a `lightning-rnn fit` run, then `fit --ckpt_path runs/checkpoints/last.ckpt`: the
resumed run ends with the parameters of the uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TAGGER = ["--model.init_args.encoder.hidden_size=8", "--model.init_args.tbptt_steps=8", "--model.init_args.encoder.input_dropout=0.2",
          "--data.init_args.length=20", "--data.init_args.delay=3", "--data.init_args.num_train=32",
          "--data.init_args.num_val=8", "--data.init_args.batch_size=8", "--trainer.logger=false",
          "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
          "--trainer.callbacks.every_n_steps=6", "--report.max_new_tokens=0"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true")
    return env


def _fit(cwd: Path, max_steps: int, *extra: str, wait: bool = True) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lightning_rnn.cli", "fit", "--config", str(EXAMPLES / "tagger_delay.yaml"),
           *TAGGER, f"--trainer.max_steps={max_steps}", *extra]
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if wait:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    return proc


def kill_and_resume(tmp: Path, total_steps: int) -> tuple[int, float]:
    """(step of the checkpoint the killed run left, max |parameter difference| resumed vs uninterrupted)."""
    killed, reference = tmp / "killed", tmp / "reference"
    killed.mkdir()
    reference.mkdir()
    last = killed / "runs" / "checkpoints" / "last.ckpt"
    proc = _fit(killed, 100_000, wait=False)
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and last.exists()
    step = torch.load(last, weights_only=True)["global_step"]
    assert step < total_steps
    _fit(killed, total_steps, "--ckpt_path", str(last))
    _fit(reference, total_steps)
    a = torch.load(last, weights_only=True)
    b = torch.load(reference / "runs" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"]
    diff = max(float((a["state_dict"][k] - b["state_dict"][k]).abs().max()) for k in b["state_dict"])
    return step, diff


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    step, diff = kill_and_resume(tmp_path, total_steps=60)
    assert step > 0 and diff <= 1e-6
