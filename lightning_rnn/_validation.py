"""Argument checks shared by the whole package (stdlib + torch only: ``nn/`` and ``functional/`` import it).

Conventions, the same everywhere:

* one argument order: ``check_*(name, value, *, options)``, ``name`` being the user-facing argument name;
* every rejection is a :class:`ValueError` (a wrong type included) reading
  ``Expected <name> to be <what>, got <value!r>``;
* ``bool`` is never accepted where a number is expected (``True`` is not ``1``);
* floats must be finite unless ``finite=False`` (NaN is always rejected);
* each helper returns the value (a float for :func:`check_float`, the lower-cased choice for
  :func:`check_choice` with ``lower=True``) so a constructor can store it directly.

Examples:
    >>> check_int("num_layers", 2, min=1)
    2
    >>> check_int("num_layers", True, min=1)
    Traceback (most recent call last):
    ...
    ValueError: Expected num_layers to be an int >= 1, got True
    >>> check_float("dropout", 0.5, min=0.0, max=1.0, max_inclusive=False)
    0.5
    >>> check_choice("cell", "LSTM", ("rnn", "lstm", "gru"), lower=True)
    'lstm'
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

__all__ = ["check_bool", "check_choice", "check_float", "check_int", "check_probability"]


def _fail(name: str, what: str, value: Any, allow_none: bool) -> ValueError:
    return ValueError(f"Expected {name} to be {what}{' or None' if allow_none else ''}, got {value!r}")


def check_int(
    name: str, value: Any, *, min: int | None = None, max: int | None = None, allow_none: bool = False
) -> Any:
    """``value`` if it is an int (not a bool) in ``[min, max]`` (or None when ``allow_none``); else ValueError."""
    if value is None and allow_none:
        return None
    if min is not None and max is not None:
        what = f"an int in [{min}, {max}]"
    elif min is not None:
        what = f"an int >= {min}"
    elif max is not None:
        what = f"an int <= {max}"
    else:
        what = "an int"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _fail(name, what, value, allow_none)
    if (min is not None and value < min) or (max is not None and value > max):
        raise _fail(name, what, value, allow_none)
    return int(value)


def check_float(
    name: str,
    value: Any,
    *,
    min: float | None = None,
    max: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
    finite: bool = True,
    allow_none: bool = False,
) -> Any:
    """``float(value)`` if it is a real number (not a bool) in the given interval; else ValueError.

    NaN is always rejected; ``±inf`` unless ``finite=False``.
    """
    if value is None and allow_none:
        return None
    if min is not None and max is not None:
        what = f"a float in {'[' if min_inclusive else '('}{min:g}, {max:g}{']' if max_inclusive else ')'}"
    elif min is not None:
        what = f"a float {'>=' if min_inclusive else '>'} {min:g}"
    elif max is not None:
        what = f"a float {'<=' if max_inclusive else '<'} {max:g}"
    else:
        what = "a finite float" if finite else "a float"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(name, what, value, allow_none)
    v = float(value)
    if math.isnan(v) or (finite and math.isinf(v)):
        raise _fail(name, what if what.startswith("a finite") else what.replace("a float", "a finite float", 1),
                    value, allow_none)
    if min is not None and (v < min if min_inclusive else v <= min):
        raise _fail(name, what, value, allow_none)
    if max is not None and (v > max if max_inclusive else v >= max):
        raise _fail(name, what, value, allow_none)
    return v


def check_probability(name: str, value: Any) -> float:
    """A dropout-style probability: a float in ``[0, 1)``."""
    return check_float(name, value, min=0.0, max=1.0, max_inclusive=False)


def check_choice(name: str, value: Any, choices: Iterable[str], *, lower: bool = False) -> Any:
    """``value`` if it is one of ``choices`` (compared lower-cased when ``lower``; returned lower-cased)."""
    options = list(choices)
    key = value.lower() if lower and isinstance(value, str) else value
    if not isinstance(value, str) or key not in options:
        raise ValueError(f"Expected {name} to be one of {options}, got {value!r}")
    return key


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a bool (``0``/``1``/strings are rejected: a typo must not flip an option)."""
    if not isinstance(value, bool):
        raise ValueError(f"Expected {name} to be a bool, got {value!r}")
    return value


def _tracing() -> bool:
    """True under ``torch.jit`` tracing, ``torch.compile`` or ``torch.export``: value checks must not run there."""
    import torch

    compiler = getattr(torch, "compiler", None)
    return bool(
        torch.jit.is_tracing()
        or (compiler is not None and compiler.is_compiling())
        or (compiler is not None and getattr(compiler, "is_exporting", lambda: False)())
    )


def check_token_ids(name: str, ids: Any, vocab_size: int) -> None:
    """``ids`` must be an integer tensor with every value in ``[0, vocab_size)``.

    The dtype is always checked (``TypeError``); the values (one device sync) unless traced or compiled.
    """
    import torch

    if not isinstance(ids, torch.Tensor) or ids.dtype not in (
        torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8
    ):
        got = f"dtype {ids.dtype}" if isinstance(ids, torch.Tensor) else repr(ids)
        raise TypeError(f"Expected {name} to be an integer tensor of token ids, got {got}")
    if ids.numel() == 0 or _tracing():
        return
    hi, lo = int(ids.max()), int(ids.min())
    if hi >= vocab_size:
        raise ValueError(f"Expected {name} ids in [0, {vocab_size}) (vocab size {vocab_size}), got largest id {hi}")
    if lo < 0:
        raise ValueError(f"Expected {name} ids in [0, {vocab_size}), got smallest id {lo}")
