"""RNNLanguageModel passes ``zoneout`` to its RNNStack and saves it as a hyper-parameter."""

from __future__ import annotations

import torch

from lightning_rnn import RNNConfig, RNNLanguageModel


def test_zoneout_passes_through_and_is_saved():
    lm = RNNLanguageModel(encoder=RNNConfig(hidden_size=8, zoneout=0.1), vocab_size=20, embedding_dim=8)
    assert lm.rnn.zoneout == 0.1 and lm.hparams["encoder"]["zoneout"] == 0.1
    assert RNNLanguageModel(**lm.hparams).rnn.zoneout == 0.1  # what load_from_checkpoint does
    x = torch.randint(0, 20, (2, 7))
    lm.eval()
    torch.testing.assert_close(lm(x)[0], lm(x)[0])  # eval: the deterministic expectation
    lm.train()
    torch.manual_seed(0)
    a = lm(x)[0]
    torch.manual_seed(1)
    assert not torch.allclose(a, lm(x)[0])  # training: fresh zoneout draws
    assert RNNLanguageModel(vocab_size=20).rnn.zoneout == 0.0
