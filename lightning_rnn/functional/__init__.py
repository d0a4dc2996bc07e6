"""lightning_rnn.functional."""

from lightning_rnn.functional.clipping import (
    QuantileClipRule,
    ZScoreClipRule,
    adaptive_clip_grad_,
    clip_grads_,
    grad_norm,
    unitwise_norm,
)

__all__: list[str] = []
__all__ += ["QuantileClipRule", "ZScoreClipRule", "adaptive_clip_grad_", "clip_grads_", "grad_norm", "unitwise_norm"]
