"""AdaptiveTBPTT under Lightning's DDP strategy: 2 CPU processes (gloo), rank 0 probes and broadcasts k.

The script (``_ddp_adaptive_tbptt_script.py``) trains a short-memory TBPTT model from ``tbptt_steps=24`` for 3
epochs, with a probe every 4 optimizer steps, so k shrinks during the run; then it resumes a fresh model and
callback from the checkpoint after epoch 2 and trains epoch 3 again. Every rank writes what it saw.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

pytestmark = [
    pytest.mark.slow,  # fast: tests/callbacks/test_adaptive_tbptt.py, DDP plumbing: tests/modules/test_tbptt_ddp.py
    pytest.mark.skipif(sys.platform == "win32", reason="gloo DDP test on POSIX only"),
    pytest.mark.skipif(
        not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
        reason="needs torch.distributed with the gloo backend",
    ),
]


def _run_ddp(tmp_path: Path, fail_probe: str | None = None) -> list[dict] | tuple[int, str]:
    env = dict(os.environ)
    if fail_probe:
        env["LRNN_FAIL_PROBE"] = fail_probe
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.setdefault("WANDB_MODE", "offline")
    env.pop("LOCAL_RANK", None)
    # own process group: on a timeout (a DDP hang, e.g. ranks splitting batches differently) kill rank 1 too,
    # which Lightning's launcher started and which a plain subprocess.run timeout would leave running
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "_ddp_adaptive_tbptt_script.py"), str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail("the 2-process DDP run did not finish within 240 s (a hang?)\n" + stderr[-3000:])
    if fail_probe:
        return proc.returncode, stdout + stderr
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return _run_ddp(tmp_path_factory.mktemp("ddp_adaptive_tbptt"))


def _max_abs_diff(a: list[list[float]], b: list[list[float]]) -> float:
    assert [len(p) for p in a] == [len(p) for p in b]
    return max(abs(x - y) for p, q in zip(a, b) for x, y in zip(p, q))


def _expected_k(start: int, targets: list[int], kw: dict) -> tuple[list[int], list[float]]:
    """The documented rule, written out independently of ``AdaptiveTBPTT.update``:

    k <- round(clamp((1 - s) * ema + s * K, k / max_change, k * max_change)) clamped to [min, max];
    k stays put while |K - k| <= tolerance * k (the EMA still moves). The first EMA starts from k.
    """
    s, change, tol = kw["smoothing"], kw.get("max_change", 2.0), kw.get("tolerance", 0.1)
    k, ema, ks, emas = start, float(start), [], []
    for target in targets:
        ema = (1.0 - s) * ema + s * target
        ema = min(max(ema, k / change), k * change)
        ema = min(max(ema, float(kw["min_steps"])), float(kw["max_steps"]))
        if abs(target - k) > tol * k:
            k = int(round(ema))
        ks.append(k)
        emas.append(ema)
    return ks, emas


def test_both_ranks_split_every_batch_with_the_same_changing_k(ranks):
    r0, r1 = ranks[0]["full"], ranks[1]["full"]
    assert (r0["rank"], r1["rank"], r0["world_size"]) == (0, 1, 2)
    # the ranks trained on different rows (otherwise agreement would prove little)
    assert r0["batch_sums"] != r1["batch_sums"]
    # identical k at every batch and at every optimizer step, and it really changed during the run
    assert r0["batch_k"] == r1["batch_k"]
    assert r0["step_k"] == r1["step_k"]
    assert len(set(r0["batch_k"])) >= 4
    assert r0["batch_k"][0] == ranks[0]["start_k"]
    # each batch of L steps is split into ceil(L / k) chunks, one optimizer step each
    length = ranks[0]["length"]
    expected_steps = [k for k in r0["batch_k"] for _ in range(math.ceil(length / k))]
    assert r0["step_k"] == expected_steps
    assert r0["global_step"] == r1["global_step"] == len(expected_steps)
    # the same callback state and, after DDP's all-reduce, the same parameters on both ranks
    assert r0["state"] == r1["state"]
    assert r0["final_k"] == r1["final_k"] == r0["state"]["steps"]
    assert _max_abs_diff(r0["params"], r1["params"]) <= 1e-6


def test_rank_zero_probes_and_the_decisions_follow_the_documented_rule(ranks):
    r0, r1 = ranks[0]["full"], ranks[1]["full"]
    kw, start, length = ranks[0]["callback_kwargs"], ranks[0]["start_k"], ranks[0]["length"]
    history = r0["state"]["history"]
    # the probe runs on rank 0 only; rank 1 receives the decision
    assert r0["probe_calls"] == len(history) > 0
    assert r1["probe_calls"] == 0
    # a probe at the end of the first batch and of every batch after which global_step entered a new
    # bucket of every_n_steps
    ends, step, last = [], 0, None
    for k in r0["batch_k"]:
        step += math.ceil(length / k)
        if last is None or step // kw["every_n_steps"] > last:
            last = step // kw["every_n_steps"]
            ends.append(step)
    assert [h["step"] for h in history] == ends
    # short memory (all Jacobians <= 0.3): every probe asks for min_steps, and k walks down to it by the rule
    assert all(h["target"] == kw["min_steps"] for h in history)
    ks, emas = _expected_k(start, [h["target"] for h in history], kw)
    assert [h["steps"] for h in history] == ks
    assert [h["k_ema"] for h in history] == pytest.approx(emas)
    assert all(b <= a for a, b in zip(ks, ks[1:]))
    assert kw["min_steps"] <= r0["final_k"] < start // 4
    assert r0["final_k"] <= kw["max_steps"]
    # the k of each batch after the first is the last decision made before it
    decided = dict(zip(ends, ks))
    step, k_now = 0, start
    for k in r0["batch_k"]:
        assert k == k_now
        step += math.ceil(length / k)
        k_now = decided.get(step, k_now)


def test_resumed_ddp_run_continues_exactly(ranks):
    full, r0, r1 = ranks[0]["full"], ranks[0]["resumed"], ranks[1]["resumed"]
    # both ranks re-applied the checkpointed k (the fresh module starts at tbptt_steps=24)
    assert r0["batch_k"] == r1["batch_k"]
    assert r0["step_k"] == r1["step_k"]
    assert r0["batch_k"][0] != ranks[0]["start_k"]
    # and went on as the uninterrupted run did in its last epoch
    n = len(r0["batch_k"])
    assert r0["batch_k"] == full["batch_k"][-n:]
    assert r0["step_k"] == full["step_k"][-len(r0["step_k"]):]
    assert r0["global_step"] == r1["global_step"] == full["global_step"]
    assert r0["state"] == r1["state"] == full["state"]
    assert r0["probe_calls"] > 0 and r1["probe_calls"] == 0
    assert _max_abs_diff(r0["params"], r1["params"]) <= 1e-6
    assert _max_abs_diff(r0["params"], full["params"]) <= 1e-6


@pytest.mark.slow  # two 2-process launches, ~25 s each
@pytest.mark.parametrize("callback", ["AdaptiveTBPTT", "GradientFlowMonitor"])
def test_a_probe_failing_on_rank_0_stops_every_rank(tmp_path, callback):
    """The probe raises on rank 0 only: rank 1 learns it through the callback's broadcast and stops too."""
    code, output = _run_ddp(tmp_path, fail_probe=callback)  # fails the test on a hang (timeout)
    assert code != 0
    assert "the probe broke on purpose" in output
    assert f"{callback}: the gradient-flow probe failed on global rank 0 (RuntimeError: the probe broke" in output
