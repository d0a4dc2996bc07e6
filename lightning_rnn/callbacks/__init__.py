"""lightning_rnn.callbacks."""

from lightning_rnn.callbacks.adaptive_clipping import AdaptiveGradientClipping, NonFiniteGradientError
from lightning_rnn.callbacks.adaptive_tbptt import AdaptiveTBPTT
from lightning_rnn.callbacks.checkpoint_dir import CheckpointDirCheck
from lightning_rnn.callbacks.gradient_flow import GradientFlowMonitor
from lightning_rnn.callbacks.last_checkpoint import LastCheckpoint
from lightning_rnn.callbacks.nt_asgd import NTASGD
from lightning_rnn.callbacks.resume import ExactResume
from lightning_rnn.callbacks.spectral_norm import SpectralNormMonitor
from lightning_rnn.callbacks.throughput import TokensPerSecond

__all__: list[str] = []
__all__ += ["AdaptiveGradientClipping", "NonFiniteGradientError"]
__all__ += ["AdaptiveTBPTT"]
__all__ += ["GradientFlowMonitor", "SpectralNormMonitor"]
__all__ += ["CheckpointDirCheck", "ExactResume", "LastCheckpoint"]
__all__ += ["TokensPerSecond"]
__all__ += ["NTASGD"]
