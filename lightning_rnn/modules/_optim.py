"""The ``optimizer`` / ``lr`` / ``weight_decay`` options every shipped module takes (one definition)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from lightning_rnn._validation import check_float

#: the optimizers a shipped module builds from its ``optimizer`` argument
OPTIMIZERS = ("adam", "adamw", "sgd")


def check_optimizer_args(optimizer: str, lr: float, weight_decay: float) -> None:
    """``ValueError`` naming the argument when ``optimizer``, ``lr`` or ``weight_decay`` is invalid."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"Expected optimizer in {OPTIMIZERS}, got {optimizer!r}")
    check_float("lr", lr, min=0.0, min_inclusive=False)
    check_float("weight_decay", weight_decay, min=0.0)


def build_optimizer(
    params: Iterable[torch.nn.Parameter], optimizer: str, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` / ``AdamW`` / ``SGD`` over ``params`` (override ``configure_optimizers`` for more).

    Example::

        >>> opt = build_optimizer(torch.nn.Linear(2, 2).parameters(), "adamw", 1e-3, 0.01)
        >>> type(opt).__name__, opt.defaults["weight_decay"]
        ('AdamW', 0.01)
    """
    check_optimizer_args(optimizer, lr, weight_decay)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[optimizer]
    return cls(params, lr=lr, weight_decay=weight_decay)
