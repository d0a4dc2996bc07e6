"""Per-lag gradient norms ‖∂L_t/∂h_{t−k}‖: how much gradient survives k steps back — and the probe that measures them.

Given the per-step recurrent states of an unrolled forward (``RNNStack.forward_steps``, or any step loop
whose ``step_states[t]`` is the very tensor fed into step t+1) and the loss at every target position,
:func:`per_lag_gradient_norms` computes

    G(k) = mean over target positions t >= k and batch rows r of ‖∂L_{t,r} / ∂h_{t−k,r}‖,   k = 0..K

where h_s is the full recurrent state after step s — every layer's h, and c for an LSTM, or every tensor
of a user's own (tuple / dict) state: the state S_s that step s+1 receives — and, optionally, the same per
layer. Derivatives are taken with respect to the coordinates of S_s (each layer's state as an independent
input of step s+1), i.e. along the recurrent edge: for k >= 1 that is the product of the per-step
Jacobians ∂S_{s+1}/∂S_s (Pascanu et al.'s quantity); at k = 0 only the coordinates the loss reads (the top
layer's h) get gradient. The normalised curve G(k)/G(0) and the *gradient horizon* — the smallest lag k
with G(k)/G(0) < ε — say how far back the loss can still teach the network (Pascanu et al. 2013; Aicher et
al. 2019 choose a truncation length from it).

:func:`measure_gradient_flow` is the whole probe procedure both callbacks
(:class:`~lightning_rnn.callbacks.GradientFlowMonitor`, :class:`~lightning_rnn.callbacks.AdaptiveTBPTT`)
run: the module's probe (:class:`SupportsGradientFlowProbe`) in **training mode** with every dropout
probability set to zero (:func:`dropout_disabled`; cuDNN refuses a backward through an RNN run in eval
mode), the RNG forked, running statistics of normalisation layers restored, and no process-wide flag
touched; then :func:`per_lag_gradient_norms`.

Cost: one backward pass (``torch.autograd.grad`` with respect to the states only — parameters' ``.grad``
are never touched) per target position, or — ``backward_passes=1`` with per-row losses — one in all: the
rows are dealt to the target positions and the pass differentiates the sum of each row's loss at its own
target. Rows of a recurrent net are independent, so the gradient of a sum over rows at row r is row r's
own gradient; norms are taken per row and then averaged. Models that couple rows (batch norm over the
batch, attention across the batch) break that assumption.

Pure PyTorch; no lightning import.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from lightning_rnn._validation import check_int
from lightning_rnn.nn.dropout import EmbeddingDropout, LockedDropout, WeightDropout
from lightning_rnn.nn.rnn import RNNStack

__all__ = [
    "GradientFlowResult",
    "State",
    "SupportsGradientFlowProbe",
    "dropout_disabled",
    "gradient_horizon",
    "measure_gradient_flow",
    "per_lag_gradient_norms",
    "select_target_positions",
    "unrolled_recurrence",
]

#: A recurrent state: one tensor ``(num_layers, N, H)``, ``(N, H)`` or ``(N,)``, or any nesting of tuples,
#: lists and dicts of them (LSTM ``(h, c)``, a user's ``{"h": ..., "c": ...}``); ``None`` leaves are skipped.
State = Any

#: The dropout attributes set to 0 by :func:`dropout_disabled`, per module type.
_DROPOUT_ATTRIBUTES: tuple[tuple[type[nn.Module], tuple[str, ...]], ...] = (
    (nn.modules.dropout._DropoutNd, ("p",)),
    (nn.RNNBase, ("dropout",)),
    (RNNStack, ("input_dropout", "layer_dropout", "output_dropout", "recurrent_dropout")),
    (LockedDropout, ("p",)),
    (EmbeddingDropout, ("p",)),
    (WeightDropout, ("p",)),
)


@runtime_checkable
class SupportsGradientFlowProbe(Protocol):
    """The probe protocol used by :class:`~lightning_rnn.callbacks.GradientFlowMonitor` and
    :class:`~lightning_rnn.callbacks.AdaptiveTBPTT`.

    Every :class:`~lightning_rnn.TBPTTModule` implements it: by default from its own ``tbptt_step`` (run one
    time step at a time, the state kept in the graph); a module may override it with a faster one, e.g.::

        def gradient_flow_probe(self, batch, max_steps=None):
            x, y = batch                                       # your batch, as training_step gets it
            if max_steps is not None:                          # the module slices time itself
                x, y = x[:, :max_steps], y[:, :max_steps]
            out, step_states = self.rnn.forward_steps(self.embed(x))   # RNNStack's unrolled forward
            top = torch.stack([s[0][-1] for s in step_states], 1)      # the loss must read the states
            losses = F.cross_entropy(self.head(top).transpose(1, 2), y, reduction="none")  # (N, L)
            return step_states, losses.masked_fill(y == PAD, float("nan"))

    Contract:

    - ``batch``: the training batch as ``training_step`` receives it (or the fixed probe batch given to
      the callback). ``max_steps``: when not None, use only the first ``max_steps`` time steps (or fewer
      if the batch is shorter); when None, the whole batch.
    - Returns ``(step_states, step_losses)``: ``step_states`` a list of length L, ``step_states[t]`` the
      full recurrent state after step t with autograd attached, and *the very tensor(s) fed into step t+1*
      (so ``autograd.grad(loss_t, step_states[t-k])`` is the total derivative through k steps);
      ``step_losses`` either ``(N, L)``, the loss of every row at each target position, **NaN where there
      is no target** (padding; zeros would count as a perfectly vanished gradient), or ``(L,)``, the loss
      at each position summed over the rows (NaN where no row has a target; rows must be independent —
      a row whose gradient is zero at every lag then counts as having no target there).
    - Start from a fresh state and leave the module's carried TBPTT state and every other attribute
      untouched. The caller (:func:`measure_gradient_flow`) runs it in training mode with dropout switched
      off by :func:`dropout_disabled`, under ``torch.enable_grad()``, with the RNG state forked and
      restored, and differentiates with respect to the states only. Dropout applied through a functional
      call (``F.dropout(x, p, self.training)``) is not switched off: use a module (``nn.Dropout``,
      ``LockedDropout``) for it.
    """

    def gradient_flow_probe(self, batch: Any, max_steps: int | None = None) -> tuple[Sequence[State], Tensor]:
        ...


@dataclass(frozen=True)
class GradientFlowResult:
    """Per-lag gradient norms of one probe.

    Attributes:
        curve: ``(K+1,)`` G(k), mean ‖∂L_t/∂h_{t−k}‖ over sampled targets and rows (NaN for a lag no
            sampled target reaches).
        normalized: ``(K+1,)`` G(k)/G(0) (NaN everywhere when G(0) = 0).
        horizon: smallest k with G(k)/G(0) < eps, or None meaning "> K" (not reached within the probe).
        eps: the threshold used for ``horizon``.
        counts: ``(K+1,)`` number of (target, row) pairs averaged at each lag.
        target_positions: the target positions t used.
        per_layer: ``(num_layers, K+1)`` the same curve for each layer's state alone (h and c together),
            or None when not requested.
        per_layer_normalized: ``(num_layers, K+1)`` each layer's curve over the full-state G(0) (a layer
            below the top gets no gradient at lag 0: the loss at t reads S_t through the top layer), or None.
    """

    curve: Tensor
    normalized: Tensor
    horizon: int | None
    eps: float
    counts: Tensor
    target_positions: tuple[int, ...]
    per_layer: Tensor | None = None
    per_layer_normalized: Tensor | None = None

    @property
    def max_lag(self) -> int:
        return self.curve.numel() - 1


def gradient_horizon(normalized: Tensor, eps: float = 1e-2) -> int | None:
    """Smallest lag k with ``normalized[k] < eps``; None when no lag is below (NaN never counts).

    Example::

        >>> gradient_horizon(torch.tensor([1.0, 0.5, 0.05, 0.001]), eps=0.01)
        3
        >>> gradient_horizon(torch.tensor([1.0, 0.9]), eps=0.01) is None
        True
    """
    _check_eps(eps)
    below = (normalized < eps).nonzero()
    return int(below[0, 0]) if below.numel() else None


def _check_eps(eps: float) -> None:
    if not (isinstance(eps, (int, float)) and 0.0 < float(eps) < 1.0):
        raise ValueError(f"Expected eps in the open interval (0, 1), got {eps!r}")


def _spaced(cands: Sequence[int], n: int) -> list[int]:
    """``n`` evenly spaced items of the sorted list ``cands``, always including its last one."""
    if n <= 0 or not cands:
        return []
    if n == 1:
        return [cands[-1]]
    hi = len(cands) - 1
    return sorted({cands[round(hi - i * hi / (n - 1))] for i in range(min(n, len(cands)))})


def select_target_positions(length: int, max_lag: int, num_targets: int | None,
                            valid: Sequence[int] | None = None) -> list[int]:
    """Deterministic choice of target positions for a probe of ``length`` steps.

    ``None``: every position (every ``valid`` one). Otherwise ``num_targets`` positions, taken evenly spaced
    from the candidates in ``[K, L-1]`` (targets that reach every lag, so all lags average over the same
    targets) and, when those are fewer than ``num_targets``, topped up with evenly spaced candidates from
    ``[0, K-1]`` (those only count for lags k <= t). Candidates are ``valid`` (positions that have a
    target at all) or every position. No RNG is used.

    Example::

        >>> select_target_positions(10, 3, 4)
        [3, 5, 7, 9]
        >>> select_target_positions(5, 4, 3)
        [0, 3, 4]
        >>> select_target_positions(10, 3, 2, valid=[1, 4, 9])
        [4, 9]
    """
    cands = list(range(length)) if valid is None else sorted({int(t) for t in valid if 0 <= int(t) < length})
    if num_targets is None or num_targets >= len(cands):
        return cands
    if num_targets < 1:
        raise ValueError(f"Expected num_targets >= 1 or None, got {num_targets}")
    full = [t for t in cands if t >= max_lag]
    if len(full) >= num_targets:
        return _spaced(full, num_targets)
    short = [t for t in cands if t < max_lag]
    return sorted(set(_spaced(short, num_targets - len(full))) | set(full))


def _leaves(state: State) -> list[Tensor]:
    """The tensors of a nested state (tensor / tuple / list / dict; ``None`` leaves skipped), in order."""
    if state is None:
        return []
    if isinstance(state, Tensor):
        return [state]
    if isinstance(state, Mapping):
        return [t for v in state.values() for t in _leaves(v)]
    if isinstance(state, (tuple, list)):
        return [t for v in state for t in _leaves(v)]
    raise TypeError(
        f"Expected each step state to be a Tensor or a nested tuple/list/dict of Tensors, got {type(state).__name__}"
    )


def _as_layers(x: Tensor, n: int) -> Tensor:
    """(num_layers, N, *) , (N, H) or (N,) -> (num_layers, N, H')."""
    if x.dim() == 1 and x.shape[0] == n:
        return x.view(1, n, 1)
    if x.dim() == 2 and x.shape[0] == n:
        return x.unsqueeze(0)
    if x.dim() >= 3 and x.shape[1] == n:
        return x.flatten(2)
    raise ValueError(
        f"Expected a state tensor of shape (num_layers, N={n}, H), (N={n}, H) or (N={n},), got {list(x.shape)}"
    )


def _leading_rows(x: Tensor) -> int:
    """N of a state tensor laid out (num_layers, N, *), (N, H) or (N,)."""
    return int(x.shape[1]) if x.dim() >= 3 else int(x.shape[0])


def per_lag_gradient_norms(
    step_states: Sequence[State],
    step_losses: Tensor,
    max_lag: int,
    *,
    num_targets: int | None = None,
    target_positions: Sequence[int] | None = None,
    backward_passes: int | None = None,
    eps: float = 1e-2,
    per_layer: bool = False,
) -> GradientFlowResult:
    """G(k) = mean over targets t >= k and rows of ‖∂L_t/∂h_{t−k}‖ for k = 0..max_lag.

    Args:
        step_states: list of L states (see :class:`SupportsGradientFlowProbe`), autograd attached. Leaves
            that do not require grad (integer counters, constants) are left out of the norms.
        step_losses: ``(N, L)`` loss of every row at every target position, NaN where there is no target;
            or ``(L,)`` the loss at each position summed over rows (NaN where there is none): then every
            target takes one backward pass and a row counts at a target when its gradient is non-zero at
            some lag.
        max_lag: K, the largest lag; 1 <= K <= L - 1.
        num_targets: how many target positions to use (chosen by :func:`select_target_positions` among the
            positions that have a target); None: every such position (one backward pass each).
        target_positions: explicit target positions instead (overrides ``num_targets``).
        backward_passes: for ``(N, L)`` losses only. None: every row at every target, one backward pass per
            target (the exact mean over all (target, row) pairs). An int p: the rows are dealt round-robin
            to the targets (row r takes target ``(r + j) mod n`` in pass j) and only p passes run — each row a
            sample at p targets, for p backward passes in total; ``1`` is the cheapest (one backward for the
            whole probe) and still averages over every target when there are at least as many rows as
            targets. Ignored for ``(L,)`` losses.
        eps: threshold of the gradient horizon, in (0, 1).
        per_layer: also compute the curve of each layer's state alone (the layers of the state's
            ``(num_layers, N, H)`` tensors; other tensors of the state count in the full curve only).

    Inputs:
        step_states[t]: ``(num_layers, N, H)``, ``(N, H)`` or ``(N,)`` tensors, or nested tuples / lists /
        dicts of them (LSTM ``(h, c)``, a user's dict state).
        step_losses: ``(N, L)`` or ``(L,)``.

    Outputs:
        A :class:`GradientFlowResult`; ``curve`` is ``(K+1,)`` float32 on the states' device.

    Example::

        >>> rnn = torch.nn.RNN(3, 5, nonlinearity="tanh", batch_first=True)
        >>> x = torch.randn(2, 6, 3)
        >>> h, states = torch.zeros(1, 2, 5), []
        >>> for t in range(6):
        ...     _, h = rnn(x[:, t : t + 1], h)
        ...     states.append(h)
        >>> losses = torch.stack([s.pow(2).sum((0, 2)) for s in states], 1)  # (N, L)
        >>> res = per_lag_gradient_norms(states, losses, max_lag=5)
        >>> res.curve.shape, float(res.normalized[0])
        (torch.Size([6]), 1.0)
    """
    _check_eps(eps)
    if not isinstance(step_losses, Tensor) or step_losses.dim() not in (1, 2):
        shape = list(step_losses.shape) if isinstance(step_losses, Tensor) else type(step_losses).__name__
        raise ValueError(f"Expected step_losses of shape (N, L) or (L,), got {shape}")
    summed = step_losses.dim() == 1
    length = int(step_losses.shape[-1])
    if len(step_states) != length:
        raise ValueError(f"Expected {length} step states (one per step of step_losses), got {len(step_states)}")
    check_int("max_lag", max_lag, min=1, max=length - 1)  # [1, L - 1]
    states = [[c for c in _leaves(s) if c.requires_grad] for s in step_states]  # [t][leaf] autograd knows
    if not states[0]:
        raise ValueError(
            "Expected step_states with autograd attached (requires_grad=True): run the probe under "
            "torch.enable_grad() with parameters that require grad"
        )
    ref = states[0][0]
    if summed:
        n = _leading_rows(ref)
    else:
        n = int(step_losses.shape[0])
    # layers: the most common layer count among the state's tensors (an LSTM's h and c: num_layers); tensors
    # with another count (a pooling accumulator (N, H) beside (layers, N, H)) count in the full-state norm only
    layer_counts = [_as_layers(c, n).shape[0] for c in states[0]]
    num_layers = max(set(layer_counts), key=lambda c: (layer_counts.count(c), c))
    check_int("backward_passes", backward_passes, min=1, allow_none=True)
    has_target = ~torch.isnan(step_losses)
    if not summed:
        has_target = has_target.any(0)
    if target_positions is None:
        valid_cols = has_target.nonzero().flatten().tolist()
        targets = select_target_positions(length, max_lag, num_targets, valid=valid_cols)
        if not targets:
            raise ValueError("Expected at least one position with a target (a non-NaN loss), got none")
    else:
        targets = sorted({int(t) for t in target_positions})
        if not targets or targets[0] < 0 or targets[-1] >= length:
            raise ValueError(f"Expected target positions in [0, {length - 1}], got {list(target_positions)}")

    device = step_losses.device
    lags = max_lag + 1
    total = torch.zeros(lags, dtype=torch.float64, device=device)
    layer_total = torch.zeros(num_layers, lags, dtype=torch.float64, device=device)
    counts = torch.zeros(lags, dtype=torch.float64, device=device)
    if backward_passes is None or summed:  # every row at every target: one pass per target
        assignments = [torch.full((n,), t, dtype=torch.long) for t in targets]
    else:  # rows dealt round-robin to the targets, shifted by one target per pass
        idx = torch.arange(n)
        tt = torch.tensor(targets, dtype=torch.long)
        assignments = [tt[(idx + j) % len(targets)] for j in range(min(backward_passes, len(targets)))]
    rows = torch.arange(n, device=device)
    lag_range = torch.arange(lags, device=device)
    for assign in assignments:
        assign = assign.to(device)
        if summed:
            loss = step_losses[assign[0]]
            if bool(torch.isnan(loss)):
                continue
        else:
            per_row = step_losses.gather(1, assign[:, None]).squeeze(1)  # (N,): row r's loss at its target
            valid = ~torch.isnan(per_row)
            if not bool(valid.any()):
                continue
            loss = torch.where(valid, per_row, torch.zeros_like(per_row)).sum()
        first = max(int(assign.min()) - max_lag, 0)
        last = int(assign.max())
        owners = [s - first for s in range(first, last + 1) for _ in states[s]]
        inputs = [c for s in range(first, last + 1) for c in states[s]]
        grads = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
        # squared norms per (step, layer, row): (steps, Ly, N)
        # the last row collects tensors with another layer count (full-state norm only)
        sq = torch.zeros(last - first + 1, num_layers + 1, n, dtype=torch.float64, device=device)
        for owner, g in zip(owners, grads):
            if g is not None:
                g2 = _as_layers(g.detach(), n).double().pow(2).sum(-1)  # (Ly, N)
                if g2.shape[0] == num_layers:
                    sq[owner, :num_layers] += g2
                else:
                    sq[owner, num_layers] += g2.sum(0)
        if summed:  # a row has a target here when its gradient reaches some state
            valid = sq.sum((0, 1)) > 0
        src = assign[None, :] - lag_range[:, None]  # (K+1, N): step t(r) - k
        ok = (src >= 0) & valid[None, :]  # (K+1, N)
        picked = sq[(src - first).clamp_min(0), :, rows[None, :]]  # (K+1, N, Ly + 1)
        w = ok.double()
        total += (picked.sum(-1).sqrt() * w).sum(-1)
        if per_layer:
            layer_total += (picked[..., :num_layers].sqrt() * w[..., None]).sum(1).transpose(0, 1)
        counts += w.sum(-1)

    curve = (total / counts).float()  # NaN where counts == 0
    normalized = curve / curve[0] if float(curve[0]) > 0 else torch.full_like(curve, math.nan)
    horizon = gradient_horizon(normalized, eps)
    pl = pln = None
    if per_layer:
        pl = (layer_total / counts).float()  # (Ly, K+1)
        pln = pl / curve[0] if float(curve[0]) > 0 else torch.full_like(pl, math.nan)
    return GradientFlowResult(
        curve=curve, normalized=normalized, horizon=horizon, eps=float(eps), counts=counts.long(),
        target_positions=tuple(targets), per_layer=pl, per_layer_normalized=pln,
    )


# ---------------------------------------------------------------------- the probe procedure
@contextlib.contextmanager
def dropout_disabled(module: nn.Module) -> Iterator[None]:
    """Set every dropout probability inside ``module`` to 0 for the block, whatever the modules' mode.

    Covers ``torch.nn.Dropout`` (and every ``_DropoutNd``), the inter-layer ``dropout`` of
    ``torch.nn.RNN/LSTM/GRU``, :class:`~lightning_rnn.nn.RNNStack`'s ``input_dropout``, ``layer_dropout``,
    ``output_dropout`` and ``recurrent_dropout``, :class:`~lightning_rnn.nn.LockedDropout`,
    :class:`~lightning_rnn.nn.EmbeddingDropout` and :class:`~lightning_rnn.nn.dropout.WeightDropout`. The
    modules stay in training mode (cuDNN can then differentiate the recurrent forward) and compute exactly
    their eval-mode (deterministic) function. Every value is restored afterwards, also on error.

    Example::

        >>> rnn = RNNStack("lstm", 3, 4, layer_dropout=0.5, num_layers=2)
        >>> with dropout_disabled(rnn):
        ...     rnn.layer_dropout
        0.0
        >>> rnn.layer_dropout
        0.5
    """
    saved: list[tuple[nn.Module, str, Any]] = []
    try:
        for sub in module.modules():
            for kind, names in _DROPOUT_ATTRIBUTES:
                if isinstance(sub, kind):
                    for name in names:
                        value = getattr(sub, name, None)
                        if isinstance(value, (int, float)) and not isinstance(value, bool) and value != 0:
                            saved.append((sub, name, value))
                            setattr(sub, name, 0.0)
        yield
    finally:
        for sub, name, value in reversed(saved):
            setattr(sub, name, value)


def _one_step_layout(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    """The time dim of a one-step tensor call of a recurrent layer (no ``lengths``), else None."""
    x = args[0] if args else kwargs.get("input")
    lengths = args[2] if len(args) > 2 else kwargs.get("lengths")
    if not isinstance(x, Tensor) or x.dim() != 3 or lengths is not None:
        return None
    time_dim = 1 if module.batch_first else 0
    return time_dim if x.shape[time_dim] == 1 else None


@contextlib.contextmanager
def unrolled_recurrence(module: nn.Module) -> Iterator[None]:
    """Prepare every recurrent layer inside ``module`` to be run one time step per call, for a probe.

    Inside the block, a call of a unidirectional ``torch.nn.RNN/LSTM/GRU`` (without projections) or
    :class:`~lightning_rnn.nn.RNNStack` (without residual links) on a single time step (``(N, 1, F)`` or
    ``(1, N, F)``, no ``lengths``):

    - returns its new state's top-layer h as its output (same values, cast to the output's dtype): a fused
      kernel returns the output and the state as two tensors, so a loss computed from the output would not
      hang off the state in the autograd graph and ‖∂L_t/∂h_t‖ would read 0;
    - on CPU, runs as a packed one-step sequence, which torch computes with its native kernel: oneDNN's RNN
      primitive would reorder the weights and compute the weight gradients at every step's backward (many
      times slower here). No process-wide flag is touched.

    Forward hooks, removed afterwards; other layers and other calls are left as they are. Used by the
    default probe of :class:`~lightning_rnn.TBPTTModule` and by ``RNNLanguageModel``'s.

    Example::

        >>> rnn = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True)
        >>> with unrolled_recurrence(rnn):
        ...     out, (h, c) = rnn(torch.randn(5, 1, 3))
        >>> out.shape, bool((out[:, 0] == h[-1]).all())
        (torch.Size([5, 1, 4]), True)
    """
    pending: dict[int, list[int | None]] = {}

    def before(sub: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        time_dim = _one_step_layout(sub, args, kwargs)
        pending.setdefault(id(sub), []).append(time_dim)
        x = args[0] if args else None
        if time_dim is None or x is None or x.device.type != "cpu":
            return None
        data = x.select(time_dim, 0)  # (N, F)
        packed = PackedSequence(data, torch.tensor([data.shape[0]]), None, None)
        return (packed, *args[1:]), kwargs

    def after(sub: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        time_dim = pending[id(sub)].pop()
        if time_dim is None:
            return None
        out, state = output
        h = state[0] if isinstance(state, tuple) else state
        top = h[-1]  # (N, H)
        dtype = out.data.dtype if isinstance(out, PackedSequence) else out.dtype
        return top.unsqueeze(time_dim).to(dtype), state

    handles = []
    try:
        for sub in module.modules():
            plain_torch = isinstance(sub, nn.RNNBase) and not sub.bidirectional and not getattr(sub, "proj_size", 0)
            stack = isinstance(sub, RNNStack) and not sub.bidirectional and not sub.residual
            if plain_torch or stack:
                handles.append(sub.register_forward_pre_hook(before, with_kwargs=True))
                handles.append(sub.register_forward_hook(after, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _running_stats_kept(module: nn.Module) -> Iterator[None]:
    """Restore the buffers of every module that tracks running statistics (batch norm) afterwards."""
    saved = [
        (sub, name, buf.detach().clone())
        for sub in module.modules() if getattr(sub, "track_running_stats", False)
        for name, buf in sub.named_buffers(recurse=False) if buf is not None
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for sub, name, value in saved:
                getattr(sub, name).copy_(value)


def measure_gradient_flow(
    module: nn.Module,
    batch: Any,
    *,
    probe: Callable[[Any, int | None], tuple[Sequence[State], Tensor]] | None = None,
    max_lag: int | None = None,
    num_targets: int | None = 8,
    backward_passes: int | None = 1,
    eps: float = 1e-2,
    per_layer: bool = False,
) -> GradientFlowResult | None:
    """Run a gradient-flow probe on ``batch`` and return G(k), k = 0..K, without disturbing training.

    The procedure (shared by :class:`~lightning_rnn.callbacks.GradientFlowMonitor` and
    :class:`~lightning_rnn.callbacks.AdaptiveTBPTT`):

    1. ``module`` and every submodule are put in **training mode** (cuDNN refuses a backward through an
       RNN forward run in eval mode) with every dropout probability set to 0 (:func:`dropout_disabled`), so
       the probe differentiates the deterministic function; running statistics of normalisation layers are
       restored afterwards;
    2. ``probe(batch, max_steps)`` (default ``module.gradient_flow_probe``, see
       :class:`SupportsGradientFlowProbe`) runs under ``torch.enable_grad()`` with the CPU and CUDA RNG
       states forked, over ``max_steps = max_lag + num_targets`` steps (None: the whole batch);
    3. :func:`per_lag_gradient_norms` differentiates with respect to the states only: parameters' ``.grad``
       are untouched.

    Each submodule's mode and every dropout probability are restored afterwards; no process-wide setting
    (backend flags, default dtype) is changed.

    Args:
        module: the model (an ``nn.Module``; a LightningModule works as is).
        batch: the probe batch, as the probe takes it.
        probe: the probe callable; default ``module.gradient_flow_probe``.
        max_lag: K; None: the probe length - 1. A probe shorter than ``max_lag + 1`` steps measures up to its
            length - 1 (compare ``result.max_lag``).
        num_targets, backward_passes, eps, per_layer: see :func:`per_lag_gradient_norms`.

    Returns:
        The :class:`GradientFlowResult`, or None when the probe has fewer than 2 steps or no step with a
        target.

    Example::

        >>> class Tiny(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.rnn = RNNStack("gru", 2, 4, layer_dropout=0.5, num_layers=2)
        ...     def gradient_flow_probe(self, batch, max_steps=None):
        ...         out, states = self.rnn.forward_steps(batch[:, :max_steps])
        ...         return states, torch.stack([s[-1].sum(-1) for s in states], 1)  # (N, L)
        >>> model = Tiny().eval()
        >>> res = measure_gradient_flow(model, torch.randn(3, 10, 2), max_lag=4, num_targets=2)
        >>> res.max_lag, float(res.normalized[0]), model.training
        (4, 1.0, False)
    """
    if probe is None:
        probe = getattr(module, "gradient_flow_probe", None)
        if not callable(probe):
            raise TypeError(
                f"Expected a module with a gradient_flow_probe(batch, max_steps) method or a probe callable, got "
                f"{type(module).__name__} without one"
            )
    check_int("max_lag", max_lag, min=1, allow_none=True)
    max_steps = None if max_lag is None else max_lag + (num_targets or 1)
    modes = [(m, m.training) for m in module.modules()]
    devices = sorted({p.device.index for p in module.parameters() if p.device.type == "cuda" and p.device.index is not None})
    try:
        with torch.random.fork_rng(devices=devices), torch.enable_grad(), dropout_disabled(module), \
                _running_stats_kept(module):
            module.train()
            step_states, step_losses = probe(batch, max_steps)
            if not isinstance(step_losses, Tensor) or step_losses.dim() not in (1, 2):
                shape = list(step_losses.shape) if isinstance(step_losses, Tensor) else type(step_losses).__name__
                raise ValueError(f"Expected the probe's step_losses of shape (N, L) or (L,), got {shape}")
            length = int(step_losses.shape[-1])
            has_target = ~torch.isnan(step_losses)
            if length < 2 or not bool(has_target.any()):
                return None
            k = length - 1 if max_lag is None else min(max_lag, length - 1)
            return per_lag_gradient_norms(
                step_states, step_losses.float(), k, num_targets=num_targets,
                backward_passes=backward_passes, eps=eps, per_layer=per_layer,
            )
    finally:
        for m, mode in modes:
            m.training = mode
