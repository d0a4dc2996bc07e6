"""``RNNConfig``: the settings of a recurrent encoder (an :class:`~lightning_rnn.nn.RNNStack`) as one object.

The shipped LightningModules take their recurrent encoder as ``encoder=RNNConfig(...)`` instead of a dozen
pass-through keywords; ``LightningCLI`` fills it from a config file or the command line
(``--model.init_args.encoder.hidden_size=256``), and a checkpoint stores it as a plain dict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lightning_rnn._validation import check_bool, check_choice, check_int, check_probability

from ._cells import CELLS
from .rnn import RECURRENT_DROPOUT_MODES, RNNStack


@dataclass(frozen=True)
class RNNConfig:
    """Settings of a recurrent stack: everything :class:`~lightning_rnn.nn.RNNStack` takes but its input size.

    Every field is checked on construction, with the error :class:`~lightning_rnn.nn.RNNStack` would give.

    Attributes:
        cell: ``"rnn"`` (tanh), ``"lstm"`` or ``"gru"``.
        hidden_size: H of every layer (per direction).
        num_layers: stacked layers.
        bidirectional: a reverse direction in every layer (output size 2H).
        residual: ``False``, ``True`` (skip connections between stacked layers) or ``"all"`` (around the
            first layer too; needs input size == output size).
        input_dropout, layer_dropout, output_dropout: step-tied (locked) dropout of the stack's input, between
            layers and of its output: one mask per sequence, the same at every step.
        recurrent_dropout: dropout of the recurrent connection, applied as ``recurrent_dropout_mode`` says:
            ``"weight"`` (DropConnect on ``weight_hh``, AWD-LSTM) or ``"state"`` (a mask on h_{t-1}, Gal).
        zoneout: probability of keeping each unit's previous state at a step (Krueger et al. 2016).
        bias: bias terms in every gate.

    Example::

        >>> from lightning_rnn.nn import RNNConfig
        >>> config = RNNConfig(cell="gru", hidden_size=32, num_layers=2, layer_dropout=0.2)
        >>> rnn = config.build(input_size=16)
        >>> rnn.output_size, rnn.cell
        (32, 'gru')
        >>> RNNConfig.coerce({"hidden_size": 8}) == RNNConfig(hidden_size=8)
        True
        >>> RNNConfig(hidden_size=0)
        Traceback (most recent call last):
        ...
        ValueError: Expected hidden_size to be an int >= 1, got 0
    """

    cell: str = "lstm"
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = False
    residual: bool | str = False
    input_dropout: float = 0.0
    layer_dropout: float = 0.0
    output_dropout: float = 0.0
    recurrent_dropout: float = 0.0
    recurrent_dropout_mode: str = "weight"
    zoneout: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        check_choice("cell", self.cell, CELLS, lower=True)
        object.__setattr__(self, "cell", self.cell.lower())
        check_int("hidden_size", self.hidden_size, min=1)
        check_int("num_layers", self.num_layers, min=1)
        check_bool("bidirectional", self.bidirectional)
        check_bool("bias", self.bias)
        if not (isinstance(self.residual, bool) or self.residual == "all"):  # 0 / 1 are not booleans here
            raise ValueError(f"Expected residual to be False, True or 'all', got {self.residual!r}")
        if self.residual is True and self.num_layers < 2:
            raise ValueError(
                "Expected num_layers >= 2 for residual=True (skip connections go between stacked layers), "
                f"got num_layers={self.num_layers}; use residual='all' to add one around the first layer"
            )
        for name in ("input_dropout", "layer_dropout", "output_dropout", "recurrent_dropout", "zoneout"):
            object.__setattr__(self, name, check_probability(name, getattr(self, name)))
        if self.recurrent_dropout_mode not in RECURRENT_DROPOUT_MODES:
            raise ValueError(
                f"Expected recurrent_dropout_mode to be one of {list(RECURRENT_DROPOUT_MODES)}, "
                f"got {self.recurrent_dropout_mode!r}"
            )

    @property
    def output_size(self) -> int:
        """Features of the stack's output: ``2 * hidden_size`` if bidirectional, else ``hidden_size``."""
        return (2 if self.bidirectional else 1) * self.hidden_size

    def build(
        self, input_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> RNNStack:
        """The :class:`~lightning_rnn.nn.RNNStack` these settings describe, on inputs of ``input_size`` features
        (batch-first)."""
        kwargs = self.to_dict()
        return RNNStack(kwargs.pop("cell"), input_size, device=device, dtype=dtype, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (what a checkpoint's hyper-parameters and a config file hold)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> RNNConfig:
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def coerce(cls, value: RNNConfig | Mapping[str, Any] | None, default: RNNConfig | None = None,
               *, name: str = "encoder") -> RNNConfig:
        """``value`` as an ``RNNConfig``: itself, built from a mapping of its fields (a checkpoint's or config
        file's dict), or ``default`` (``RNNConfig()`` if not given) for ``None``.

        Raises ``TypeError`` naming ``name`` for anything else or for an unknown key.
        """
        if value is None:
            return default if default is not None else cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            fields = [f.name for f in dataclasses.fields(cls)]
            unknown = sorted(str(k) for k in value if k not in fields)
            if unknown:
                raise TypeError(f"Expected {name} keys among {fields}, got {unknown}")
            return cls(**value)
        raise TypeError(f"Expected {name} to be an RNNConfig, a dict of its fields or None, got {type(value).__name__}")
