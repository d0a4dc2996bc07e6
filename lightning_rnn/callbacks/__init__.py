"""lightning_rnn.callbacks."""

from lightning_rnn.callbacks.adaptive_clipping import AdaptiveGradientClipping, NonFiniteGradientError

__all__: list[str] = []
__all__ += ["AdaptiveGradientClipping", "NonFiniteGradientError"]
