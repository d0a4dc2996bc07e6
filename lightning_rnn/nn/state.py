"""Helpers for nested recurrent states.

A recurrent *state* is a tensor, or any nesting of tuples, lists and dicts of tensors (``None`` leaves are
kept as they are): an RNN/GRU state ``h`` of shape (D*num_layers, N, H), an LSTM state ``(h, c)``, a
decoder state ``{"rnn": (h, c), "attn": context}``, ... Every helper here walks the nesting, applies one
operation to each tensor and rebuilds the same structure (tuples, namedtuples, lists and dicts keep their
type). The batch dimension is ``dim=1`` by default, as in ``torch.nn.LSTM``'s (D*num_layers, N, H) layout.

Symbols: N batch, L length, D directions (1 or 2), H hidden size.

Example::

    >>> import torch
    >>> from lightning_rnn.nn.state import reset_state_rows, zeros_state
    >>> h, c = zeros_state("lstm", 2, 3, 4)
    >>> h.shape
    torch.Size([2, 3, 4])
    >>> state = (h + 1, c + 1)
    >>> done = torch.tensor([False, True, False])
    >>> reset_state_rows(state, done)[0][:, :, 0]
    tensor([[1., 0., 1.],
            [1., 0., 1.]])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lightning_rnn._validation import check_int

from ._cells import CELLS

__all__ = [
    "State",
    "detach_state",
    "map_state",
    "reset_state_rows",
    "select_state_rows",
    "zeros_like_state",
    "zeros_state",
]

#: The state of one ``RNNStack`` call: ``h`` for RNN/GRU, ``(h, c)`` for LSTM, each (D*num_layers, N, H).
State = Tensor | tuple[Tensor, Tensor]

def map_state(fn: Callable[[Tensor], Tensor], state: Any) -> Any:
    """Apply ``fn`` to every tensor of a nested state and rebuild the same structure.

    Args:
        fn: function applied to each tensor leaf.
        state: a tensor, ``None``, or a nested tuple / namedtuple / list / dict of those.

    Returns:
        The same structure with every tensor ``t`` replaced by ``fn(t)`` (``None`` leaves stay ``None``).

    Raises:
        TypeError: a leaf is neither a tensor nor ``None``.
    """
    if state is None:
        return None
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, tuple):
        items = [map_state(fn, s) for s in state]
        return type(state)(*items) if hasattr(state, "_fields") else tuple(items)
    if isinstance(state, list):
        return [map_state(fn, s) for s in state]
    if isinstance(state, dict):
        return type(state)((k, map_state(fn, v)) for k, v in state.items())
    raise TypeError(
        f"Expected a Tensor, None or a nested tuple/list/dict of Tensors as state, got {type(state).__name__}"
    )


def detach_state(state: Any) -> Any:
    """Detach every tensor of a nested state from the autograd graph (truncated BPTT boundary).

    Inputs:
        state: nested tensors of any shape.

    Outputs:
        The same structure, every tensor detached (shares storage with the input).
    """
    return map_state(lambda t: t.detach(), state)


def zeros_like_state(state: Any) -> Any:
    """Zeros with the shape, dtype and device of every tensor of a nested state."""
    return map_state(torch.zeros_like, state)


def _check_dim(t: Tensor, dim: int) -> int:
    if not -t.dim() <= dim < t.dim():
        raise ValueError(f"Expected dim in [{-t.dim()}, {t.dim() - 1}] for a {t.dim()}-D state tensor, got {dim}")
    return dim % t.dim()


def reset_state_rows(state: Any, mask: Tensor, dim: int = 1) -> Any:
    """Zero the batch rows selected by ``mask`` (a new document starts, a sequence finished), out of place.

    Gradients still flow to the rows that are kept.

    Inputs:
        state: nested tensors, each with the batch of size N at ``dim`` (default 1: (D*num_layers, N, H)).
        mask: BoolTensor (N,), True where the row is reset to zero.

    Outputs:
        The same structure; rows where ``mask`` is True are zero, the others unchanged.

    Raises:
        TypeError: ``mask`` is not a bool tensor.
        ValueError: ``mask`` is not 1-D or its length is not the batch size.
    """
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"Expected mask to be a torch.bool tensor of shape (N,), got {got}")
    if mask.dim() != 1:
        raise ValueError(f"Expected mask to be 1-D (N,), got shape {list(mask.shape)}")

    def reset(t: Tensor) -> Tensor:
        d = _check_dim(t, dim)
        if t.shape[d] != mask.shape[0]:
            raise ValueError(
                f"Expected mask of length {t.shape[d]} (state batch size at dim {dim}), got {mask.shape[0]}"
            )
        shape = [1] * t.dim()
        shape[d] = -1
        return t.masked_fill(mask.to(t.device).view(shape), 0)

    return map_state(reset, state)


def select_state_rows(state: Any, index: Tensor, dim: int = 1) -> Any:
    """Select or reorder batch rows of every tensor (``index_select``; beam-search reordering).

    Inputs:
        state: nested tensors, each with the batch at ``dim`` (default 1).
        index: LongTensor (M,) of row indices in [0, N); may repeat rows (beam expansion).

    Outputs:
        The same structure with the batch dimension of size M.

    Raises:
        TypeError: ``index`` is not an integer tensor.
        ValueError: ``index`` is not 1-D.
    """
    if not isinstance(index, Tensor) or index.dtype not in (torch.int64, torch.int32):
        got = index.dtype if isinstance(index, Tensor) else type(index).__name__
        raise TypeError(f"Expected index to be a torch.long (or int32) tensor of shape (M,), got {got}")
    if index.dim() != 1:
        raise ValueError(f"Expected index to be 1-D (M,), got shape {list(index.shape)}")

    def select(t: Tensor) -> Tensor:
        return t.index_select(_check_dim(t, dim), index.to(t.device))

    return map_state(select, state)


def zeros_state(
    cell: str,
    num_layers_times_directions: int,
    batch_size: int,
    hidden_size: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> State:
    """A zero initial state laid out like ``torch.nn.RNN/LSTM/GRU``'s.

    Args:
        cell: ``"rnn"``, ``"lstm"`` or ``"gru"``.
        num_layers_times_directions: D*num_layers.
        batch_size: N.
        hidden_size: H.
        device: device of the tensors.
        dtype: dtype of the tensors.

    Outputs:
        ``h`` (D*num_layers, N, H) for ``"rnn"``/``"gru"``; ``(h, c)`` for ``"lstm"``.

    Raises:
        ValueError: unknown ``cell`` or a non-positive size.
    """
    if cell not in CELLS:
        raise ValueError(f"Expected cell to be one of {list(CELLS)}, got {cell!r}")
    for name, value in (
        ("num_layers_times_directions", num_layers_times_directions),
        ("batch_size", batch_size),
        ("hidden_size", hidden_size),
    ):
        check_int(name, value, min=1)
    shape = (num_layers_times_directions, batch_size, hidden_size)
    h = torch.zeros(shape, device=device, dtype=dtype)
    if cell == "lstm":
        return h, torch.zeros(shape, device=device, dtype=dtype)
    return h
