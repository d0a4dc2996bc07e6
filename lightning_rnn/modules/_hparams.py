"""Saved hyper-parameters that a checkpoint loaded with ``torch.load(weights_only=True)`` can hold.

Lightning's ``save_hyperparameters()`` records the arguments of the outermost ``__init__`` in the chain: a
user's subclass that takes ``encoder: RNNConfig`` and passes it on is recorded with the dataclass itself, which
``weights_only`` unpickling refuses. :func:`plain_configs` turns every :class:`~lightning_rnn.nn.RNNConfig`
among them into its ``dataclasses.asdict`` (what the modules accept back, and what ``LightningCLI`` writes).
"""

from __future__ import annotations

import dataclasses

from lightning.pytorch import LightningModule

from lightning_rnn.nn.rnn_config import RNNConfig

__all__ = ["plain_configs"]


def plain_configs(module: LightningModule) -> None:
    """Replace every :class:`RNNConfig` value of ``module.hparams`` (what checkpoints save) by its plain dict.

    Call it right after ``save_hyperparameters()``. (Loggers read ``hparams_initial``, where Lightning and W&B
    flatten a dataclass themselves.)
    """
    for key, value in list(module.hparams.items()):
        if isinstance(value, RNNConfig):
            module.hparams[key] = dataclasses.asdict(value)
