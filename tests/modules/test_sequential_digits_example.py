"""The sequential-digits example in a seconds-long smoke configuration."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sequential_digits.py"


def test_sequential_digits_quick_runs_and_reports_test_accuracy(capsys):
    spec = importlib.util.spec_from_file_location("sequential_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--quick", "--cells", "gru", "--orders", "permuted", "--tbptt", "16"])
    assert set(results) == {("permuted", "gru")}
    r = results[("permuted", "gru")]
    out = capsys.readouterr().out
    assert f"| permuted | gru | {r['acc']:.3f} | {r['f1']:.3f} |" in out
    # the data: 64-step pixel sequences of 1 feature, 10 classes, a fixed permutation
    train, test = module.load(permuted=True, seed=0, limit=100)
    assert train.tensors[0].shape == (80, 64, 1) and test.tensors[0].shape == (20, 64, 1)
    seq, _ = module.load(permuted=False, seed=0, limit=100)
    assert sorted(train.tensors[0][0].flatten().tolist()) == sorted(seq.tensors[0][0].flatten().tolist())
