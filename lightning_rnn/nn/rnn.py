"""``RNNStack``: a multi-layer RNN / LSTM / GRU with step-tied (variational) dropout.

A drop-in for ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` (same shapes, same parameter names, same ``state_dict``)
that adds the dropout schemes of Gal & Ghahramani (2016) and AWD-LSTM (Merity et al. 2017), residual
connections between layers, lengths-aware padded batches, Monte-Carlo dropout and an unrolled per-step
forward (every step's state with autograd attached, for gradient-flow diagnostics).

How it runs (top to bottom in :meth:`RNNStack._run`):

1. input dropout — one (N, F) mask per forward, the same at every step;
2. the recurrence — one fused multi-layer kernel call (``torch._VF.lstm`` etc., the very call
   ``torch.nn.LSTM.forward`` makes; oneDNN/MKL on CPU, cuDNN on GPU) when no layer dropout, residual or
   ``"state"`` recurrent dropout is active; otherwise one fused call per layer, or, for ``"state"``
   recurrent dropout, a step loop with the input projection of the whole sequence precomputed;
3. output dropout.

``"weight"`` recurrent dropout replaces each ``weight_hh`` by ``dropout(weight_hh)`` for the call: the
Parameters themselves are never modified (no monkey-patching, no ``flatten_parameters``), so they receive
gradients and dropped weights are back on the next forward.

Symbols: N batch, L length, D directions (2 if bidirectional else 1), H hidden size, F input features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import _VF, Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ._lstm_loop import lstm_masked_recurrence
from .dropout import _apply_row_mask, _check_p, _scaled_mask
from .state import State

__all__ = ["CELLS", "RECURRENT_DROPOUT_MODES", "RNNStack", "State"]

#: Valid ``cell`` names and their number of gates.
CELLS: dict[str, int] = {"rnn": 1, "lstm": 4, "gru": 3}
#: Valid ``recurrent_dropout_mode`` values.
RECURRENT_DROPOUT_MODES = ("weight", "state")

_KERNELS = {"rnn": _VF.rnn_tanh, "lstm": _VF.lstm, "gru": _VF.gru}


@dataclass
class _Masks:
    """Everything random about one forward call, drawn once up front (see ``RNNStack._draw_masks``)."""

    input: Tensor | None = None  # (N, input_size)
    w_hh: list[Tensor | None] = field(default_factory=list)  # per layer*D: dropped weight_hh or None
    layer: list[Tensor | None] = field(default_factory=list)  # per layer: (N, D*H) mask on its input
    state: list[Tensor | None] = field(default_factory=list)  # per layer*D: (N, H) mask on h_{t-1}
    output: Tensor | None = None  # (N, D*H)


class RNNStack(nn.Module):
    """Multi-layer RNN (tanh) / LSTM / GRU with step-tied dropout, residual links and torch's layout.

    With every dropout at 0 it computes exactly what ``torch.nn.RNN/LSTM/GRU`` of the same configuration
    computes, with the same parameter names and shapes (``weight_ih_l0``, ``weight_hh_l0``,
    ``bias_ih_l0``, ``bias_hh_l0``, ``..._reverse``), so ``state_dict``s load both ways.

    Dropout (all step-tied: one mask per sequence and feature, the same at every time step, drawn afresh
    on every forward call, i.e. every truncated-BPTT chunk; scaled by 1/(1-p)):

    - ``input_dropout`` on the input features, ``layer_dropout`` on the input of every layer > 0,
      ``output_dropout`` on the output (``LockedDropout``).
    - ``recurrent_dropout`` on the recurrent connection:
      ``"weight"`` — DropConnect on ``weight_hh`` (AWD-LSTM WeightDrop): one element-wise mask per forward
      shared by the batch and all steps; the fused kernel stays in use.
      ``"state"`` — Gal's mask on h_{t-1}: a different mask per sequence, the same at every step (for
      LSTM only h is masked, not c); runs a step loop (about 0.6-0.8x the fused speed on CPU).

    In eval mode no dropout is applied (deterministic) unless ``mc_dropout`` is True.

    Args:
        cell: ``"rnn"`` (tanh), ``"lstm"`` or ``"gru"``.
        input_size: F, features of the input.
        hidden_size: H.
        num_layers: number of stacked layers.
        bidirectional: run a backward direction too (D = 2).
        batch_first: input/output are (N, L, *) if True (default), (L, N, *) otherwise. States are always
            (D*num_layers, N, H).
        residual: ``True``: add the input of every layer l > 0 to its output (needs ``num_layers >= 2``);
            ``"all"``: also around layer 0 (needs ``input_size == D*H``). The skip path carries the layer
            input before ``layer_dropout``.
        input_dropout: step-tied dropout on the input features, in [0, 1).
        layer_dropout: step-tied dropout between stacked layers, in [0, 1).
        output_dropout: step-tied dropout on the output, in [0, 1).
        recurrent_dropout: dropout on the recurrent connection, in [0, 1).
        recurrent_dropout_mode: ``"weight"`` (DropConnect on ``weight_hh``) or ``"state"`` (mask on h).
        bias: use the bias vectors ``bias_ih_l*`` and ``bias_hh_l*``.
        mc_dropout: keep every dropout active in eval mode (Monte-Carlo dropout); can be toggled later
            through the ``mc_dropout`` attribute.

    Inputs: input, state, lengths
        - **input**: (N, L, F) if ``batch_first`` else (L, N, F), or a ``PackedSequence``.
        - **state** (optional): initial state, ``h`` (D*num_layers, N, H), or ``(h, c)`` for LSTM;
          zeros if omitted. For a ``PackedSequence`` it is in the original (unsorted) batch order.
        - **lengths** (optional): 1-D integer tensor (N,), any device, each in [1, L]: true lengths of a
          padded batch. Final states are taken at each row's last real step (the backward direction
          starts at it) and outputs past a row's length are zero.

    Outputs: output, state
        - **output**: (N, L, D*H) if ``batch_first`` else (L, N, D*H) (a ``PackedSequence`` for a packed
          input). For each step the forward and backward directions are concatenated.
        - **state**: final state, same layout as the input state.

    Example::

        >>> import torch
        >>> rnn = RNNStack("lstm", 8, 16, num_layers=2, layer_dropout=0.3, recurrent_dropout=0.25)
        >>> out, (h, c) = rnn(torch.randn(4, 10, 8))
        >>> out.shape, h.shape
        (torch.Size([4, 10, 16]), torch.Size([2, 4, 16]))
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        bidirectional: bool = False,
        batch_first: bool = True,
        residual: bool | str = False,
        input_dropout: float = 0.0,
        layer_dropout: float = 0.0,
        output_dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        recurrent_dropout_mode: str = "weight",
        bias: bool = True,
        mc_dropout: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(cell, str) or cell.lower() not in CELLS:
            raise ValueError(f"Expected cell to be one of {list(CELLS)}, got {cell!r}")
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Expected {name} to be a positive int, got {value!r}")
        if recurrent_dropout_mode not in RECURRENT_DROPOUT_MODES:
            raise ValueError(
                f"Expected recurrent_dropout_mode to be one of {list(RECURRENT_DROPOUT_MODES)}, "
                f"got {recurrent_dropout_mode!r}"
            )
        self.cell = cell.lower()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bool(bidirectional)
        self.num_directions = 2 if self.bidirectional else 1
        self.batch_first = bool(batch_first)
        self.output_size = self.num_directions * hidden_size
        self.bias = bool(bias)
        self.input_dropout = _check_p(input_dropout, "input_dropout")
        self.layer_dropout = _check_p(layer_dropout, "layer_dropout")
        self.output_dropout = _check_p(output_dropout, "output_dropout")
        self.recurrent_dropout = _check_p(recurrent_dropout, "recurrent_dropout")
        self.recurrent_dropout_mode = recurrent_dropout_mode
        self.mc_dropout = bool(mc_dropout)

        if residual not in (False, True, "all"):
            raise ValueError(f"Expected residual to be False, True or 'all', got {residual!r}")
        if residual is True and num_layers < 2:
            raise ValueError(
                "Expected num_layers >= 2 for residual=True (skip connections go between stacked layers), "
                f"got num_layers={num_layers}; use residual='all' to add one around the first layer"
            )
        if residual == "all" and input_size != self.output_size:
            raise ValueError(
                f"Expected input_size == num_directions * hidden_size (= {self.output_size}) for "
                f"residual='all' (the first layer's input is added to its output), got input_size={input_size}"
            )
        self.residual = residual

        gate_size = CELLS[self.cell] * hidden_size
        # names[k] = [w_ih, w_hh, (b_ih, b_hh)] for k = layer * D + direction: torch's _flat_weights order
        self._names: list[list[str]] = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else self.output_size
            for direction in range(self.num_directions):
                sfx = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                shapes = {f"weight_ih{sfx}": (gate_size, layer_input), f"weight_hh{sfx}": (gate_size, hidden_size)}
                if self.bias:
                    shapes.update({f"bias_ih{sfx}": (gate_size,), f"bias_hh{sfx}": (gate_size,)})
                for pname, shape in shapes.items():
                    self.register_parameter(pname, nn.Parameter(torch.empty(shape)))
                self._names.append(list(shapes))
        self.reset_parameters()

    # ------------------------------------------------------------------ parameters
    def reset_parameters(self) -> None:
        """Initialise like torch: every parameter uniform in ±1/sqrt(H)."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -stdv, stdv)

    def recurrent_weights(self) -> dict[str, nn.Parameter]:
        """The hidden-to-hidden weights ``{"weight_hh_l0": (G*H, H), ...}`` (G gates stacked, torch order)."""
        return {names[1]: getattr(self, names[1]) for names in self._names}

    def flatten_parameters(self) -> None:
        """No-op, for code that calls it on torch RNN modules: parameters are passed to the kernel as is."""

    def init_state(
        self, batch_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> State:
        """Zero state: ``h`` (D*num_layers, N, H), or ``(h, c)`` for LSTM.

        Device and dtype default to the parameters'.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | torch.SymInt) or batch_size < 1:
            raise ValueError(f"Expected batch_size to be a positive int, got {batch_size!r}")  # SymInt: traced
        ref = self.weight_hh_l0
        shape = (self.num_directions * self.num_layers, batch_size, self.hidden_size)
        kw = {"device": device if device is not None else ref.device, "dtype": dtype or ref.dtype}
        h = torch.zeros(shape, **kw)
        return (h, torch.zeros(shape, **kw)) if self.cell == "lstm" else h

    # ------------------------------------------------------------------ checks
    @property
    def _dropout_active(self) -> bool:
        return self.training or self.mc_dropout

    def _check_input(self, x: Tensor, batch_first: bool) -> None:
        layout = "(N, L, F)" if batch_first else "(L, N, F)"
        if x.dim() != 3:
            raise ValueError(f"Expected a 3-D input {layout}, got a {x.dim()}-D tensor of shape {list(x.shape)}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"Expected input feature size (last dim) {self.input_size}, got {x.shape[-1]}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"Expected a non-empty input {layout}, got shape {list(x.shape)}")

    def _prepare_state(self, state: State | None, n: int, like: Tensor) -> State:
        if state is None:
            return self.init_state(n, device=like.device, dtype=like.dtype)
        expected = (self.num_directions * self.num_layers, n, self.hidden_size)
        if self.cell == "lstm":
            if not (isinstance(state, (tuple, list)) and len(state) == 2 and all(isinstance(s, Tensor) for s in state)):
                raise TypeError(f"Expected state to be a tuple (h, c) of Tensors for cell='lstm', got {_describe(state)}")
            parts = [("hidden[0]", state[0]), ("hidden[1]", state[1])]
        else:
            if not isinstance(state, Tensor):
                raise TypeError(f"Expected state to be a Tensor h for cell={self.cell!r}, got {_describe(state)}")
            parts = [("hidden", state)]
        for name, t in parts:
            if tuple(t.shape) != expected:
                raise ValueError(f"Expected {name} size {expected}, got {list(t.shape)}")
            if t.dtype != like.dtype:
                raise ValueError(f"Expected {name} dtype {like.dtype} (the input's), got {t.dtype}")
        return (state[0], state[1]) if self.cell == "lstm" else state

    @staticmethod
    def _check_lengths(lengths: Tensor, n: int, length: int) -> Tensor:
        if not isinstance(lengths, Tensor):
            lengths = torch.as_tensor(lengths)
        if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
            raise TypeError(f"Expected lengths to be an integer tensor, got {lengths.dtype}")
        if lengths.dim() != 1 or lengths.shape[0] != n:
            raise ValueError(f"Expected lengths of shape ({n},) (one per batch row), got {list(lengths.shape)}")
        lengths = lengths.to("cpu", torch.int64)
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 1 or hi > length:
            raise ValueError(f"Expected every length in [1, {length}] (L of the input), got min {lo}, max {hi}")
        return lengths

    # ------------------------------------------------------------------ forward
    def forward(
        self, input: Tensor | PackedSequence, state: State | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor | PackedSequence, State]:
        """Run the stack over a whole sequence; see the class docstring for shapes."""
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError("Expected lengths=None with a PackedSequence input (it carries its lengths), got a tensor")
            data, batch_sizes, sorted_idx, unsorted_idx = input
            if data.dim() != 2 or data.shape[-1] != self.input_size:
                raise ValueError(
                    f"Expected PackedSequence data of shape (*, {self.input_size}), got {list(data.shape)}"
                )
            n = int(batch_sizes[0])
            hx = self._prepare_state(state, n, data)
            if sorted_idx is not None:
                hx = _select_rows(hx, sorted_idx)
            masks = self._draw_masks(n, data)
            out, hn = self._run(data, batch_sizes, hx, masks)
            if unsorted_idx is not None:
                hn = _select_rows(hn, unsorted_idx)
            return PackedSequence(out, batch_sizes, sorted_idx, unsorted_idx), hn
        if not isinstance(input, Tensor):
            raise TypeError(f"Expected input to be a Tensor or PackedSequence, got {type(input).__name__}")
        self._check_input(input, self.batch_first)
        n, length = (input.shape[0], input.shape[1]) if self.batch_first else (input.shape[1], input.shape[0])
        if lengths is not None:
            lengths = self._check_lengths(lengths, n, length)
            packed = pack_padded_sequence(input, lengths, batch_first=self.batch_first, enforce_sorted=False)
            out_packed, hn = self.forward(packed, state)
            out, _ = pad_packed_sequence(out_packed, batch_first=self.batch_first, total_length=length)
            return out, hn
        x = input.transpose(0, 1) if self.batch_first else input  # (L, N, F)
        hx = self._prepare_state(state, n, input)
        masks = self._draw_masks(n, input)
        out, hn = self._run(x, None, hx, masks)  # (L, N, D*H)
        return (out.transpose(0, 1) if self.batch_first else out), hn

    def forward_steps(self, input: Tensor, state: State | None = None) -> tuple[Tensor, list[State]]:
        """Unrolled forward: one step at a time over the same parameters, returning every step's state.

        Computes the same as :meth:`forward` (to float rounding, with the same dropout semantics: masks are
        drawn once for the whole call, in the same order, so the same RNG seed gives the same masks), but
        exposes the state after every step with autograd attached: ``step_states[t]`` is the tensor fed
        into step t+1, so ``torch.autograd.grad(loss_t, step_states[t - k])`` measures how much gradient
        survives k steps back. Unidirectional stacks only.

        Inputs:
            input: (N, L, F) if ``batch_first`` else (L, N, F).
            state: optional initial state, as in :meth:`forward`.

        Outputs:
            output: as :meth:`forward` (N, L, H) or (L, N, H).
            step_states: list of length L; ``step_states[t]`` is the state of every layer after step t,
            ``h`` (num_layers, N, H) or ``(h, c)``.
        """
        if self.bidirectional:
            raise ValueError("Expected a unidirectional RNNStack for forward_steps, got bidirectional=True")
        if not isinstance(input, Tensor):
            raise TypeError(f"Expected input to be a Tensor, got {type(input).__name__}")
        self._check_input(input, self.batch_first)
        n = input.shape[0] if self.batch_first else input.shape[1]
        x = input.transpose(0, 1) if self.batch_first else input  # (L, N, F)
        hx = self._prepare_state(state, n, input)
        masks = self._draw_masks(n, input)
        outs, step_states = [], []
        for t in range(x.shape[0]):
            out_t, hx = self._run(x[t : t + 1], None, hx, masks)  # (1, N, H)
            outs.append(out_t)
            step_states.append(hx)
        out = torch.cat(outs, 0)  # (L, N, H)
        return (out.transpose(0, 1) if self.batch_first else out), step_states

    # ------------------------------------------------------------------ internals
    def _draw_masks(self, n: int, like: Tensor) -> _Masks:
        """Draw every mask of one forward call (fixed order: input, weights, layers, states, output)."""
        masks = _Masks(w_hh=[None] * len(self._names), layer=[None] * self.num_layers, state=[None] * len(self._names))
        if not self._dropout_active:
            return masks
        if self.input_dropout > 0:
            masks.input = _scaled_mask((n, self.input_size), self.input_dropout, like)
        if self.recurrent_dropout > 0 and self.recurrent_dropout_mode == "weight":
            p = self.recurrent_dropout
            masks.w_hh = [w * _scaled_mask(w.shape, p, w) for w in (getattr(self, ns[1]) for ns in self._names)]
        if self.layer_dropout > 0:
            masks.layer = [None] + [
                _scaled_mask((n, self.output_size), self.layer_dropout, like) for _ in range(1, self.num_layers)
            ]
        if self.recurrent_dropout > 0 and self.recurrent_dropout_mode == "state":
            masks.state = [_scaled_mask((n, self.hidden_size), self.recurrent_dropout, like) for _ in self._names]
        if self.output_dropout > 0:
            masks.output = _scaled_mask((n, self.output_size), self.output_dropout, like)
        return masks

    def _weights(self, k: int, masks: _Masks) -> list[Tensor]:
        """Kernel weights of layer*direction k: [w_ih, w_hh (dropped in weight mode), b_ih, b_hh]."""
        ws = [getattr(self, name) for name in self._names[k]]
        if masks.w_hh[k] is not None:
            ws[1] = masks.w_hh[k]
        return ws

    def _kernel(self, x: Tensor, batch_sizes: Tensor | None, hx: State, weights: list[Tensor], num_layers: int):
        """One fused call of torch's RNN kernel (what ``nn.LSTM.forward`` calls) over ``num_layers`` layers."""
        kernel = _KERNELS[self.cell]
        if batch_sizes is None:
            res = kernel(x, hx, weights, self.bias, num_layers, 0.0, self.training, self.bidirectional, False)
        else:
            res = kernel(x, batch_sizes, hx, weights, self.bias, num_layers, 0.0, self.training, self.bidirectional)
        if self.cell == "lstm":
            return res[0], (res[1], res[2])
        return res[0], res[1]

    def _residual_at(self, layer: int) -> bool:
        return self.residual == "all" or (bool(self.residual) and layer > 0)

    def _run(self, x: Tensor, batch_sizes: Tensor | None, hx: State, masks: _Masks) -> tuple[Tensor, State]:
        """The stack on time-major ``x`` (L, N, F) or packed data (T, F) with ``batch_sizes``; sorted state."""
        d = self.num_directions
        x = _apply_row_mask(x, masks.input, batch_sizes)
        per_layer = (
            bool(self.residual)
            or any(m is not None for m in masks.layer)
            or any(m is not None for m in masks.state)
        )
        if not per_layer:  # fast path: one fused multi-layer call
            weights = [w for k in range(len(self._names)) for w in self._weights(k, masks)]
            out, hn = self._kernel(x, batch_sizes, hx, weights, self.num_layers)
        else:
            lstm = self.cell == "lstm"
            finals: list[State] = []
            layer_in = x
            for layer in range(self.num_layers):
                inp = _apply_row_mask(layer_in, masks.layer[layer], batch_sizes)
                sl = slice(layer * d, (layer + 1) * d)
                hx_l = (hx[0][sl], hx[1][sl]) if lstm else hx[sl]
                if masks.state[layer * d] is not None:
                    out, hn_l = self._state_dropout_layer(inp, batch_sizes, hx_l, layer, masks)
                else:
                    weights = [w for k in range(layer * d, (layer + 1) * d) for w in self._weights(k, masks)]
                    out, hn_l = self._kernel(inp, batch_sizes, hx_l, weights, 1)
                if self._residual_at(layer):
                    out = out + layer_in
                finals.append(hn_l)
                layer_in = out
            out = layer_in
            if lstm:
                hn = (torch.cat([f[0] for f in finals], 0), torch.cat([f[1] for f in finals], 0))
            else:
                hn = torch.cat(finals, 0)
        out = _apply_row_mask(out, masks.output, batch_sizes)
        return out, hn

    def _state_dropout_layer(
        self, x: Tensor, batch_sizes: Tensor | None, hx: State, layer: int, masks: _Masks
    ) -> tuple[Tensor, State]:
        """One layer (both directions) with Gal's per-sequence mask on h_{t-1}: precomputed input
        projection for the whole sequence, then a step loop with one ``addmm`` per step."""
        lstm = self.cell == "lstm"
        outs, hs, cs = [], [], []
        for direction in range(self.num_directions):
            k = layer * self.num_directions + direction
            w_ih, w_hh, *b = self._weights(k, masks)
            b_ih, b_hh = (b[0], b[1]) if b else (None, None)
            if self.cell == "gru":  # b_hh sits inside r * (W_hn h + b_hn): keep it on the recurrent side
                xp = F.linear(x, w_ih, b_ih)
            else:
                xp = F.linear(x, w_ih, None if b_ih is None else b_ih + b_hh)
            h0 = hx[0][direction] if lstm else hx[direction]
            c0 = hx[1][direction] if lstm else None
            if lstm and batch_sizes is None:  # hand-written backward, one weight-gradient product
                xp = xp.flip(0) if direction == 1 else xp
                out, h, c = lstm_masked_recurrence(xp, h0, c0, w_hh, masks.state[k])
                outs.append(out.flip(0) if direction == 1 else out)
                hs.append(h)
                cs.append(c)
                continue
            steps = list(xp.unbind(0)) if batch_sizes is None else list(xp.split(batch_sizes.tolist()))
            step_outs, h, c = _step_loop(
                self.cell, steps, h0, c0, w_hh.t(), b_hh, masks.state[k], reverse=direction == 1
            )
            outs.append(torch.stack(step_outs) if batch_sizes is None else torch.cat(step_outs))
            hs.append(h)
            cs.append(c)
        out = outs[0] if len(outs) == 1 else torch.cat(outs, -1)
        h_n = torch.stack(hs)
        return out, ((h_n, torch.stack(cs)) if lstm else h_n)

    def extra_repr(self) -> str:
        s = f"{self.cell!r}, {self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        for name in ("bidirectional", "residual", "mc_dropout"):
            if getattr(self, name):
                s += f", {name}={getattr(self, name)!r}"
        if not self.batch_first:
            s += ", batch_first=False"
        if not self.bias:
            s += ", bias=False"
        for name in ("input_dropout", "layer_dropout", "output_dropout"):
            if getattr(self, name):
                s += f", {name}={getattr(self, name)}"
        if self.recurrent_dropout:
            s += f", recurrent_dropout={self.recurrent_dropout}, recurrent_dropout_mode={self.recurrent_dropout_mode!r}"
        return s


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"Tensor of shape {list(x.shape)}"
    if isinstance(x, (tuple, list)):
        return f"{type(x).__name__} of {len(x)} ({', '.join(type(v).__name__ for v in x)})"
    return type(x).__name__


