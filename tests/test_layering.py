"""DESIGN.md's layering: the pure-PyTorch layers (``nn/``, ``functional/``) never import Lightning, in their source
and at import time (the package ``__init__`` files included)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_rnn"
PURE_FILES = sorted([*(PACKAGE / "nn").glob("*.py"), *(PACKAGE / "functional").glob("*.py")])


def _imported_top_level_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", PURE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_pure_layers_do_not_import_lightning(path: Path) -> None:
    # `lightning_rnn` itself is fine (other pure modules); `lightning` / `pytorch_lightning` are not
    assert not _imported_top_level_modules(path) & {"lightning", "pytorch_lightning", "lightning_fabric"}


def test_the_check_sees_imports() -> None:
    assert PURE_FILES and {"torch"} <= set().union(*map(_imported_top_level_modules, PURE_FILES))


_HEAVY = ("lightning", "pytorch_lightning", "lightning_fabric", "torchmetrics")


def _loaded_after_import(module: str) -> list[str]:
    """Top-level packages among ``_HEAVY`` that a fresh interpreter has loaded after ``import <module>``."""
    code = (
        f"import sys, {module}\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(_HEAVY)!r}))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return ast.literal_eval(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", ["lightning_rnn.nn", "lightning_rnn.functional", "lightning_rnn"])
def test_pure_layers_load_neither_lightning_nor_torchmetrics(module: str) -> None:
    # the whole import chain counts, package __init__ files included (the top level re-exports lazily)
    assert _loaded_after_import(module) == []


def test_the_import_check_sees_lightning() -> None:
    assert "lightning" in _loaded_after_import("lightning_rnn.modules")


def test_top_level_names_resolve_lazily() -> None:
    import lightning_rnn
    from lightning_rnn import modules

    for name in ("TBPTTModule", "TBPTTStep", "RNNLanguageModel", "RNNClassifier", "RNNTagger", "Seq2SeqAttention"):
        assert name in lightning_rnn.__all__ and name in dir(lightning_rnn)
        assert getattr(lightning_rnn, name) is getattr(modules, name)
    assert lightning_rnn.modules is modules and lightning_rnn.data.pad_collate is not None  # subpackages too
    with pytest.raises(AttributeError, match="no attribute 'NotAName'"):
        lightning_rnn.NotAName  # noqa: B018


def test_no_global_matplotlib_backend_switch() -> None:
    # figures use matplotlib.figure.Figure with their own canvas; matplotlib.use() would change the user's backend
    calls = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}"
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "use"
        and isinstance(node.func.value, ast.Name) and node.func.value.id == "matplotlib"
    ]
    assert calls == []
