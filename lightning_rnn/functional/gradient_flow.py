"""Per-lag gradient norms ‖∂L_t/∂h_{t−k}‖: how much gradient survives k steps back.

Given the per-step recurrent states of an unrolled forward (``RNNStack.forward_steps``, or any step loop
whose ``step_states[t]`` is the very tensor fed into step t+1) and the loss at every target position,
:func:`per_lag_gradient_norms` computes

    G(k) = mean over target positions t >= k and batch rows r of ‖∂L_{t,r} / ∂h_{t−k,r}‖,   k = 0..K

where h_s is the full recurrent state after step s — every layer's h, and c for an LSTM: the state S_s
that step s+1 receives — and, optionally, the same per layer. Derivatives are taken with respect to the
coordinates of S_s (each layer's state as an independent input of step s+1), i.e. along the recurrent
edge: for k >= 1 that is the product of the per-step Jacobians ∂S_{s+1}/∂S_s (Pascanu et al.'s
quantity); at k = 0 only the coordinates the loss reads (the top layer's h) get gradient. The
normalised curve G(k)/G(0) and the *gradient horizon* — the smallest lag k with G(k)/G(0) < ε — say how
far back the loss can still teach the network (Pascanu et al. 2013; Aicher et al. 2019 choose a
truncation length from it).

Cost: one backward pass (``torch.autograd.grad`` with respect to the states only — parameters' ``.grad``
are never touched) per target position, or — ``backward_passes=1`` — one in all: the rows are dealt to
the target positions and the pass differentiates the sum of each row's loss at its own target. Rows of a
recurrent net are independent, so the gradient of a sum over rows at row r is row r's own gradient;
norms are taken per row and then averaged. Models that couple rows (batch norm over the batch, attention
across the batch) break that assumption.

Pure PyTorch; no lightning import.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "GradientFlowResult",
    "State",
    "SupportsGradientFlowProbe",
    "gradient_horizon",
    "per_lag_gradient_norms",
    "select_target_positions",
]

#: A recurrent state: one tensor ``(num_layers, N, H)`` or ``(N, H)``, or a tuple of them (LSTM ``(h, c)``).
State = Tensor | tuple[Tensor, ...] | list[Tensor]


@runtime_checkable
class SupportsGradientFlowProbe(Protocol):
    """The probe protocol used by :class:`~lightning_rnn.callbacks.GradientFlowMonitor`.

    Every module built on ``lightning_rnn.modules`` implements it; implement it on your own
    LightningModule to use the monitor with any recurrent model::

        def gradient_flow_probe(self, batch, max_steps=None):
            x, y = batch                                       # your batch, as training_step gets it
            if max_steps is not None:                          # the module slices time itself
                x, y = x[:, :max_steps], y[:, :max_steps]
            out, step_states = self.rnn.forward_steps(self.embed(x))   # RNNStack's unrolled forward
            losses = F.cross_entropy(self.head(out).transpose(1, 2), y, reduction="none")  # (N, L)
            return step_states, losses.masked_fill(y == PAD, float("nan"))

    Contract:

    - ``batch``: the training batch as ``training_step`` receives it (or the fixed probe batch given to
      the callback). ``max_steps``: when not None, use only the first ``max_steps`` time steps (or fewer
      if the batch is shorter); when None, the module's natural probe length (e.g. its first TBPTT chunk).
    - Returns ``(step_states, step_losses)``: ``step_states`` a list of length L, ``step_states[t]`` the
      full recurrent state after step t with autograd attached, and *the very tensor(s) fed into step t+1*
      (so ``autograd.grad(loss_t, step_states[t-k])`` is the total derivative through k steps);
      ``step_losses`` a ``(N, L)`` tensor, the loss at each target position, **NaN where there is no
      target** (padding; zeros would count as a perfectly vanished gradient).
    - Start from a fresh (zero) state and leave the module's carried TBPTT state and every other attribute
      untouched. The caller runs it in eval mode (dropout off), under ``torch.enable_grad()``, with the RNG
      state forked and restored, and differentiates with respect to the states only.
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


