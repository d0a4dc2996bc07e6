"""A hint for command lines and configs written for lightning-rnn 0.1.0, whose modules took the recurrent
stack's settings as flat options (``--model.init_args.hidden_size``); they now live under ``encoder``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_rnn.modules._legacy import FLAT_ENCODER_KEYS

__all__ = ["moved_encoder_options"]


def moved_encoder_options(argv: Sequence[str]) -> list[str]:
    """The flat encoder options among ``argv`` and the ``model.init_args`` of its ``--config`` files.

    Example::

        >>> moved_encoder_options(["fit", "--model.init_args.hidden_size=64", "--model.init_args.lr=0.1"])
        ['--model.init_args.hidden_size']
    """
    found: list[str] = []
    for i, arg in enumerate(argv):
        key, eq, value = arg.partition("=")
        if key.removeprefix("--model.").removeprefix("init_args.") in FLAT_ENCODER_KEYS and key.startswith("--model."):
            found.append(key)
        elif key in ("--config", "-c") and (eq or i + 1 < len(argv)):
            path = value if eq else argv[i + 1]
            found += [f"model.init_args.{k} in {path}" for k in _config_keys(path)]
    return found


def _config_keys(path: str) -> list[str]:
    try:
        import yaml

        config: Any = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        init = (config.get("model") or {}).get("init_args") or {}
    except Exception:  # noqa: BLE001 - only a hint: an unreadable config is reported by the parser itself
        return []
    return [k for k in FLAT_ENCODER_KEYS if isinstance(init, dict) and k in init]
