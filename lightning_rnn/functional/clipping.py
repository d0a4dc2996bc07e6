"""Gradient-clipping maths: global norm, the clipping-rule interface, AutoClip / ZClip / AGC rules.

Pure PyTorch (no Lightning). A *clipping rule* is a small object behind one interface, :class:`ClipRule`:
once per optimizer step it is given the finite pre-clip global gradient norm and answers with the threshold
the global norm is clipped to (``inf``: none); a rule that also clips per parameter (AGC) overrides
:meth:`ClipRule.clip_`. Its state (a history, an EMA) goes through ``state_dict`` / ``load_state_dict``.
A new rule is one new subclass. :func:`clip_with_rule_` applies a rule to a set of parameters;
`AdaptiveGradientClipping` (lightning_rnn.callbacks) is a thin stateful wrapper around it, and a plain
PyTorch loop can use it directly::

    rule = QuantileClipRule(quantile=0.1, window=1000)       # AutoClip
    for batch in loader:
        loss = model(batch); optimizer.zero_grad(); loss.backward()
        params = [p for p in model.parameters() if p.grad is not None]
        norm = float(grad_norm([p.grad for p in params]))      # one host sync
        if math.isfinite(norm):
            clip_with_rule_(rule, params, norm)
            optimizer.step()

The built-in rules hold only Python floats (their state is a few numbers or a bounded list), so a
decision costs one host sync of the global norm per optimizer step and nothing per parameter (AGC's
unit-wise clip adds one sync for its count).

References:
    * AutoClip (Seetharaman et al. 2020): threshold = p-th percentile of the gradient norms seen so far,
      the current one included (paper's best p = 10, i.e. ``quantile=0.1``).
    * ZClip (Kumar et al. 2025): EMA mean / variance of the norm (alpha = 0.97) initialised from
      ``warmup_steps`` norms; z = (g - mu) / (sigma + eps); if z > z_thr clip to mu + z_thr**2 * sigma / z;
      the EMA is then updated with the clipped value.
    * AGC (Brock et al. 2021, NFNets): unit-wise, G_i <- lambda * max(|W_i|, eps) * G_i / |G_i| when
      |G_i| > lambda * max(|W_i|, eps); units are rows (output units) of weight matrices, whole tensors
      for biases and scalars.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_rnn._validation import check_int

__all__ = [
    "ClipRule",
    "QuantileClipRule",
    "UnitwiseClipRule",
    "ZScoreClipRule",
    "adaptive_clip_grad_",
    "clip_grads_",
    "clip_with_rule_",
    "clips_per_parameter",
    "grad_norm",
    "quantile",
    "unitwise_norm",
]


def grad_norm(grads: Iterable[Tensor], norm_type: float = 2.0) -> Tensor:
    """Global norm of a list of gradient tensors, as one 0-dim tensor (no host sync).

    Uses the fused ``torch._foreach_norm`` path of :func:`torch.nn.utils.get_total_norm`.

    Args:
        grads: gradient tensors (any shapes, any devices).
        norm_type: p of the p-norm; ``float("inf")`` for the max-norm.

    Inputs:
        grads: tensors of arbitrary shapes.

    Outputs:
        norm: ``()`` float tensor, ``‖concat(flatten(g) for g in grads)‖_p``; ``0.`` for an empty list.
            It is ``inf``/``nan`` when a gradient holds ``inf``/``nan``.
    """
    grads = [g for g in grads if g is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads, norm_type=norm_type)


def clip_grads_(grads: Sequence[Tensor], threshold: float, total_norm: float) -> bool:
    """Scale ``grads`` in place so that their global norm becomes ``threshold`` if it exceeds it.

    Unlike :func:`torch.nn.utils.clip_grads_with_norm_` no ``1e-6`` is added to the norm, so after a clip
    the global norm equals ``threshold`` up to floating-point rounding.

    Args:
        grads: gradient tensors, modified in place.
        threshold: the largest allowed global norm (``inf`` never clips).
        total_norm: their current global norm (a Python float: the decision was already taken on host).

    Returns:
        Whether the gradients were scaled.
    """
    if not total_norm > threshold:  # also False for a nan norm
        return False
    factor = threshold / total_norm
    grads = list(grads)
    if grads:
        torch._foreach_mul_(grads, factor)
    return True


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile of ``values`` with linear interpolation (NumPy's default ``percentile`` rule).

    Args:
        values: a non-empty sequence of floats.
        q: in ``[0, 1]``.

    Returns:
        ``x[lo] + (x[hi] - x[lo]) * frac`` where ``x`` is sorted and ``q * (n - 1) = lo + frac``.
    """
    if len(values) == 0:
        raise ValueError("Expected a non-empty sequence of values, got an empty one")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"Expected q in [0, 1], got {q}")
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    frac = pos - lo
    return xs[lo] + (xs[hi] - xs[lo]) * frac


