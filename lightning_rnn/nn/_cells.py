"""The one registry of recurrent cell names (``cell=`` of every layer, module and helper)."""

from __future__ import annotations

__all__ = ["CELLS"]

#: Valid ``cell`` names and their number of gates.
CELLS: dict[str, int] = {"rnn": 1, "lstm": 4, "gru": 3}
