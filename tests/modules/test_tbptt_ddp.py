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


def _compare(tmp_path: Path, kind: str, *extra: str, devices: int = 2) -> tuple[dict, dict, dict]:
    _run([kind, "1", *extra], tmp_path / "one")
    _run([kind, str(devices), *extra], tmp_path / "many")
    one = torch.load(tmp_path / "one" / "rank0.pt")
    ranks = [torch.load(tmp_path / "many" / f"rank{r}.pt") for r in range(devices)]
    for name, p in one["params"].items():
        for other in ranks[1:]:
            torch.testing.assert_close(ranks[0]["params"][name], other["params"][name], atol=0, rtol=0)
        torch.testing.assert_close(ranks[0]["params"][name], p, atol=1e-5, rtol=1e-4, msg=name)
    assert len({r["global_step"] for r in ranks}) == 1 and ranks[0]["global_step"] == one["global_step"]
    return one, ranks[0], ranks[1]


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


@pytest.mark.skipif(sys.platform == "win32", reason="gloo DDP test on POSIX only")
@pytest.mark.parametrize("kind,devices", [("classifier", 2), ("tagger", 3)])
def test_ddp_variable_length_tasks_agree_on_chunks_and_equal_one_process(tmp_path, kind, devices):
    # every rank pads to its own longest row; the ranks agree on the chunks, a chunk with a loss on any rank
    # is a step on all, and each rank's loss is weighted so the update equals one process's on the global batch
    one, _, _ = _compare(tmp_path, kind, devices=devices)
    assert one["global_step"] > 2  # several steps per batch: the ranks really had to agree


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="gloo DDP test on POSIX only")
def test_ddp_adaptive_softmax_language_model_under_plain_ddp(tmp_path):
    source = tmp_path / "corpus.txt"
    source.write_text("".join(chr(97 + (i * 7 + i // 13) % 26) for i in range(6000)))
    _compare(tmp_path, "lm_adaptive", str(source))