class ClipRule(ABC):
    """Interface of a gradient-clipping rule: a new rule is one subclass.

    Once per optimizer step the rule's :meth:`step` is given the finite pre-clip global gradient norm and
    returns the threshold the global norm is clipped to. Non-finite norms are filtered out before a rule
    sees them. A rule that also clips per parameter (AGC) overrides :meth:`clip_`. A rule with state (a
    history, an EMA, counters) returns it from :meth:`state_dict` as plain Python numbers / lists, so
    checkpoints stay data, and reads it back in :meth:`load_state_dict` (with ``.get(key, default)``).

    Under DDP every rank gives its rule the same norm in the same order; a rule must be deterministic in its
    norms (no random draws) so that every rank picks the same threshold. ``repr(rule)`` names the rule and
    its parameters (not its state): ``AdaptiveGradientClipping`` builds its ``state_key`` from it.

    Example::

        >>> class FixedClipRule(ClipRule):
        ...     "Clips the global norm to a constant (what ``clip_grad_norm_`` does)."
        ...     def __init__(self, max_norm: float) -> None:
        ...         self.max_norm = max_norm
        ...     def step(self, norm: float) -> float:
        ...         return self.max_norm
        ...     def __repr__(self) -> str:
        ...         return f"FixedClipRule(max_norm={self.max_norm})"
        >>> [FixedClipRule(2.0).step(g) for g in (1.0, 5.0)]
        [2.0, 2.0]
    """

    @abstractmethod
    def step(self, norm: float) -> float:
        """Records the finite pre-clip global ``norm`` and returns the threshold to clip it to.

        A threshold ``>= norm`` (or ``inf``) leaves the gradients as they are; ``inf`` also means "no
        threshold" in the logs. It must be ``>= 0`` and not NaN.
        """

    def clip_(self, parameters: Sequence[Tensor], norm_type: float = 2.0) -> bool:
        """Per-parameter clipping of ``p.grad`` in place, before the global threshold applies.

        The default clips nothing. ``parameters`` have a gradient; the callback leaves out the ones named by
        its ``agc_exclude`` (by default the output layer).

        Returns:
            Whether any gradient was changed.
        """
        return False

    def state_dict(self) -> dict[str, Any]:
        """The rule's state as plain Python containers (default: none)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - a stateless rule keeps this no-op
        """Restores what :meth:`state_dict` returned (default: nothing to restore)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def clips_per_parameter(rule: ClipRule) -> bool:
    """Whether ``rule`` overrides :meth:`ClipRule.clip_` (then its parameters are chosen with care, e.g.
    AGC leaves the output layer alone)."""
    return type(rule).clip_ is not ClipRule.clip_


def clip_with_rule_(
    rule: ClipRule,
    parameters: Sequence[Tensor],
    norm: float,
    *,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    rule_parameters: Sequence[Tensor] | None = None,
) -> tuple[float, bool]:
    """One optimizer step of a clipping rule on ``parameters``' gradients, in place.

    In order: ``threshold = rule.step(norm)``; ``rule.clip_(rule_parameters)`` (per-parameter clipping,
    e.g. AGC); ``threshold = min(threshold, max_norm)``; the global norm (recomputed if ``clip_`` changed
    a gradient) is scaled down to ``threshold`` if it is above it.

    Args:
        rule: the clipping rule (its state is updated).
        parameters: parameters whose ``.grad`` is not ``None``.
        norm: their finite pre-clip global ``norm_type``-norm (see :func:`grad_norm`).
        max_norm: optional hard ceiling on the global norm.
        norm_type: p of the norms.
        rule_parameters: the parameters given to ``rule.clip_`` (default: ``parameters``).

    Returns:
        ``(threshold, clipped)``: the global threshold of this step (``inf`` if none) and whether any
        gradient was changed.

    Example::

        >>> import torch
        >>> w = torch.nn.Parameter(torch.ones(2)); w.grad = torch.tensor([3.0, 4.0])
        >>> clip_with_rule_(QuantileClipRule(quantile=0.5), [w], norm=5.0, max_norm=2.5)
        (2.5, True)
        >>> w.grad
        tensor([1.5000, 2.0000])
    """
    threshold = float(rule.step(norm))
    if not threshold >= 0.0:
        raise ValueError(f"Expected {rule!r}.step to return a threshold >= 0 (or inf), got {threshold}")
    changed = rule.clip_(parameters if rule_parameters is None else rule_parameters, norm_type)
    if max_norm is not None:
        threshold = min(threshold, max_norm)
    grads = [p.grad for p in parameters if p.grad is not None]
    if changed and math.isfinite(threshold):
        norm = float(grad_norm(grads, norm_type))  # the norm after the per-parameter clip
    return threshold, clip_grads_(grads, threshold, norm) or changed


