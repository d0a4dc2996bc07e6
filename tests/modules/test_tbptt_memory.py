"""Memory stays flat with TBPTT: peak RSS (separate processes) for T = 4000 vs T = 400 at the same k."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("memory_script.py")
ROOT = Path(__file__).resolve().parents[2]


def _peak_mib(length: int, k: int | None) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    arg = "none" if k is None else str(k)
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(length), arg], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return float(out.stdout.strip().splitlines()[-1])


def test_peak_memory_is_flat_with_tbptt_and_grows_with_full_bptt():
    short, long = _peak_mib(400, 50), _peak_mib(4000, 50)
    assert abs(long - short) / short < 0.10, (short, long)
    # full BPTT over the same T = 4000 keeps every step's activations: hundreds of MiB more
    full_long = _peak_mib(4000, None)
    assert full_long - long > 5 * max(long - short, 20.0), (short, long, full_long)
