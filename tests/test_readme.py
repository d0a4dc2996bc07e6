"""The README's "use it in your project" snippet runs (with tiny sizes), so the manual cannot rot."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_snippet() -> str:
    """The fenced ```python block right after the ``<!-- readme-test -->`` marker."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- readme-test -->\s*```python\n(.*?)```", text, flags=re.S)
    if match is None:
        raise AssertionError("README.md has no ```python block right after <!-- readme-test -->")
    return match.group(1)


def shrink(code: str, corpus: Path) -> str:
    """Tiny sizes: a small corpus instead of the stdlib, a few steps, a small network."""
    subs = [
        (r"source=None", f"source={str(corpus)!r}"),
        (r"max_steps=\d+", "max_steps=4"),
        (r"hidden_size=\d+", "hidden_size=16"),
        (r"embedding_dim=\d+", "embedding_dim=8"),
        (r"batch_size=\d+", "batch_size=4"),
        (r"bptt=\d+", "bptt=16"),
        (r"tbptt_steps=\d+", "tbptt_steps=8"),
    ]
    for pattern, repl in subs:
        code, n = re.subn(pattern, repl, code)
        assert n >= 1, f"the README snippet no longer contains {pattern!r}; update tests/test_readme.py"
    return code


def test_readme_snippet_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import inspect
    import json.decoder

    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setattr(sys, "argv", ["readme"])
    monkeypatch.chdir(tmp_path)
    corpus = tmp_path / "corpus.py"
    corpus.write_text(inspect.getsource(json.decoder) * 2, encoding="utf-8")
    namespace: dict = {"__name__": "readme_snippet"}
    try:
        exec(compile(shrink(readme_snippet(), corpus), str(README), "exec"), namespace)
    finally:
        wandb.finish()
    trainer, model = namespace["trainer"], namespace["model"]
    assert trainer.global_step == 4  # one optimizer step per TBPTT chunk: 2 batches x 2 chunks
    assert type(model).__name__ == "MyLM" and isinstance(trainer.optimizers[0], __import__("torch").optim.AdamW)
    assert list((tmp_path / "wandb").glob("offline-run-*")), "WandbLogger(offline=True) wrote no run"
    names = {type(cb).__name__ for cb in trainer.callbacks}
    assert {"SpectralNormMonitor", "GradientFlowMonitor", "AdaptiveGradientClipping"} <= names
