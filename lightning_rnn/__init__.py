"""lightning-rnn: recurrent networks for PyTorch Lightning.

Truncated BPTT built into LightningModules, step-tied (variational) dropout, and callbacks that show
and control how gradients flow through time.
"""

__version__ = "0.1.0"

# Public LightningModules are re-exported from lightning_rnn.modules (one line per module).
from lightning_rnn.modules import RNNLanguageModel, TBPTTModule, TBPTTStep
from lightning_rnn.modules.classifier import RNNClassifier
from lightning_rnn.modules.seq2seq import Seq2SeqAttention
from lightning_rnn.modules.tagger import RNNTagger

__all__ = ["__version__", "RNNClassifier", "RNNTagger", "RNNLanguageModel", "Seq2SeqAttention", "TBPTTModule", "TBPTTStep"]