def select_target_positions(length: int, max_lag: int, num_targets: int | None) -> list[int]:
    """Deterministic choice of target positions for a probe of ``length`` steps.

    ``None``: every position. Otherwise ``num_targets`` positions, taken evenly spaced from ``[K, L-1]``
    (targets that reach every lag, so all lags average over the same targets) and, when that range holds
    fewer than ``num_targets`` positions, topped up with evenly spaced positions from ``[0, K-1]`` (those
    only count for lags k <= t). No RNG is used.

    Example::

        >>> select_target_positions(10, 3, 4)
        [3, 5, 7, 9]
        >>> select_target_positions(5, 4, 3)
        [0, 3, 4]
    """
    if num_targets is None or num_targets >= length:
        return list(range(length))
    if num_targets < 1:
        raise ValueError(f"Expected num_targets >= 1 or None, got {num_targets}")

    def spaced(lo: int, hi: int, n: int) -> list[int]:  # n evenly spaced ints in [lo, hi], ending at hi
        if n <= 0 or hi < lo:
            return []
        if n == 1:
            return [hi]
        return sorted({round(hi - i * (hi - lo) / (n - 1)) for i in range(n)})

    full = list(range(max_lag, length))
    if len(full) >= num_targets:
        return spaced(max_lag, length - 1, num_targets)
    return sorted(set(spaced(0, max_lag - 1, num_targets - len(full))) | set(full))


def _components(state: State) -> list[Tensor]:
    if isinstance(state, Tensor):
        return [state]
    if isinstance(state, (tuple, list)) and state and all(isinstance(s, Tensor) for s in state):
        return list(state)
    raise TypeError(f"Expected each step state to be a Tensor or a tuple of Tensors, got {type(state).__name__}")


