"""TBPTT under Lightning's DDP strategy (2 CPU processes, gloo) equals one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("ddp_tbptt_script.py")
ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args[:2], str(out), *args[2:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _compare(tmp_path: Path, kind: str, *extra: str) -> tuple[dict, dict, dict]:
    _run([kind, "1", *extra], tmp_path / "one")
    _run([kind, "2", *extra], tmp_path / "two")
    one = torch.load(tmp_path / "one" / "rank0.pt")
    r0 = torch.load(tmp_path / "two" / "rank0.pt")
    r1 = torch.load(tmp_path / "two" / "rank1.pt")
    for name, p in one["params"].items():
        torch.testing.assert_close(r0["params"][name], r1["params"][name], atol=0, rtol=0)
        torch.testing.assert_close(r0["params"][name], p, atol=1e-5, rtol=1e-4)
    return one, r0, r1


def test_ddp_two_processes_equal_one_process_regressor(tmp_path):
    one, r0, r1 = _compare(tmp_path, "regressor")
    # the ranks saw different rows, and together the rows of the one-process batch
    for b1, b0, bb in zip(one["batches"], r0["batches"], r1["batches"]):
        assert not torch.equal(b0, bb)
        torch.testing.assert_close(torch.cat([b0, bb]), b1)


@pytest.mark.slow  # fast: the regressor above; rank blocks in tests/data/test_stream.py
@pytest.mark.skipif(sys.platform == "win32", reason="gloo DDP test on POSIX only")
def test_ddp_language_model_on_text_streams(tmp_path):
    source = tmp_path / "corpus.txt"
    source.write_text("".join(chr(97 + (i * 7 + i // 13) % 26) for i in range(6000)))
    one, r0, r1 = _compare(tmp_path, "lm", str(source))
    # disjoint streams per rank: rank 0 owns the first half of the global rows, rank 1 the second half
    for b1, b0, bb in zip(one["batches"], r0["batches"], r1["batches"]):
        torch.testing.assert_close(torch.cat([b0, bb]), b1)
