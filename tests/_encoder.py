"""Test helper: module keywords written flat (``hidden_size=8, cell="gru"``) with the recurrent encoder's
fields gathered into ``encoder=RNNConfig(...)``, as the shipped modules take them."""

from __future__ import annotations

import dataclasses
from typing import Any

from lightning_rnn.nn import RNNConfig

ENCODER_FIELDS = frozenset(f.name for f in dataclasses.fields(RNNConfig))


def with_encoder(kwargs: dict[str, Any], default: RNNConfig | None = None) -> dict[str, Any]:
    """``kwargs`` with its :class:`~lightning_rnn.nn.RNNConfig` fields moved into ``encoder`` (on top of
    ``default``, the module's own default encoder, or of an ``encoder`` already among ``kwargs``)."""
    kwargs = dict(kwargs)
    fields = {k: kwargs.pop(k) for k in list(kwargs) if k in ENCODER_FIELDS}
    if fields:
        base = kwargs.get("encoder") or default or RNNConfig()
        kwargs["encoder"] = dataclasses.replace(base, **fields)
    return kwargs
