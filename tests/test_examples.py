"""Smoke runs of the examples (their --quick modes): adding_problem, custom_module, tagging_parity, seq2seq_reverse."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)


def test_adding_problem_data_and_baseline() -> None:
    mod = _load("adding_problem")
    x, y = mod.adding_batch(4000, 30, torch.Generator().manual_seed(0))
    assert x.shape == (4000, 30, 2) and y.shape == (4000,)
    markers = x[..., 1]
    assert torch.equal(markers.sum(1), torch.full((4000,), 2.0))
    assert bool((markers[:, :15].sum(1) == 1).all())  # one marker in each half
    assert torch.allclose((x[..., 0] * markers).sum(1), y)
    # predicting 1.0 gives Var(U1 + U2) = 1/6
    assert float(((y - 1.0) ** 2).mean()) == pytest.approx(mod.BASELINE_MSE, abs=0.01)


def test_adding_problem_quick(tmp_path: Path) -> None:
    mod = _load("adding_problem")
    results = mod.main(["--quick", "--logger", "none", "--save_dir", str(tmp_path)])
    assert [r["cell"] for r in results] == ["rnn", "gru", "lstm"]
    for r in results:
        assert math.isfinite(r["final_mse"]) and r["steps"]
        assert len(r["curve"]) == 20 and r["curve"][0] == pytest.approx(1.0)  # G(k)/G(0) over lags 0..T-1


def test_custom_module_quick(tmp_path: Path) -> None:
    mod = _load("custom_module")
    out = mod.main(["--quick", "--logger", "csv", "--save_dir", str(tmp_path)])
    assert math.isfinite(out["val_mse"])
    x, y = mod.make_series(3, 50, 5, 0.0, torch.Generator().manual_seed(0))
    assert torch.allclose(x[:, 5:], y[:, :-5], atol=1e-5)  # noise-free input is the target 5 steps late
    # the probe follows the GradientFlowMonitor contract: the loss at t is computed from step_states[t]
    model = mod.SineForecaster(hidden_size=8).eval()
    states, losses = model.gradient_flow_probe((x, y), max_steps=6)
    assert losses.shape == (3, 6) and len(states) == 6
    grad = torch.autograd.grad(losses[:, 5].sum(), states[5][0])[0]
    assert float(grad.norm()) > 0
    assert len(list(tmp_path.rglob("metrics.csv"))) == 1


def test_tagging_parity_quick(capsys: pytest.CaptureFixture[str]) -> None:
    mod = _load("tagging_parity")
    results = mod.main(["--quick"])
    assert set(results) == {("parity", 5), ("parity", 40), ("delay", 5), ("delay", 40)}
    out = capsys.readouterr().out
    assert all(f"| {task} | {k} | {acc:.3f} |" in out for (task, k), acc in results.items())
    assert "| delay | 40 |" in out  # the Markdown table the README quotes


@pytest.mark.slow  # fast: tests/modules/test_seq2seq.py::test_short_reversal_training_learns
def test_seq2seq_reverse_quick(tmp_path: Path) -> None:
    import subprocess

    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "seq2seq_reverse.py"), "--quick", "--out", str(tmp_path / "s.png")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    header = next(line for line in proc.stdout.splitlines() if line.startswith("| source length |"))
    assert "Bahdanau exact / BLEU" in header and "Luong" in header
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 1 |")]
    assert rows, proc.stdout[-2000:]
    assert not (tmp_path / "s.png").exists()  # --quick writes no files
