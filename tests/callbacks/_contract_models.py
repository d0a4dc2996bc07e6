"""Every shipped module, and a user's own TBPTTModule, each with a tiny loader of its real batches.

Used by the callback contract tests: each ``case(name)`` returns a fresh ``(model, train_loader)``. The
batches are what the library's data pieces produce: ``StreamChunks`` (language model), ``pad_collate``
(classifier, tagger), ``seq2seq_collate`` (seq2seq); the user module takes ``(x, y)`` feature batches.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_rnn import RNNClassifier, RNNLanguageModel, RNNTagger, Seq2SeqAttention, TBPTTModule, TBPTTStep
from lightning_rnn.data import Seq2SeqCollate, StreamChunks, batchify, pad_collate
from lightning_rnn.nn import RNNConfig
from tests._encoder import with_encoder
from tests.modules._tbptt_models import loader, make_data

VOCAB = 16
MODULES = ("lm", "classifier", "tagger", "seq2seq", "user")
#: modules that have a gradient-flow probe (the default one of TBPTTModule, or the LM's own)
PROBED = ("lm", "classifier", "tagger", "user")


class LeakyCell(nn.Module):
    """A user's own recurrent cell with a dict state: h' = tanh(W h + U x), m' = 0.8 m + 0.2 h'.

    State ``{"h": (N, H), "m": (N, H)}``; the output at each step is ``h + m`` (it reads the state tensors
    themselves). ``recurrent_weights()`` is the protocol :class:`~lightning_rnn.callbacks.SpectralNormMonitor`
    uses to find ``W``.
    """

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.empty(hidden, hidden))
        nn.init.orthogonal_(self.W, gain=0.9)
        self.U = nn.Linear(features, hidden)
        self.hidden = hidden

    def recurrent_weights(self) -> dict[str, Tensor]:
        return {"W": self.W}

    def forward(self, x: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Inputs: x (N, L, F), state. Outputs: (N, L, H) outputs and the new state."""
        h, m = state["h"], state["m"]
        u = self.U(x)  # (N, L, H)
        outs = []
        for t in range(x.shape[1]):
            h = torch.tanh(h @ self.W.T + u[:, t])
            m = 0.8 * m + 0.2 * h
            outs.append(h + m)
        return torch.stack(outs, 1), {"h": h, "m": m}


class DictStateRegressor(TBPTTModule):
    """A user's TBPTTModule: its own cell, a dict state, dropout before the head, a per-step regression loss.

    It writes no ``gradient_flow_probe``: the callbacks use the default one derived from ``tbptt_step``.
    """

    def __init__(self, features: int = 3, hidden: int = 8, tbptt_steps: int | None = 6, lr: float = 0.05) -> None:
        super().__init__(tbptt_steps=tbptt_steps)
        self.cell = LeakyCell(features, hidden)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(hidden, 1)
        self.lr = lr

    def initial_state(self, batch: Any) -> dict[str, Tensor]:
        x = batch[0]
        zeros = x.new_zeros(x.shape[0], self.cell.hidden)
        return {"h": zeros, "m": zeros.clone()}

    def tbptt_step(self, chunk: Any, state: Any) -> TBPTTStep:
        x, y = chunk  # (N, k, F), (N, k, 1)
        if state is None:
            state = self.initial_state(chunk)
        out, state = self.cell(x, state)
        pred = self.head(self.drop(out))  # (N, k, 1)
        return TBPTTStep(F.mse_loss(pred.float(), y.float()), state, weight=y.numel())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _tokens(n: int, low: int, high: int, seed: int) -> Tensor:
    return torch.randint(low, high, (n,), generator=torch.Generator().manual_seed(seed))


def case(name: str, **overrides: Any) -> tuple[Any, DataLoader]:
    """A fresh ``(model, train_loader)`` for ``name`` in :data:`MODULES`; ``overrides`` go to the model."""
    g = torch.Generator().manual_seed(1)
    if name == "lm":
        kw: dict[str, Any] = dict(embedding_dim=8, hidden_size=12, num_layers=2, tbptt_steps=4, layer_dropout=0.2,
                                  recurrent_dropout=0.2, embedding_dropout=0.1, output_dropout=0.1)
        kw.update(overrides)
        streams = batchify(_tokens(4 * 41, 0, VOCAB, seed=2), 4)  # (4, 41): 4 chunks of 10
        return RNNLanguageModel(VOCAB, **with_encoder(kw)), DataLoader(StreamChunks(streams, bptt=10), batch_size=None)
    if name in ("classifier", "tagger"):
        lengths = torch.randint(5, 13, (12,), generator=g).tolist()
        seqs = [torch.randint(1, VOCAB, (n,), generator=g) for n in lengths]
        if name == "classifier":
            items = [(s, int(s[0]) % 3) for s in seqs]
            kw = dict(vocab_size=VOCAB, embedding_dim=8, hidden_size=12, num_layers=2, cell="gru", tbptt_steps=4,
                      layer_dropout=0.2, dropout=0.2)
            kw.update(overrides)
            model: Any = RNNClassifier(3, **with_encoder(kw))
        else:
            items = [(s, s % 3) for s in seqs]
            kw = dict(vocab_size=VOCAB, embedding_dim=8, hidden_size=12, num_layers=1, cell="lstm", tbptt_steps=4,
                      recurrent_dropout=0.2, dropout=0.2)
            kw.update(overrides)
            model = RNNTagger(3, **with_encoder(kw))
        return model, DataLoader(items, batch_size=4, collate_fn=pad_collate)
    if name == "seq2seq":
        pairs = []
        for n in torch.randint(3, 7, (12,), generator=g).tolist():
            src = torch.randint(3, VOCAB, (n,), generator=g).tolist()
            pairs.append((src, src[::-1]))
        kw = dict(embedding_dim=8, hidden_size=8, num_attention_maps=0, layer_dropout=0.0, decoder_dropout=0.1)
        kw.update(overrides)
        return Seq2SeqAttention(VOCAB, VOCAB, **with_encoder(kw, RNNConfig(bidirectional=True))), DataLoader(pairs, batch_size=4, collate_fn=Seq2SeqCollate())
    if name == "user":
        x, y = make_data(n=8, length=18)
        return DictStateRegressor(**overrides), loader(x, y, 4)
    raise ValueError(f"Expected a case in {MODULES}, got {name!r}")
