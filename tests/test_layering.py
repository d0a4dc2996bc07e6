"""DESIGN.md's layering: the pure-PyTorch layers (``nn/``, ``functional/``) never import Lightning."""

from __future__ import annotations

import ast
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