def _check_finite(norm: float) -> float:
    norm = float(norm)
    if not math.isfinite(norm):
        raise ValueError(
            f"Expected a finite gradient norm, got {norm}; filter non-finite norms before the rule"
        )
    return norm


class QuantileClipRule(ClipRule):
    """AutoClip: the threshold is the ``quantile`` of the last ``window`` pre-clip norms, current included.

    Args:
        quantile: in ``(0, 1]``; AutoClip's best percentile p = 10 is ``0.1``. ``1.0`` never clips.
        window: number of recent norms kept (``None``: all of them, as in the paper; each step then
            costs O(n log n) in the number of steps).

    Example::

        >>> rule = QuantileClipRule(quantile=0.5, window=3)
        >>> [rule.step(g) for g in (1.0, 3.0, 2.0, 10.0)]
        [1.0, 2.0, 2.0, 3.0]
    """

    def __init__(self, quantile: float = 0.1, window: int | None = 1000) -> None:
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"Expected quantile in (0, 1], got {quantile}")
        check_int("window", window, min=1, allow_none=True)
        self.quantile = float(quantile)
        self.window = window
        self.history: deque[float] = deque(maxlen=window)

    def step(self, norm: float) -> float:
        """Records the pre-clip ``norm`` and returns the threshold to clip it to (``norm`` if no clip)."""
        self.history.append(_check_finite(norm))
        return quantile(self.history, self.quantile)

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = deque((float(x) for x in state.get("history", [])), maxlen=self.window)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(quantile={self.quantile}, window={self.window})"


class ZScoreClipRule(ClipRule):
    """ZClip: z-score of the norm against an exponential moving average of its mean and variance.

    During the first ``warmup_steps`` norms the rule only collects (threshold ``inf``); it then sets
    ``mean`` / ``var`` to their population mean / variance. Afterwards, for a norm ``g``::

        z = (g - mean) / (sqrt(var) + eps)
        threshold = mean + z_threshold**2 * sqrt(var) / z   if z > z_threshold   (clip: g > threshold)
                    mean + z_threshold * (sqrt(var) + eps)  otherwise            (the trigger level, g <= it)
        g_eff = min(g, threshold)
        mean = alpha * mean + (1 - alpha) * g_eff
        var  = alpha * var  + (1 - alpha) * (g_eff - mean)**2        # with the *updated* mean, as ZClip

    The returned threshold is continuous in ``g`` at the trigger level and is the post-clip norm when
    the step is clipped.

    Args:
        alpha: EMA smoothing factor in ``(0, 1)`` (ZClip: 0.97).
        z_threshold: z above which a norm is a spike (ZClip: 2.5).
        warmup_steps: norms collected before the EMA starts (ZClip: 25; ``0`` behaves as ``1``).
        eps: added to the standard deviation in ``z`` (ZClip: 1e-6).

    Example::

        >>> rule = ZScoreClipRule(warmup_steps=2, z_threshold=2.0, alpha=0.5)
        >>> rule.step(1.0), rule.step(3.0)      # warm-up: mean 2, std 1
        (inf, inf)
        >>> round(rule.step(10.0), 4)           # z ~ 8 > 2: clipped to 2 + 4 * 1 / 8
        2.5
    """

    def __init__(
        self, alpha: float = 0.97, z_threshold: float = 2.5, warmup_steps: int = 25, eps: float = 1e-6
    ) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"Expected alpha in (0, 1), got {alpha}")
        if not z_threshold > 0.0:
            raise ValueError(f"Expected z_threshold > 0, got {z_threshold}")
        check_int("warmup_steps", warmup_steps, min=0)
        self.alpha = float(alpha)
        self.z_threshold = float(z_threshold)
        self.warmup_steps = warmup_steps
        self.eps = float(eps)
        self.buffer: list[float] = []
        self.mean: float | None = None
        self.var: float | None = None

    @property
    def initialized(self) -> bool:
        return self.mean is not None

    def step(self, norm: float) -> float:
        """Returns the threshold for the pre-clip ``norm`` and updates the statistics."""
        norm = _check_finite(norm)
        if self.mean is None or self.var is None:
            self.buffer.append(norm)
            if len(self.buffer) >= max(self.warmup_steps, 1):
                n = len(self.buffer)
                self.mean = sum(self.buffer) / n
                self.var = sum((x - self.mean) ** 2 for x in self.buffer) / n
                self.buffer = []
            return math.inf
        std = math.sqrt(self.var)
        z = (norm - self.mean) / (std + self.eps)
        if z > self.z_threshold:
            threshold = self.mean + self.z_threshold**2 * std / z
        else:
            threshold = self.mean + self.z_threshold * (std + self.eps)
        effective = min(norm, threshold)
        self.mean = self.alpha * self.mean + (1.0 - self.alpha) * effective
        self.var = self.alpha * self.var + (1.0 - self.alpha) * (effective - self.mean) ** 2
        return threshold

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": list(self.buffer), "mean": self.mean, "var": self.var}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer = [float(x) for x in state.get("buffer", [])]
        mean, var = state.get("mean"), state.get("var")
        self.mean = None if mean is None else float(mean)
        self.var = None if var is None else float(var)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(alpha={self.alpha}, z_threshold={self.z_threshold}, "
            f"warmup_steps={self.warmup_steps}, eps={self.eps})"
        )


