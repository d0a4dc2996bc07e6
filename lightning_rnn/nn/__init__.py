"""Pure-PyTorch recurrent layers (never imports lightning)."""

from . import state
from .attention import BahdanauAttention, LuongAttention
from .dropout import EmbeddingDropout, LockedDropout, WeightDropout, locked_dropout
from .rnn import RNNStack
from .rnn_config import RNNConfig

__all__: list[str] = [
    "BahdanauAttention",
    "LuongAttention",
    "EmbeddingDropout",
    "LockedDropout",
    "RNNConfig",
    "RNNStack",
    "WeightDropout",
    "locked_dropout",
    "state",
]