def _as_layers(x: Tensor, n: int) -> Tensor:
    """(num_layers, N, H) or (N, H) -> (num_layers, N, H')."""
    if x.dim() == 2 and x.shape[0] == n:
        return x.unsqueeze(0)
    if x.dim() >= 3 and x.shape[1] == n:
        return x.flatten(2)
    raise ValueError(f"Expected a state tensor of shape (num_layers, N={n}, H) or (N={n}, H), got {list(x.shape)}")


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
        step_states: list of L states (see :class:`SupportsGradientFlowProbe`), autograd attached.
        step_losses: ``(N, L)`` loss at every target position; NaN where there is no target.
        max_lag: K, the largest lag; 1 <= K <= L - 1.
        num_targets: how many target positions to use (chosen by :func:`select_target_positions`);
            None: every position (L backward passes).
        target_positions: explicit target positions instead (overrides ``num_targets``).
        backward_passes: None: every row at every target, one backward pass per target (the exact mean
            over all (target, row) pairs). An int p: the rows are dealt round-robin to the targets (row r
            takes target ``(r + j) mod n`` in pass j) and only p passes run — each row a sample at p
            targets, for p backward passes in total; ``1`` is the cheapest (one backward for the whole
            probe) and still averages over every target when there are at least as many rows as targets.
        eps: threshold of the gradient horizon, in (0, 1).
        per_layer: also compute the curve of each layer's state alone.

    Inputs:
        step_states[t]: ``(num_layers, N, H)`` or ``(N, H)`` tensors, or tuples of them (LSTM ``(h, c)``).
        step_losses: ``(N, L)``.

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
    if not isinstance(step_losses, Tensor) or step_losses.dim() != 2:
        shape = list(step_losses.shape) if isinstance(step_losses, Tensor) else type(step_losses).__name__
        raise ValueError(f"Expected step_losses of shape (N, L), got {shape}")
    n, length = step_losses.shape
    if len(step_states) != length:
        raise ValueError(f"Expected {length} step states (one per column of step_losses), got {len(step_states)}")
    if isinstance(max_lag, bool) or not isinstance(max_lag, int) or not 1 <= max_lag <= length - 1:
        raise ValueError(f"Expected max_lag an int in [1, L - 1] = [1, {length - 1}], got {max_lag!r}")
    states = [_components(s) for s in step_states]  # [t][component], the tensors autograd knows
    shapes = [_as_layers(c, n).shape for c in states[0]]  # each component as (Ly, N, H')
    if not all(c.requires_grad for c in states[0]):
        raise ValueError(
            "Expected step_states with autograd attached (requires_grad=True): run the probe under "
            "torch.enable_grad() with parameters that require grad"
        )
    num_layers = shapes[0][0]
    if per_layer and any(shape[0] != num_layers for shape in shapes):
        raise ValueError(f"Expected every state component to have {num_layers} layers for per_layer=True")
    if backward_passes is not None and (
        isinstance(backward_passes, bool) or not isinstance(backward_passes, int) or backward_passes < 1
    ):
        raise ValueError(f"Expected backward_passes to be an int >= 1 or None, got {backward_passes!r}")
    if target_positions is None:
        targets = select_target_positions(length, max_lag, num_targets)
    else:
        targets = sorted({int(t) for t in target_positions})
        if not targets or targets[0] < 0 or targets[-1] >= length:
            raise ValueError(f"Expected target positions in [0, {length - 1}], got {list(target_positions)}")

    device = step_losses.device
    lags = max_lag + 1
    total = torch.zeros(lags, dtype=torch.float64, device=device)
    layer_total = torch.zeros(num_layers, lags, dtype=torch.float64, device=device)
    counts = torch.zeros(lags, dtype=torch.float64, device=device)
    if backward_passes is None:  # every row at every target: one pass per target
        assignments = [torch.full((n,), t, dtype=torch.long) for t in targets]
    else:  # rows dealt round-robin to the targets, shifted by one target per pass
        idx = torch.arange(n)
        tt = torch.tensor(targets, dtype=torch.long)
        assignments = [tt[(idx + j) % len(targets)] for j in range(min(backward_passes, len(targets)))]
    per_comp = len(states[0])
    rows = torch.arange(n, device=device)
    lag_range = torch.arange(lags, device=device)
    for assign in assignments:
        assign = assign.to(device)
        loss = step_losses.gather(1, assign[:, None]).squeeze(1)  # (N,): row r's loss at its target
        valid = ~torch.isnan(loss)
        if not bool(valid.any()):
            continue
        first = max(int(assign.min()) - max_lag, 0)
        last = int(assign.max())
        inputs = [c for s in range(first, last + 1) for c in states[s]]
        grads = torch.autograd.grad(
            torch.where(valid, loss, torch.zeros_like(loss)).sum(), inputs, retain_graph=True, allow_unused=True,
        )
        # squared norms per (step, layer, row): (steps, Ly, N)
        sq = torch.zeros(last - first + 1, num_layers, n, dtype=torch.float64, device=device)
        for i, g in enumerate(grads):
            if g is not None:
                g2 = _as_layers(g.detach(), n).double().pow(2).sum(-1)  # (Ly, N)
                if g2.shape[0] == num_layers:
                    sq[i // per_comp] += g2
                else:  # a component with a different layer count: only counts in the full-state norm
                    sq[i // per_comp, 0] += g2.sum(0)
        src = assign[None, :] - lag_range[:, None]  # (K+1, N): step t(r) - k
        ok = (src >= 0) & valid[None, :]  # (K+1, N)
        picked = sq[(src - first).clamp_min(0), :, rows[None, :]]  # (K+1, N, Ly)
        w = ok.double()
        total += (picked.sum(-1).sqrt() * w).sum(-1)
        if per_layer:
            layer_total += (picked.sqrt() * w[..., None]).sum(1).transpose(0, 1)
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
