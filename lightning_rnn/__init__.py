"""lightning-rnn: recurrent networks for PyTorch Lightning.

Truncated BPTT built into LightningModules, step-tied (variational) dropout, and callbacks that show
and control how gradients flow through time.

The LightningModules are re-exported here lazily (PEP 562): ``import lightning_rnn.nn`` or
``import lightning_rnn.functional`` (pure PyTorch) does not load Lightning or torchmetrics; the first access
to, e.g., ``lightning_rnn.RNNLanguageModel`` imports :mod:`lightning_rnn.modules`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it (imported on first access)
_LAZY: dict[str, str] = {
    "RNNClassifier": "lightning_rnn.modules.classifier",
    "RNNConfig": "lightning_rnn.nn.rnn_config",
    "RNNLanguageModel": "lightning_rnn.modules.language_model",
    "RNNTagger": "lightning_rnn.modules.tagger",
    "Seq2SeqAttention": "lightning_rnn.modules.seq2seq",
    "TBPTTModule": "lightning_rnn.modules.tbptt",
    "TBPTTStep": "lightning_rnn.modules.tbptt",
}

__all__ = [
    "__version__",
    "RNNClassifier",
    "RNNConfig",
    "RNNLanguageModel",
    "RNNTagger",
    "Seq2SeqAttention",
    "TBPTTModule",
    "TBPTTStep",
]

if TYPE_CHECKING:  # what static type checkers and IDEs see
    from lightning_rnn.modules.classifier import RNNClassifier
    from lightning_rnn.modules.language_model import RNNLanguageModel
    from lightning_rnn.modules.seq2seq import Seq2SeqAttention
    from lightning_rnn.modules.tagger import RNNTagger
    from lightning_rnn.modules.tbptt import TBPTTModule, TBPTTStep
    from lightning_rnn.nn.rnn_config import RNNConfig


#: subpackages reachable as attributes after a bare ``import lightning_rnn`` (imported on first access)
_SUBMODULES = ("callbacks", "cli", "data", "functional", "modules", "nn")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"lightning_rnn.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_rnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
