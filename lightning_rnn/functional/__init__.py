"""lightning_rnn.functional."""

from lightning_rnn.functional.activation_reg import (
    activation_regularization,
    temporal_activation_regularization,
)
from lightning_rnn.functional.clipping import (
    ClipRule,
    QuantileClipRule,
    UnitwiseClipRule,
    ZScoreClipRule,
    adaptive_clip_grad_,
    clip_grads_,
    clip_with_rule_,
    grad_norm,
    unitwise_norm,
)
from lightning_rnn.functional.gradient_flow import (
    GradientFlowResult,
    SupportsGradientFlowProbe,
    gradient_horizon,
    measure_gradient_flow,
    per_lag_gradient_norms,
)
from lightning_rnn.functional.spectral import (
    BlockSpectralNorm,
    find_recurrent_weights,
    power_iteration,
    recurrent_spectral_norms,
    spectral_norm_exact,
)
from lightning_rnn.functional.truncation import choose_truncation, fit_geometric_tail, truncation_bias

__all__: list[str] = []
__all__ += ["activation_regularization", "temporal_activation_regularization"]
__all__ += ["ClipRule", "QuantileClipRule", "UnitwiseClipRule", "ZScoreClipRule"]
__all__ += ["adaptive_clip_grad_", "clip_grads_", "clip_with_rule_", "grad_norm", "unitwise_norm"]
__all__ += ["GradientFlowResult", "SupportsGradientFlowProbe", "gradient_horizon", "measure_gradient_flow"]
__all__ += ["per_lag_gradient_norms"]
__all__ += ["BlockSpectralNorm", "find_recurrent_weights", "power_iteration", "recurrent_spectral_norms", "spectral_norm_exact"]
__all__ += ["choose_truncation", "fit_geometric_tail", "truncation_bias"]
