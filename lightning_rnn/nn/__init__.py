"""Pure-PyTorch recurrent layers (never imports lightning)."""

from . import state
from .attention import BahdanauAttention, LuongAttention
from .dropout import EmbeddingDropout, LockedDropout, WeightDropout, locked_dropout
from .rnn import RNNStack

__all__: list[str] = [
    "BahdanauAttention",
    "LuongAttention",
    "EmbeddingDropout",
    "LockedDropout",
    "RNNStack",
    "WeightDropout",
    "locked_dropout",
    "state",
]
