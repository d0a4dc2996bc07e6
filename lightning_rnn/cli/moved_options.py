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
        key = arg.split("=", 1)[0]
        for prefix in ("--model.init_args.", "--model."):
            if key.startswith(prefix) and key[len(prefix):] in FLAT_ENCODER_KEYS:
                found.append(key)
                break
        if key in ("--config", "-c") and "=" not in arg and i + 1 < len(argv):
            found += [f"model.init_args.{k} in {argv[i + 1]}" for k in _config_keys(argv[i + 1])]
        elif key == "--config" and "=" in arg:
            found += [f"model.init_args.{k} in {arg.split('=', 1)[1]}" for k in _config_keys(arg.split("=", 1)[1])]
    return found


def _config_keys(path: str) -> list[str]:
    try:
        import yaml

        config: Any = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        init = (config.get("model") or {}).get("init_args") or {}
    except Exception:  # noqa: BLE001 - only a hint: an unreadable config is reported by the parser itself
        return []
    return [k for k in FLAT_ENCODER_KEYS if isinstance(init, dict) and k in init]
