"""lightning_rnn.modules."""

from lightning_rnn.modules.classifier import RNNClassifier
from lightning_rnn.modules.language_model import RNNLanguageModel
from lightning_rnn.modules.seq2seq import Seq2SeqAttention
from lightning_rnn.modules.tagger import RNNTagger
from lightning_rnn.modules.tbptt import TBPTTModule, TBPTTStep

__all__: list[str] = ["RNNClassifier", "RNNTagger", "RNNLanguageModel", "Seq2SeqAttention", "TBPTTModule", "TBPTTStep"]