def unitwise_norm(x: Tensor, norm_type: float = 2.0) -> Tensor:
    """Norm per output unit: over all dims but the first for ``x.ndim >= 2``, of the whole tensor else.

    Inputs:
        x: ``()``, ``(U,)`` or ``(U, *)`` — e.g. an LSTM ``weight_hh`` is ``(4H, H)``: U = 4H units.

    Outputs:
        norms: ``()`` for ``x.ndim <= 1``; ``(U, 1, ..., 1)`` (keepdim, broadcastable to ``x``) otherwise.
    """
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x, ord=norm_type)
    return torch.linalg.vector_norm(x, ord=norm_type, dim=tuple(range(1, x.ndim)), keepdim=True)


@torch.no_grad()
def adaptive_clip_grad_(
    parameters: Iterable[Tensor],
    clip_factor: float = 0.01,
    eps: float = 1e-3,
    norm_type: float = 2.0,
) -> Tensor:
    """AGC: unit-wise clip of each parameter's gradient relative to the parameter's norm, in place.

    For every unit i: if ``‖G_i‖ > λ·max(‖W_i‖, ε)`` then ``G_i ← λ·max(‖W_i‖, ε)·G_i/‖G_i‖``.

    Args:
        parameters: parameters whose ``.grad`` is clipped (those with ``grad is None`` are skipped).
        clip_factor: λ > 0 (NFNets: 0.01 for large batches, larger for small ones).
        eps: ε, the floor on a unit's weight norm (so zero-initialised units can still move).
        norm_type: p of the p-norm.

    Returns:
        ``()`` long tensor: the number of clipped units (no host sync).
    """
    count: Tensor | None = None
    for p in parameters:
        if p.grad is None:
            continue
        g = p.grad
        max_norm = unitwise_norm(p.detach().to(g.dtype), norm_type).clamp(min=eps).mul_(clip_factor)
        g_norm = unitwise_norm(g, norm_type)
        clip = g_norm > max_norm  # (U, 1, ..) or ()
        scale = torch.where(clip, max_norm / g_norm.clamp(min=1e-6), torch.ones_like(g_norm))
        g.mul_(scale)
        n = clip.sum()
        count = n if count is None else count + n.to(count.device)
    return count if count is not None else torch.zeros((), dtype=torch.long)


class UnitwiseClipRule(ClipRule):
    """AGC as a rule: no global threshold, unit-wise clipping in :meth:`clip_` (see :func:`adaptive_clip_grad_`).

    Args:
        clip_factor: λ > 0 (NFNets: 0.01 for large batches, larger for small ones).
        eps: ε > 0, the floor on a unit's weight norm.

    Example::

        >>> import torch
        >>> w = torch.nn.Parameter(torch.ones(1, 4)); w.grad = torch.ones(1, 4)   # ‖W_0‖ = ‖G_0‖ = 2
        >>> rule = UnitwiseClipRule(clip_factor=0.1)
        >>> rule.step(2.0), rule.clip_([w]), round(float(w.grad.norm()), 4)        # G_0 -> 0.1 * 2
        (inf, True, 0.2)
    """

    def __init__(self, clip_factor: float = 0.01, eps: float = 1e-3) -> None:
        if not clip_factor > 0.0:
            raise ValueError(f"Expected clip_factor > 0, got {clip_factor!r}")
        if not eps > 0.0:
            raise ValueError(f"Expected eps > 0, got {eps!r}")
        self.clip_factor = float(clip_factor)
        self.eps = float(eps)

    def step(self, norm: float) -> float:
        """No global threshold: ``inf``."""
        return math.inf

    def clip_(self, parameters: Sequence[Tensor], norm_type: float = 2.0) -> bool:
        """Unit-wise AGC of ``parameters``' gradients in place; whether any unit was clipped (one host sync)."""
        return bool(adaptive_clip_grad_(parameters, self.clip_factor, self.eps, norm_type) > 0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(clip_factor={self.clip_factor}, eps={self.eps})"
