"""``RNNStack``: a multi-layer RNN / LSTM / GRU with step-tied (variational) dropout.

A drop-in for ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` (same shapes, same parameter names, same ``state_dict``)
that adds the dropout schemes of Gal & Ghahramani (2016) and AWD-LSTM (Merity et al. 2017), zoneout
(Krueger et al. 2016), residual connections between layers, lengths-aware padded batches, Monte-Carlo
dropout and an unrolled per-step forward (every step's state with autograd attached, for gradient-flow
diagnostics).

How it runs (top to bottom in :meth:`RNNStack._run`):

1. input dropout — one (N, F) mask per forward, the same at every step;
2. the recurrence — one fused multi-layer kernel call (``torch._VF.lstm`` etc., the very call
   ``torch.nn.LSTM.forward`` makes; oneDNN/MKL on CPU, cuDNN on GPU) when no layer dropout, residual,
   ``"state"`` recurrent dropout or zoneout is active; otherwise one fused call per layer, or, for
   ``"state"`` recurrent dropout and zoneout, a step loop with the input projection of the whole sequence
   precomputed (``_recurrence.py``: hand-written forward/backward for LSTM and GRU);
3. output dropout.

``"weight"`` recurrent dropout replaces each ``weight_hh`` by ``dropout(weight_hh)`` for the call: the
Parameters themselves are never modified (no monkey-patching), so they receive gradients and dropped
weights are back on the next forward. As in ``torch.nn.LSTM``, on CUDA the parameters are views of one
flat buffer in cuDNN's layout (:meth:`RNNStack.flatten_parameters`), so the fused call does not copy them.

Dtypes: the returned state is always in the parameters' dtype, also under ``torch.autocast`` (see the
class docstring).

Symbols: N batch, L length, D directions (2 if bidirectional else 1), H hidden size, F input features.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import _VF, Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from lightning_rnn._validation import check_bool, check_choice, check_int, check_probability

from ._cells import CELLS
from ._recurrence import Zoneout, autocast_dtype, gru_recurrence, lstm_recurrence, step_loop
from .dropout import _apply_row_mask, _scaled_mask
from .state import State

__all__ = ["CELLS", "RECURRENT_DROPOUT_MODES", "RNNStack", "State"]

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
    zoneout_h: list[Zoneout] = field(default_factory=list)  # per layer*D: (L, N, H) keep-previous draws or p
    zoneout_c: list[Zoneout] = field(default_factory=list)  # the same for LSTM's c

    def at_step(self, t: int) -> _Masks:
        """The masks of step ``t`` alone (per-step zoneout draws sliced), for a length-1 ``_run``."""
        def cut(zs: list[Zoneout]) -> list[Zoneout]:
            return [z[t : t + 1] if isinstance(z, Tensor) else z for z in zs]

        return replace(self, zoneout_h=cut(self.zoneout_h), zoneout_c=cut(self.zoneout_c))


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
      LSTM only h is masked, not c); runs a step loop (slower than the fused kernel, see
      ``benchmarks/dropout_throughput.py``).

    Zoneout (Krueger et al. 2016): with ``zoneout=p`` every unit of h (and, for LSTM, of c, with its own
    draws) keeps its previous value with probability p at every step in training:
    h_t = d_t ⊙ h_{t-1} + (1 - d_t) ⊙ h̃_t with d_t ~ Bernoulli(p) drawn per sequence, unit and step; in
    eval it uses the expectation, h_t = p·h_{t-1} + (1 - p)·h̃_t (draws again under ``mc_dropout``).
    It runs in the same step loop as ``"state"`` recurrent dropout and composes with every dropout.

    In eval mode no dropout is applied (deterministic) unless ``mc_dropout`` is True.

    Mixed precision: under ``torch.autocast`` the recurrence runs in autocast's dtype where torch's
    kernels do (the fused kernels as ``torch.nn.LSTM`` does; the step loop of ``"state"`` dropout and
    zoneout in autocast's dtype throughout), and the returned **state is always in the parameters' dtype**
    (float32 unless the module was converted), whatever the kernel produced (cuDNN under autocast returns
    float16 state), so a state carried into the next call (truncated BPTT) always fits. An incoming state
    of any floating dtype is accepted and cast. Where this CPU's oneDNN has no low-precision LSTM kernel,
    the fused LSTM call runs in float32 instead of failing. Under **bf16** autocast on CUDA the fused call
    runs cuDNN in bf16 (float32 where cuDNN has no bf16 kernel), not in float16 as torch's cuDNN autocast
    rule would run it (``torch.nn.LSTM`` under bf16 autocast computes in float16, without a gradient
    scaler); float16 autocast is left to torch. ``output`` is in whatever dtype the last
    kernel produced (autocast's dtype or float32); without autocast, input, state and output are all in
    the parameters' dtype.

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
        zoneout: zoneout probability p in [0, 1) of h (and c for LSTM) at every step.
        device, dtype: of the parameters (as ``torch.nn.LSTM``'s factory keywords).
        dropout: ``torch.nn.LSTM``'s keyword, accepted only as 0: its per-step dropout between layers is
            ``layer_dropout`` here (step-tied); a non-zero value raises, naming it.
        nonlinearity: ``torch.nn.RNN``'s keyword, only ``"tanh"`` with ``cell="rnn"`` (the tanh RNN).
        proj_size: ``torch.nn.LSTM``'s keyword, accepted only as 0 (no projections).
        second_order: run ``"state"`` recurrent dropout and zoneout of LSTM / GRU through an autograd step
            loop that supports double backward (gradient penalties, Hessian-vector products; slower and
            more memory). By default they run a hand-written recurrence whose backward is first-order only:
            a ``create_graph=True`` backward through it raises. Also an attribute (``rnn.second_order``).

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
        - **state**: final state, same layout as the input state, in the parameters' dtype.

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
        zoneout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        dropout: float = 0.0,
        nonlinearity: str | None = None,
        proj_size: int = 0,
        second_order: bool = False,
    ) -> None:
        super().__init__()
        check_choice("cell", cell, CELLS, lower=True)
        for name, flag in (("bidirectional", bidirectional), ("batch_first", batch_first), ("bias", bias),
                           ("mc_dropout", mc_dropout), ("second_order", second_order)):
            check_bool(name, flag)
        _check_torch_keywords(cell.lower(), dropout, nonlinearity, proj_size)
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"Expected dtype to be a floating-point torch.dtype, got {dtype!r}")
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            check_int(name, value, min=1)
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
        self.input_dropout = check_probability("input_dropout", input_dropout)
        self.layer_dropout = check_probability("layer_dropout", layer_dropout)
        self.output_dropout = check_probability("output_dropout", output_dropout)
        self.recurrent_dropout = check_probability("recurrent_dropout", recurrent_dropout)
        self.recurrent_dropout_mode = recurrent_dropout_mode
        self.mc_dropout = bool(mc_dropout)
        self.zoneout = check_probability("zoneout", zoneout)
        self.second_order = bool(second_order)

        if not (isinstance(residual, bool) or residual == "all"):  # 0 / 1 are not booleans here
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
                    self.register_parameter(pname, nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))
                self._names.append(list(shapes))
        self.reset_parameters()
        self.flatten_parameters()

    # ------------------------------------------------------------------ parameters
    def reset_parameters(self) -> None:
        """Initialise like torch: every parameter uniform in ±1/sqrt(H)."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -stdv, stdv)

    def recurrent_weights(self) -> dict[str, nn.Parameter]:
        """The hidden-to-hidden weights ``{"weight_hh_l0": (G*H, H), ...}`` (G gates stacked, torch order)."""
        return {names[1]: getattr(self, names[1]) for names in self._names}

    def _flat_weights(self) -> list[Tensor]:
        """Every parameter in torch's ``_flat_weights`` order (per layer*direction: w_ih, w_hh, b_ih, b_hh)."""
        return [getattr(self, name) for names in self._names for name in names]

    def flatten_parameters(self) -> None:
        """Put the parameters in one contiguous buffer in cuDNN's layout, as ``torch.nn.LSTM`` does.

        Then the fused call passes them to cuDNN without a copy (otherwise cuDNN warns "weights are not
        part of single contiguous chunk of memory" and copies them on every call). The parameters stay the
        same ``Parameter`` objects (now views of the buffer). Runs on CUDA with cuDNN; a no-op elsewhere.
        Called on construction and after every ``.to()`` / ``.cuda()``.
        """
        weights = self._flat_weights()
        first = weights[0]
        if not (first.is_cuda and torch.backends.cudnn.enabled):
            return
        if any(w.dtype != first.dtype or not w.is_cuda or not torch.backends.cudnn.is_acceptable(w) for w in weights):
            return
        if len({w.data_ptr() for w in weights}) != len(weights):  # aliased parameters: keep the copying path
            return
        import torch.backends.cudnn.rnn as cudnn_rnn

        mode = {"rnn": "RNN_TANH", "lstm": "LSTM", "gru": "GRU"}[self.cell]
        with torch.cuda.device_of(first), torch.no_grad():
            if torch._use_cudnn_rnn_flatten_weight():
                torch._cudnn_rnn_flatten_weight(
                    weights, 4 if self.bias else 2, self.input_size, cudnn_rnn.get_cudnn_mode(mode),
                    self.hidden_size, 0, self.num_layers, self.batch_first, self.bidirectional,
                )

    def _apply(self, fn, *args, **kwargs):  # type: ignore[override]
        ret = super()._apply(fn, *args, **kwargs)
        self.flatten_parameters()  # moved or converted parameters: flatten again (as torch.nn.LSTM does)
        return ret

    def init_state(
        self, batch_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> State:
        """Zero state: ``h`` (D*num_layers, N, H), or ``(h, c)`` for LSTM.

        Device and dtype default to the parameters'.
        """
        if not isinstance(batch_size, torch.SymInt):  # SymInt: traced
            check_int("batch_size", batch_size, min=1)
        ref = self.weight_hh_l0
        shape = (self.num_directions * self.num_layers, batch_size, self.hidden_size)
        kw = {"device": device if device is not None else ref.device, "dtype": dtype or ref.dtype}
        h = torch.zeros(shape, **kw)
        return (h, torch.zeros(shape, **kw)) if self.cell == "lstm" else h

    # ------------------------------------------------------------------ checks
    @property
    def _dropout_active(self) -> bool:
        return self.training or self.mc_dropout

    @property
    def _param_dtype(self) -> torch.dtype:
        """The parameters' dtype: the dtype of every returned state."""
        return self.weight_hh_l0.dtype

    def _check_input(self, x: Tensor, batch_first: bool) -> None:
        layout = "(N, L, F)" if batch_first else "(L, N, F)"
        if x.dim() != 3:
            raise ValueError(f"Expected a 3-D input {layout}, got a {x.dim()}-D tensor of shape {list(x.shape)}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"Expected input feature size (last dim) {self.input_size}, got {x.shape[-1]}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"Expected a non-empty input {layout}, got shape {list(x.shape)}")
        self._check_input_dtype(x)

    def _check_input_dtype(self, x: Tensor) -> None:
        if not x.dtype.is_floating_point:
            raise ValueError(f"Expected a floating-point input, got {x.dtype}")
        if x.dtype != self._param_dtype and autocast_dtype(x.device.type) is None:
            raise ValueError(
                f"Expected input dtype {self._param_dtype} (the parameters'; other dtypes only under "
                f"torch.autocast), got {x.dtype}"
            )

    def _prepare_state(self, state: State | None, n: int, like: Tensor) -> State:
        """Check an incoming state and cast it to the parameters' dtype (zeros if None)."""
        if state is None:
            return self.init_state(n, device=like.device)
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
            if not t.dtype.is_floating_point:
                raise ValueError(f"Expected {name} to be a floating-point tensor, got {t.dtype}")
        return _cast_state(tuple(state) if self.cell == "lstm" else state, self._param_dtype)

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
            raise ValueError(f"Expected every entry of lengths in [1, {length}] (L of the input), got min {lo}, max {hi}")
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
            self._check_input_dtype(data)
            n = int(batch_sizes[0])
            hx = self._prepare_state(state, n, data)
            if sorted_idx is not None:
                hx = _select_rows(hx, sorted_idx)
            masks = self._draw_masks(n, len(batch_sizes), data)
            out, hn = self._run(data, batch_sizes, hx, masks)
            hn = _cast_state(hn, self._param_dtype)
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
        masks = self._draw_masks(n, length, input)
        out, hn = self._run(x, None, hx, masks)  # (L, N, D*H)
        return (out.transpose(0, 1) if self.batch_first else out), _cast_state(hn, self._param_dtype)

    def forward_steps(self, input: Tensor, state: State | None = None) -> tuple[Tensor, list[State]]:
        """Unrolled forward: one step at a time over the same parameters, returning every step's state.

        Computes the same as :meth:`forward` (to float rounding, with the same dropout semantics: masks are
        drawn once for the whole call, in the same order, so the same RNG seed gives the same masks; step t
        uses zoneout's draws of step t), but
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
        masks = self._draw_masks(n, x.shape[0], input)
        outs, step_states = [], []
        for t in range(x.shape[0]):
            out_t, hx = self._run(x[t : t + 1], None, hx, masks.at_step(t))  # (1, N, H)
            hx = _cast_state(hx, self._param_dtype)
            outs.append(out_t)
            step_states.append(hx)
        out = torch.cat(outs, 0)  # (L, N, H)
        return (out.transpose(0, 1) if self.batch_first else out), step_states

    # ------------------------------------------------------------------ internals
    def _draw_masks(self, n: int, length: int, like: Tensor) -> _Masks:
        """Draw every mask of one forward call (fixed order: input, weights, layers, states, output, zoneout).

        Masks are drawn in the parameters' dtype on ``like``'s device (scaled masks stay exact under
        autocast); zoneout draws are (L, N, H) per layer and direction, indexed by time step.
        """
        k = len(self._names)
        masks = _Masks(w_hh=[None] * k, layer=[None] * self.num_layers, state=[None] * k,
                       zoneout_h=[None] * k, zoneout_c=[None] * k)
        like = self.weight_hh_l0.new_empty(0, device=like.device)
        if self.zoneout > 0 and not self._dropout_active:  # eval: the expectation
            masks.zoneout_h = [self.zoneout] * k
            if self.cell == "lstm":
                masks.zoneout_c = [self.zoneout] * k
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
        if self.zoneout > 0:
            shape = (length, n, self.hidden_size)
            masks.zoneout_h = [_keep_mask(shape, self.zoneout, like) for _ in self._names]
            if self.cell == "lstm":
                masks.zoneout_c = [_keep_mask(shape, self.zoneout, like) for _ in self._names]
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
        # One dtype in (the parameters'); under autocast torch's kernels choose their compute dtype as they
        # do for torch.nn.LSTM (cuDNN and oneDNN's LSTM cast to autocast's dtype themselves), except below.
        x, hx = x.to(weights[0].dtype), _cast_state(hx, weights[0].dtype)
        own = num_layers == self.num_layers and all(isinstance(w, nn.Parameter) for w in weights)
        amp = autocast_dtype(x.device.type)
        guard: contextlib.AbstractContextManager = contextlib.nullcontext()
        if x.is_cuda and amp is not None and amp != torch.float16 and weights[0].dtype != torch.float64:
            # torch's cuDNN autocast wrapper casts RNNs to float16 whatever autocast's dtype (at::kHalf in
            # ATen's AutocastRNN.cpp): a bf16 run would silently compute its recurrence in fp16, without a
            # gradient scaler. Run cuDNN in autocast's dtype ourselves, or in float32 where it has no kernel.
            dtype = amp if _cuda_lowp_rnn_ok(self.cell, amp, x.device) else torch.float32
            guard = torch.autocast("cuda", enabled=False)
            x, hx = x.to(dtype), _cast_state(hx, dtype)
            weights = self._cudnn_chunk(weights, num_layers, dtype)
        elif x.is_cuda and not own and amp is None:
            # one layer's call or DropConnect-dropped weights: not the flattened parameter buffer (under
            # fp16 autocast, cuDNN's cast re-flattens the weights on every call anyway)
            weights = self._cudnn_chunk(weights, num_layers, None)
        if amp is not None and x.device.type == "cpu" and self.cell == "lstm" and not _cpu_lowp_lstm_ok(amp):
            guard = torch.autocast("cpu", enabled=False)  # no oneDNN kernel in that dtype here: float32
        with guard:
            if batch_sizes is None:
                res = kernel(x, hx, weights, self.bias, num_layers, 0.0, self.training, self.bidirectional, False)
            else:
                res = kernel(
                    x, batch_sizes, hx, weights, self.bias, num_layers, 0.0, self.training, self.bidirectional
                )
        if self.cell == "lstm":
            return res[0], (res[1], res[2])
        return res[0], res[1]

    def _cudnn_chunk(self, weights: list[Tensor], num_layers: int, dtype: torch.dtype | None) -> list[Tensor]:
        """``weights`` (cast to ``dtype``) as views of one fresh buffer in cuDNN's layout for this call.

        cuDNN takes an RNN's weights without its per-call "not part of single contiguous chunk of memory"
        warning and copy only when they are views of one buffer at the offsets it chooses (which depend on
        the layer count and directions). The offsets come from torch's own flattening of placeholder
        tensors of the same shapes (cached). Where cuDNN will not run (disabled, or a dtype it refuses) the
        weights go to the kernel as they are.
        """
        # offsets count elements; torch's cuDNN helpers accept fp16/32/64 placeholders only (bf16 as fp32)
        placeholder = dtype or weights[0].dtype
        layout = _cudnn_layout(
            self.cell, tuple(tuple(w.shape) for w in weights), num_layers, self.bidirectional, self.bias,
            torch.float32 if placeholder == torch.bfloat16 else placeholder, weights[0].device,
        )
        if layout is None:
            return weights if dtype is None else [w.to(dtype) for w in weights]
        return _pack(weights, *layout, dtype=dtype)

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
            or any(z is not None for z in masks.zoneout_h)
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
                if masks.state[layer * d] is not None or masks.zoneout_h[layer * d] is not None:
                    out, hn_l = self._step_layer(inp, batch_sizes, hx_l, layer, masks)
                else:
                    weights = [w for k in range(layer * d, (layer + 1) * d) for w in self._weights(k, masks)]
                    out, hn_l = self._kernel(inp, batch_sizes, hx_l, weights, 1)
                if self._residual_at(layer):
                    out = out + layer_in
                finals.append(hn_l)
                layer_in = out
            out = layer_in
            finals = [_cast_state(f, self._param_dtype) for f in finals]  # layers may differ under autocast
            if lstm:
                hn = (torch.cat([f[0] for f in finals], 0), torch.cat([f[1] for f in finals], 0))
            else:
                hn = torch.cat(finals, 0)
        out = _apply_row_mask(out, masks.output, batch_sizes)
        return out, hn

    def _step_layer(
        self, x: Tensor, batch_sizes: Tensor | None, hx: State, layer: int, masks: _Masks
    ) -> tuple[Tensor, State]:
        """One layer (both directions) through the per-step recurrence (Gal's mask on h_{t-1}, zoneout):
        precomputed input projection for the whole sequence, then a step loop with one product per step.

        LSTM and GRU run the hand-written recurrences (unless ``second_order``); packed rows are padded for
        them, and the steps past a row's length are frozen (h, c kept: zoneout weight 1), which is exactly
        the packed recurrence; the tanh RNN and ``second_order`` run the autograd step loop."""
        lstm = self.cell == "lstm"
        hand_written = self.cell != "rnn" and not self.second_order
        frozen, lengths = None, None
        if batch_sizes is not None and hand_written:
            x, lengths = pad_packed_sequence(PackedSequence(x, batch_sizes), total_length=len(batch_sizes))
            steps_idx = torch.arange(len(batch_sizes))
            frozen = (steps_idx[:, None] >= lengths[None, :]).unsqueeze(-1)  # (L, N, 1): past the row's end
            frozen = frozen.to(device=x.device, dtype=self._param_dtype)
            batch_sizes = None
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
            mask, zh, zc = masks.state[k], masks.zoneout_h[k], masks.zoneout_c[k]
            if frozen is not None:
                zh, zc = _freeze(zh, frozen), (_freeze(zc, frozen) if lstm else None)
            if lstm and hand_written:  # hand-written backward, one weight-gradient product
                if direction == 1:  # run the reversed sequence; zoneout draws stay tied to time steps
                    xp, zh, zc = (z.flip(0) if isinstance(z, Tensor) else z for z in (xp, zh, zc))
                out, h, c = lstm_recurrence(xp, h0, c0, w_hh, mask, zh, zc)
                outs.append(out.flip(0) if direction == 1 else out)
                hs.append(h)
                cs.append(c)
                continue
            if self.cell == "gru" and hand_written:
                if direction == 1:
                    xp, zh = (z.flip(0) if isinstance(z, Tensor) else z for z in (xp, zh))
                out, h = gru_recurrence(xp, h0, w_hh, b_hh, mask, zh)
                outs.append(out.flip(0) if direction == 1 else out)
                hs.append(h)
                continue
            steps = list(xp.unbind(0)) if batch_sizes is None else list(xp.split(batch_sizes.tolist()))
            step_outs, h, c = step_loop(
                self.cell, steps, h0, c0, w_hh, None if lstm else b_hh, mask, direction == 1, zh, zc
            )
            outs.append(torch.stack(step_outs) if batch_sizes is None else torch.cat(step_outs))
            hs.append(h)
            cs.append(c)
        out = outs[0] if len(outs) == 1 else torch.cat(outs, -1)
        if lengths is not None:  # back to packed rows
            out = pack_padded_sequence(out, lengths).data
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
        if self.zoneout:
            s += f", zoneout={self.zoneout}"
        if self.second_order:
            s += ", second_order=True"
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


def _cast_state(state: State, dtype: torch.dtype) -> State:
    """``state`` with every tensor in ``dtype`` (no copy where it already is)."""
    if isinstance(state, tuple):
        return tuple(s.to(dtype) for s in state)  # type: ignore[return-value]
    return state.to(dtype)


def _freeze(z: Zoneout, frozen: Tensor) -> Tensor:
    """Zoneout weights with every frozen step (1 in ``frozen`` (L, N, 1)) keeping its previous value."""
    if z is None:
        return frozen
    return z + (1 - z) * frozen  # (L, N, H) or, for the constant p of eval, (L, N, 1)


def _keep_mask(shape: tuple[int, ...], p: float, like: Tensor) -> Tensor:
    """Zoneout draws: 1 (keep the previous value) with probability ``p``, else 0; unscaled."""
    return like.new_empty(shape).uniform_().lt_(p)


@functools.cache
def _cpu_lowp_lstm_ok_cached(dtype: torch.dtype, mkldnn: bool) -> bool:
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", dtype=dtype):
            x = torch.ones(2, 1, 2, requires_grad=True)
            h = torch.zeros(1, 1, 2)
            weights = [torch.full((8, 2), 0.1), torch.full((8, 2), 0.1), torch.zeros(8), torch.zeros(8)]
            out = _VF.lstm(x, (h, h), weights, True, 1, 0.0, True, False, False)[0]
            out.float().sum().backward()
    except RuntimeError:
        return False
    return True


@functools.cache
def _cudnn_layout(
    cell: str, shapes: tuple[tuple[int, ...], ...], num_layers: int, bidirectional: bool, bias: bool,
    dtype: torch.dtype, device: torch.device,
) -> tuple[list[int], int] | None:
    """(offset of each weight, buffer length) in the one buffer cuDNN wants for these weights; None without
    cuDNN. Read off torch's own flattening (``torch._cudnn_rnn_flatten_weight``, what ``nn.LSTM`` uses) of
    uninitialised placeholders of the same shapes, once per configuration."""
    if device.type != "cuda" or not torch.backends.cudnn.enabled or not torch._use_cudnn_rnn_flatten_weight():
        return None
    import torch.backends.cudnn.rnn as cudnn_rnn

    placeholders = [torch.empty(shape, device=device, dtype=dtype) for shape in shapes]
    if not all(torch.backends.cudnn.is_acceptable(p) for p in placeholders):
        return None
    mode = cudnn_rnn.get_cudnn_mode({"rnn": "RNN_TANH", "lstm": "LSTM", "gru": "GRU"}[cell])
    with torch.cuda.device_of(placeholders[0]), torch.no_grad():
        torch._cudnn_rnn_flatten_weight(
            placeholders, 4 if bias else 2, shapes[0][1], mode, shapes[1][1], 0, num_layers, True, bidirectional
        )
    storage = placeholders[0].untyped_storage()
    if any(p.untyped_storage().data_ptr() != storage.data_ptr() for p in placeholders):
        return None
    return [p.storage_offset() for p in placeholders], storage.nbytes() // placeholders[0].element_size()


@functools.cache
def _cuda_lowp_rnn_ok(cell: str, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether cuDNN runs ``cell`` (forward and backward) with ``dtype`` tensors on ``device``, outside
    autocast. Probed once per (cell, dtype, device), on constant tensors (no RNG use)."""
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cuda", enabled=False), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cuDNN's weight-copy warning: these placeholders are not flattened
            x = torch.ones(2, 1, 2, device=device, dtype=dtype, requires_grad=True)
            h = torch.zeros(1, 1, 2, device=device, dtype=dtype)
            weights = [torch.full((2 * gates, 2), 0.1, device=device, dtype=dtype) for _ in range(2)]
            weights += [torch.zeros(2 * gates, device=device, dtype=dtype) for _ in range(2)]
            hx = (h, h) if cell == "lstm" else h
            out = _KERNELS[cell](x, hx, weights, True, 1, 0.0, True, False, False)[0]
            out.float().sum().backward()
    except RuntimeError:
        return False
    return True


def _cpu_lowp_lstm_ok(dtype: torch.dtype) -> bool:
    """Whether torch's fused LSTM runs (forward and backward) under CPU autocast to ``dtype`` here.

    oneDNN has no bf16 / fp16 LSTM primitive on CPUs without the matching AVX-512 / AMX support ("could
    not create a primitive descriptor"). Probed once per process (and oneDNN switch), on constant tensors
    (no RNG use).
    """
    return _cpu_lowp_lstm_ok_cached(dtype, torch.backends.mkldnn.enabled)


def _check_torch_keywords(cell: str, dropout: float, nonlinearity: str | None, proj_size: int) -> None:
    """Refuse the ``torch.nn.RNN/LSTM/GRU`` keywords that mean something else here, naming the option."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or dropout != 0:
        raise ValueError(
            f"Expected dropout=0 (torch.nn.LSTM's keyword): RNNStack's dropout between layers is "
            f"layer_dropout (step-tied: one mask per sequence, the same at every step), with input_dropout, "
            f"output_dropout and recurrent_dropout beside it; got dropout={dropout!r}"
        )
    if nonlinearity is not None:
        if cell != "rnn":
            raise ValueError(
                f"Expected nonlinearity=None for cell={cell!r} (torch.nn.RNN's keyword applies to cell='rnn'), "
                f"got {nonlinearity!r}"
            )
        if nonlinearity != "tanh":
            raise ValueError(
                f"Expected nonlinearity='tanh' (cell='rnn' is the tanh RNN; relu is not available), "
                f"got {nonlinearity!r}"
            )
    if isinstance(proj_size, bool) or proj_size != 0:
        raise ValueError(f"Expected proj_size=0 (RNNStack has no LSTM projections), got {proj_size!r}")


def _pack(weights: list[Tensor], offsets: list[int], total: int, dtype: torch.dtype | None = None) -> list[Tensor]:
    """``weights`` as views of ONE fresh buffer of ``total`` elements, weight ``i`` at element ``offsets[i]``
    (gaps zero-filled), cast to ``dtype`` once as a whole; autograd-connected to ``weights``."""
    with torch.profiler.record_function("lightning_rnn.one_chunk_weights"):  # counted by benchmarks/gpu_check.py
        pieces, cursor = [], 0
        for i in sorted(range(len(weights)), key=offsets.__getitem__):
            if offsets[i] > cursor:
                pieces.append(weights[i].new_zeros(offsets[i] - cursor))
            pieces.append(weights[i].reshape(-1))
            cursor = offsets[i] + weights[i].numel()
        if total > cursor:
            pieces.append(weights[0].new_zeros(total - cursor))
        flat = torch.cat(pieces)
        if dtype is not None:
            flat = flat.to(dtype)
        return [flat[o : o + w.numel()].view(w.shape) for o, w in zip(offsets, weights)]
