"""RNNLanguageModel: shapes, errors, sampling, and learning real text (a Python standard-library source file)."""

from __future__ import annotations

import math
import os
from collections import Counter

import pytest
import torch

from lightning_rnn import RNNLanguageModel

from ._tbptt_models import trainer


def test_forward_shapes_and_state_carry_equals_unsplit():
    lm = RNNLanguageModel(30, 8, 16, num_layers=2, cell="gru").eval()
    tokens = torch.randint(0, 30, (3, 20))
    logits, state = lm(tokens)
    assert logits.shape == (3, 20, 30) and state.shape == (2, 3, 16)
    first, s = lm(tokens[:, :7])
    second, _ = lm(tokens[:, 7:], s)
    torch.testing.assert_close(torch.cat([first, second], 1), logits, atol=1e-5, rtol=1e-5)


def test_tied_weights_share_the_embedding():
    lm = RNNLanguageModel(30, 16, 16, tie_weights=True)
    assert lm.decoder.weight is lm.embedding.weight
    with pytest.raises(ValueError, match="embedding_dim == recurrent output size"):
        RNNLanguageModel(30, 8, 16, tie_weights=True)


def test_bad_options_and_tokens():
    with pytest.raises(ValueError, match="optimizer in"):
        RNNLanguageModel(30, optimizer="lbfgs")
    with pytest.raises(ValueError, match="vocab_size"):
        RNNLanguageModel(0)
    lm = RNNLanguageModel(30, 8, 16, tbptt_steps=4)
    bad = torch.full((2, 8), 30)
    with pytest.raises(ValueError, match=r"ids in \[0, 30\).*got id 30"):
        trainer().fit(lm, torch.utils.data.DataLoader([(bad, bad)], batch_size=None))


def test_generate_greedy_is_deterministic_and_extends_prompt():
    lm = RNNLanguageModel(30, 8, 16)
    prompt = torch.tensor([1, 2, 3])
    a = lm.generate(prompt, 10, temperature=0)
    b = lm.generate(prompt, 10, temperature=0)
    assert a.shape == (13,) and torch.equal(a, b) and torch.equal(a[:3], prompt)
    g = torch.Generator().manual_seed(0)
    s = lm.generate(prompt.expand(2, 3), 5, top_k=3, generator=g)
    assert s.shape == (2, 8) and int(s.max()) < 30


def test_gradient_flow_probe_matches_forward_losses():
    lm = RNNLanguageModel(30, 8, 16, num_layers=2).eval()
    x, y = torch.randint(0, 30, (2, 12)), torch.randint(0, 30, (2, 12))
    states, losses = lm.gradient_flow_probe((x, y), max_steps=9)
    assert len(states) == 9 and losses.shape == (2, 9)
    logits, _ = lm(x[:, :9])
    ref = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y[:, :9], reduction="none")
    torch.testing.assert_close(losses, ref, atol=1e-5, rtol=1e-5)


def _stdlib_file() -> str:
    return os.path.join(os.path.dirname(os.__file__), "argparse.py")


def test_learns_real_text_below_unigram_entropy(tmp_path):
    from lightning_rnn import data
    text = open(_stdlib_file(), encoding="utf-8").read()[:30_000]
    source = tmp_path / "argparse_head.py"
    source.write_text(text, encoding="utf-8")
    counts = Counter(text)
    unigram = -sum(c / len(text) * math.log(c / len(text)) for c in counts.values())  # nats per char

    torch.manual_seed(0)
    dm = data.TextStreamDataModule(str(source), batch_size=16, bptt=64, val_fraction=0.1, test_fraction=0.0)
    dm.setup("fit")
    lm = RNNLanguageModel(len(dm.vocab), 32, 128, tbptt_steps=32, lr=1e-2)
    t = trainer(max_epochs=2)
    t.fit(lm, datamodule=dm)
    val = t.callback_metrics["val/loss"].item()
    print(f"val loss {val:.3f} nats/char vs unigram entropy {unigram:.3f}")
    assert val < 0.75 * unigram, (val, unigram)


def test_gradient_flow_probe_losses_depend_on_the_returned_states():
    lm = RNNLanguageModel(30, 8, 16, num_layers=2, cell="lstm").eval()
    x, y = torch.randint(0, 30, (2, 6)), torch.randint(0, 30, (2, 6))
    states, losses = lm.gradient_flow_probe((x, y))
    for t in range(6):
        (g,) = torch.autograd.grad(losses[:, t].sum(), states[t][0], retain_graph=True)
        assert g.abs().sum() > 0  # G(0) != 0: the loss at t reads the state at t
    (g,) = torch.autograd.grad(losses[:, 5].sum(), states[2][0], retain_graph=True)
    assert g.abs().sum() > 0