def _select_rows(state: State, index: Tensor) -> State:
    if isinstance(state, tuple):
        return tuple(s.index_select(1, index.to(s.device)) for s in state)  # type: ignore[return-value]
    return state.index_select(1, index.to(state.device))


def _step_loop(
    cell: str,
    steps: list[Tensor],
    h: Tensor,
    c: Tensor | None,
    w_hh_t: Tensor,
    b_hh: Tensor | None,
    mask: Tensor,
    reverse: bool,
) -> tuple[list[Tensor], Tensor, Tensor | None]:
    """Run one direction of one layer step by step with a per-sequence mask on h_{t-1}.

    ``steps[t]`` is the precomputed input projection (n_t, G*H) of step t (``n_t`` rows: in a packed
    sequence the active rows are a prefix, sorted by decreasing length; the others keep their state).
    ``mask`` (N, H) multiplies h_{t-1} in the recurrent product only (LSTM's c and GRU's z*h use the
    unmasked h). Returns the per-step outputs (in time order) and the final h (N, H) and c.
    """
    n, hidden = h.shape
    outs: list[Tensor] = [h] * len(steps)
    masks_by_size = {n: mask}
    for t in (range(len(steps) - 1, -1, -1) if reverse else range(len(steps))):
        xt = steps[t]
        bs = xt.shape[0]
        full = bs == n
        m = masks_by_size.get(bs)
        if m is None:
            m = masks_by_size[bs] = mask[:bs]
        hp = h if full else h[:bs]
        if cell == "lstm":
            cp = c if full else c[:bs]
            gates = torch.addmm(xt, hp * m, w_hh_t)  # (bs, 4H): i, f, g, o
            sig = torch.sigmoid(gates)
            i, f, _, o = sig.chunk(4, 1)
            g = torch.tanh(gates[:, 2 * hidden : 3 * hidden])
            c_new = torch.addcmul(f * cp, i, g)
            h_new = o * torch.tanh(c_new)
            c = c_new if full else torch.cat([c_new, c[bs:]])
        elif cell == "gru":
            hm = hp * m
            gh = torch.mm(hm, w_hh_t) if b_hh is None else torch.addmm(b_hh, hm, w_hh_t)  # (bs, 3H): r, z, n
            rz = torch.sigmoid(xt[:, : 2 * hidden] + gh[:, : 2 * hidden])
            r, z = rz.chunk(2, 1)
            n_gate = torch.tanh(torch.addcmul(xt[:, 2 * hidden :], r, gh[:, 2 * hidden :]))
            h_new = torch.addcmul(n_gate, z, hp - n_gate)
        else:
            h_new = torch.tanh(torch.addmm(xt, hp * m, w_hh_t))
        outs[t] = h_new
        h = h_new if full else torch.cat([h_new, h[bs:]])
    return outs, h, c
