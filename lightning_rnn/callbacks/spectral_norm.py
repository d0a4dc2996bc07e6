"""SpectralNormMonitor: σ_max of every recurrent gate block, logged while training."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_rnn._validation import check_bool, check_int
from lightning_rnn.callbacks._schedule import logger_step, next_bucket
from lightning_rnn.functional.spectral import (
    BlockSpectralNorm,
    RecurrentWeight,
    find_recurrent_weights,
    recurrent_spectral_norms,
)

__all__ = ["SpectralNormMonitor"]


class SpectralNormMonitor(Callback):
    r"""Log the largest singular value of every recurrent weight block while training.

    Every ``every_n_steps`` optimizer steps (``trainer.global_step``; a truncated-BPTT module makes several
    per batch) it computes σ_max of each gate block of each ``weight_hh`` — LSTM i, f, g, o; GRU r, z, n;
    a plain RNN one block — per layer and direction, and logs to every logger of the Trainer:

    - ``spectral_norm/<layer>/<block>``: σ_max (``<layer>`` is ``<module path>.l<k>`` with ``_reverse``
      for the backward direction, e.g. ``spectral_norm/rnn.l1/f``);
    - ``spectral_norm/max``: the largest σ_max over all blocks;
    - ``spectral_norm/max_bound_ratio``: the largest σ_max·γ (γ = 1/4 for sigmoid gates, 1 for tanh/relu).
      Pascanu et al. (2013): below 1 gradients through that block *must* vanish; above 1 they *can* explode;
    - with ``log_bound_ratios=True`` also ``spectral_norm_bound/<layer>/<block>`` = σ_max·γ per block.

    With ``warn_on_explode`` it warns once per block (rank 0) the first time σ_max·γ exceeds 1.

    Recurrent layers are found automatically anywhere inside the LightningModule —
    ``torch.nn.RNN/LSTM/GRU`` (every layer and direction) and their ``*Cell`` modules,
    ``lightning_rnn.nn.RNNStack``, and a cell of your own that defines ``recurrent_weights() ->
    dict[str, Tensor]`` (and optionally ``recurrent_gates``, its gate layout; see
    :mod:`lightning_rnn.functional.spectral`) — or named by module path in ``modules``::

        class MyCell(nn.Module):
            recurrent_gates = (("h", 1.0),)  # one tanh block (the default); or "lstm", "gru"
            def recurrent_weights(self):
                return {"W": self.W}  # (G*H, H), gate blocks stacked along the rows
 Metrics go straight to ``trainer.loggers`` at the step Lightning logs training metrics at,
    so the cadence is independent of ``log_every_n_steps`` and works in automatic and manual optimization.

    Cost: the default is power iteration on the weights (2 warm-started iterations: 4 matrix-vector
    products per block per call; a lower bound of σ_max that tracks it closely once warmed up). Use
    ``exact=True`` for :func:`torch.linalg.svdvals` (a full SVD per block).

    Args:
        every_n_steps: compute every this many optimizer steps (and at the first training batch).
        exact: full SVD instead of power iteration.
        modules: module paths (as in ``named_modules()``) of the recurrent layers to monitor; None: all.
        warn_on_explode: warn once per block when σ_max·γ > 1.
        log_bound_ratios: also log σ_max·γ for every block.
        num_iters: power iterations per call (warm-started).
        warmup_iters: power iterations the first time a layer is seen.

    Raises:
        ValueError: bad arguments (here), or no recurrent layer in the model (at ``setup``).

    Example::

        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[SpectralNormMonitor(every_n_steps=100)], logger=False)
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        exact: bool = False,
        modules: Sequence[str] | None = None,
        warn_on_explode: bool = True,
        log_bound_ratios: bool = False,
        num_iters: int = 2,
        warmup_iters: int = 50,
    ) -> None:
        self.every_n_steps = check_int("every_n_steps", every_n_steps, min=1)
        if isinstance(modules, str):
            modules = [modules]
        if modules is not None and not all(isinstance(m, str) for m in modules):
            raise TypeError(f"Expected modules to be a sequence of module paths (str) or None, got {modules!r}")
        for name, value in (("num_iters", num_iters), ("warmup_iters", warmup_iters)):
            check_int(name, value, min=1)
        self.exact = check_bool("exact", exact)
        self.modules = list(modules) if modules is not None else None
        self.warn_on_explode = check_bool("warn_on_explode", warn_on_explode)
        self.log_bound_ratios = check_bool("log_bound_ratios", log_bound_ratios)
        self.num_iters = num_iters
        self.warmup_iters = warmup_iters
        self._weights: list[RecurrentWeight] = []
        self._vectors: dict[str, torch.Tensor] = {}
        self._warned: set[str] = set()
        self._last_bucket: int | None = None
        self.last: list[BlockSpectralNorm] = []  #: the latest measurement

    @property
    @override
    def state_key(self) -> str:
        key = dict(every_n_steps=self.every_n_steps, exact=self.exact, modules=self.modules)
        return f"{type(self).__qualname__}{key!r}"  # the format of Lightning's own callbacks

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._weights = find_recurrent_weights(pl_module, self.modules)
        if not self._weights:
            raise ValueError(
                f"SpectralNormMonitor found no recurrent layer in {type(pl_module).__name__} (it looks for "
                "torch.nn.RNN/LSTM/GRU, their *Cell modules, lightning_rnn.nn.RNNStack and modules with a "
                "`recurrent_weights() -> dict[str, Tensor]` method): give your cell that method."
            )

    def _due(self, trainer: Trainer) -> bool:
        bucket = next_bucket(trainer.global_step, self.every_n_steps, self._last_bucket)
        if bucket is None:
            return False
        self._last_bucket = bucket
        return True

    def measure(self) -> list[BlockSpectralNorm]:
        """Compute (and remember in :attr:`last`) σ_max of every block now; needs ``setup`` first."""
        self.last = recurrent_spectral_norms(
            self._weights, exact=self.exact, state=self._vectors, num_iters=self.num_iters,
            warmup_iters=self.warmup_iters,
        )
        return self.last

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._due(trainer) or not trainer.is_global_zero:
            return
        norms = self.measure()
        metrics: dict[str, float] = {}
        for n in norms:
            metrics[f"spectral_norm/{n.key}"] = n.sigma
            if self.log_bound_ratios:
                metrics[f"spectral_norm_bound/{n.key}"] = n.bound_ratio
        metrics["spectral_norm/max"] = max(n.sigma for n in norms)
        metrics["spectral_norm/max_bound_ratio"] = max(n.bound_ratio for n in norms)
        step = logger_step(trainer)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        if self.warn_on_explode:
            for n in norms:
                if n.bound_ratio > 1.0 and n.key not in self._warned:
                    self._warned.add(n.key)
                    rank_zero_warn(
                        f"SpectralNormMonitor: block {n.key!r} has σ_max·γ = {n.bound_ratio:.3g} > 1 "
                        f"(σ_max = {n.sigma:.3g}, γ = {n.gamma:g}) at step {trainer.global_step}: gradients "
                        "through it can explode (Pascanu et al. 2013). Consider gradient clipping "
                        "(lightning_rnn.callbacks.AdaptiveGradientClipping). Warned once per block."
                    )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "vectors": {k: v.detach().cpu() for k, v in self._vectors.items()},
            "warned": sorted(self._warned),
            "last_bucket": self._last_bucket,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._vectors = dict(state_dict.get("vectors", {}))
        self._warned = set(state_dict.get("warned", []))
        self._last_bucket = state_dict.get("last_bucket")
