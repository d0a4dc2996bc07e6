"""The documentation's code runs: every ```python block of README.md and docs/**/*.md, every `lightning-rnn`
command of their ```bash blocks (parsed with --print_config), and every `python examples|benchmarks/...`
command they quote (the script and its options exist).

The python blocks of one page run in order in one namespace (a page reads like a notebook), in a temporary
directory, with `Trainer` shrunk to a couple of batches so that training examples take seconds. The README's
``<!-- readme-test -->`` block is left to tests/test_readme.py, which checks what it trains, and a block marked
``<!-- tested in tests/x.py -->`` to that file (which must read the page).
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# a block right after `<!-- readme-test -->` (tests/test_readme.py) or `<!-- tested in tests/x.py -->` is run by
# that test file instead (it checks the block is the text it runs)
FENCE = re.compile(r"(<!-- (?:readme-test|tested in tests/[\w/]+\.py) -->\s*)?```(\w+)\n(.*?)```", flags=re.S)
TESTED_IN = re.compile(r"<!-- tested in (tests/[\w/]+\.py) -->")


def blocks(page: Path, language: str) -> list[str]:
    """The fenced blocks of ``language`` on ``page``, without those marked as run by another test file."""
    text = page.read_text(encoding="utf-8")
    return [m.group(3) for m in FENCE.finditer(text) if m.group(2) == language and not m.group(1)]


def _rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


PYTHON_PAGES = [p for p in PAGES if blocks(p, "python")]


def _tiny_trainer_class(root: Path) -> type:
    """``lightning.pytorch.Trainer`` that runs at most 2 batches per loop, and 2 epochs or (a ``max_steps`` run)
    4 optimizer steps."""
    from lightning.pytorch import Trainer

    class TinyTrainer(Trainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            for loop in ("train", "val", "test", "predict"):
                kwargs[f"limit_{loop}_batches"] = 2
            if kwargs.get("max_steps", -1) != -1:  # a max_steps run: its step count bounds it
                kwargs["max_steps"] = min(kwargs["max_steps"], 4)
            else:
                kwargs["max_epochs"] = min(kwargs.get("max_epochs") or 1, 2)
            kwargs["num_sanity_val_steps"] = 0
            kwargs.setdefault("enable_progress_bar", False)
            kwargs.setdefault("enable_model_summary", False)
            kwargs.setdefault("default_root_dir", str(root))
            super().__init__(*args, **kwargs)

    return TinyTrainer


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=_rel)
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning
    import lightning.pytorch

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    tiny = _tiny_trainer_class(tmp_path)
    monkeypatch.setattr(lightning.pytorch, "Trainer", tiny)
    monkeypatch.setattr(lightning, "Trainer", tiny)
    torch.manual_seed(0)
    namespace: dict[str, Any] = {"__name__": f"docs:{_rel(page)}"}
    for i, code in enumerate(blocks(page, "python")):
        exec(compile(code, f"{_rel(page)} (python block {i + 1})", "exec"), namespace)


def test_blocks_run_elsewhere_name_a_test_that_quotes_the_page() -> None:
    for page in PAGES:
        for test_file in TESTED_IN.findall(page.read_text(encoding="utf-8")):
            path = ROOT / test_file
            assert path.is_file(), f"{_rel(page)} says a block is tested in {test_file}, which does not exist"
            assert _rel(page) in path.read_text(encoding="utf-8"), f"{test_file} does not read {_rel(page)}"


def test_every_page_with_code_is_collected() -> None:
    # a renamed fence (```py) or a moved page would silently drop blocks from the test above
    assert {_rel(p) for p in PYTHON_PAGES} >= {"docs/getting-started.md", "docs/guides/tbptt.md"}
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"```(py|python3|pycon)\n", text), f"{_rel(page)}: write ```python fences"


# ----------------------------------------------------------------------------------------- shell commands
def cli_commands() -> list[tuple[str, str]]:
    """``lightning-rnn fit|validate|test|predict`` lines of the bash blocks, without placeholders (``<id>``)."""
    found = []
    for page in PAGES:
        for code in blocks(page, "bash"):
            for line in code.splitlines():
                if re.match(r"lightning-rnn (fit|validate|test|predict) ", line) and "<" not in line:
                    found.append((_rel(page), line))
    return found


def _lookup(config: dict, dotted: str) -> Any:
    """``model.init_args.cell`` or ``model.cell`` (LightningCLI accepts both) in a printed config."""
    keys = dotted.split(".")
    for path in (keys, [keys[0], "init_args", *keys[1:]]):
        node: Any = config
        for key in path:
            if not isinstance(node, dict) or key not in node:
                break
            node = node[key]
        else:
            return node
    raise KeyError(dotted)


@pytest.mark.parametrize(("page", "line"), cli_commands(), ids=[f"{p}:{i}" for i, (p, _) in enumerate(cli_commands())])
def test_cli_commands_parse(page: str, line: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each documented command parses (config files, class names and option names exist) and each dotted
    override it gives lands in the resulting config."""
    from lightning_rnn.cli import main

    monkeypatch.chdir(ROOT)
    argv = shlex.split(line, comments=True)[1:]
    if ">" in argv:  # `--print_config > my.yaml`
        argv = argv[: argv.index(">")]
    argv = [a for a in argv if a != "--print_config"] + ["--print_config"]
    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(out):
        main(argv)
    assert exit_info.value.code in (0, None), f"{page}: `{line}` does not parse"
    config = yaml.safe_load(out.getvalue())
    for arg in argv:
        match = re.fullmatch(r"--((?:model|data|trainer)\.[\w.]+)=(.+)", arg)
        if match:
            value = _lookup(config, match.group(1))
            assert str(value).lower() == match.group(2).lower(), f"{page}: `{arg}` printed as {value!r}"


def script_commands() -> list[tuple[str, str, list[str]]]:
    """``python examples/x.py --opt ...`` and ``python benchmarks/y.py --opt ...`` quoted anywhere in the docs."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in re.finditer(r"python ((?:examples|benchmarks)/[\w/]+\.py)([^`\n]*)", text):
            found.append((_rel(page), match.group(1), re.findall(r"--[\w-]+", match.group(2))))
    return found


def test_quoted_scripts_and_options_exist() -> None:
    commands = script_commands()
    assert len(commands) >= 10
    for page, script, options in commands:
        path = ROOT / script
        assert path.is_file(), f"{page} quotes {script}, which does not exist"
        source = path.read_text(encoding="utf-8")
        for option in options:
            assert f'"{option}"' in source or f"'{option}'" in source, f"{page}: {script} has no {option}"


def test_readme_links_resolve() -> None:
    """README.md is read on the forge, outside the docs build: its relative links must point at files (and
    its links into the docs at headings that exist)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\((?!https?://)([^)#\s]+)(?:#([^)\s]+))?\)", text)
    assert len(links) >= 10
    for target, anchor in links:
        path = ROOT / target
        assert path.exists(), f"README.md links to {target}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), flags=re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
            assert anchor in slugs, f"README.md links to {target}#{anchor}, which has no such heading"
