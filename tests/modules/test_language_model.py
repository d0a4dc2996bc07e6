"""RNNLanguageModel: shapes, errors, sampling, and learning real text (a Python standard-library source file)."""

from __future__ import annotations

import math
import os
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader

from lightning_rnn import RNNConfig, RNNLanguageModel

from ._tbptt_models import trainer


def test_forward_shapes_and_state_carry_equals_unsplit():
    lm = RNNLanguageModel(30, 8, encoder=RNNConfig(hidden_size=16, num_layers=2, cell="gru")).eval()
    tokens = torch.randint(0, 30, (3, 20))
    logits, state = lm(tokens)
    assert logits.shape == (3, 20, 30) and state.shape == (2, 3, 16)
    first, s = lm(tokens[:, :7])
    second, _ = lm(tokens[:, 7:], s)
    torch.testing.assert_close(torch.cat([first, second], 1), logits, atol=1e-5, rtol=1e-5)


def test_tied_weights_share_the_embedding():
    lm = RNNLanguageModel(30, 16, encoder=RNNConfig(hidden_size=16), tie_weights=True)
    assert lm.decoder.weight is lm.embedding.weight
    with pytest.raises(ValueError, match="embedding_dim == recurrent output size"):
        RNNLanguageModel(30, 8, encoder=RNNConfig(hidden_size=16), tie_weights=True)


def test_bad_options_and_tokens():
    with pytest.raises(ValueError, match="optimizer in"):
        RNNLanguageModel(30, optimizer="lbfgs")
    with pytest.raises(ValueError, match="vocab_size"):
        RNNLanguageModel(0)
    lm = RNNLanguageModel(30, 8, encoder=RNNConfig(hidden_size=16), tbptt_steps=4)
    bad = torch.full((2, 8), 30)
    with pytest.raises(ValueError, match=r"ids in \[0, 30\).*got id 30"):
        trainer().fit(lm, torch.utils.data.DataLoader([(bad, bad)], batch_size=None))


def test_generate_greedy_is_deterministic_and_extends_prompt():
    lm = RNNLanguageModel(30, 8, encoder=RNNConfig(hidden_size=16))
    prompt = torch.tensor([1, 2, 3])
    a = lm.generate(prompt, 10, temperature=0)
    b = lm.generate(prompt, 10, temperature=0)
    assert a.shape == (13,) and torch.equal(a, b) and torch.equal(a[:3], prompt)
    g = torch.Generator().manual_seed(0)
    s = lm.generate(prompt.expand(2, 3), 5, top_k=3, generator=g)
    assert s.shape == (2, 8) and int(s.max()) < 30


def test_gradient_flow_probe_matches_forward_losses():
    lm = RNNLanguageModel(30, 8, encoder=RNNConfig(hidden_size=16, num_layers=2)).eval()
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
    lm = RNNLanguageModel(len(dm.vocab), 32, encoder=RNNConfig(hidden_size=128), tbptt_steps=32, lr=1e-2)
    t = trainer(max_epochs=2)
    t.fit(lm, datamodule=dm)
    val = t.callback_metrics["val/loss"].item()
    print(f"val loss {val:.3f} nats/char vs unigram entropy {unigram:.3f}")
    assert val < 0.75 * unigram, (val, unigram)


def test_gradient_flow_probe_losses_depend_on_the_returned_states():
    lm = RNNLanguageModel(30, 8, encoder=RNNConfig(hidden_size=16, num_layers=2, cell="lstm")).eval()
    x, y = torch.randint(0, 30, (2, 6)), torch.randint(0, 30, (2, 6))
    states, losses = lm.gradient_flow_probe((x, y))
    for t in range(6):
        (g,) = torch.autograd.grad(losses[:, t].sum(), states[t][0], retain_graph=True)
        assert g.abs().sum() > 0  # G(0) != 0: the loss at t reads the state at t
    (g,) = torch.autograd.grad(losses[:, 5].sum(), states[2][0], retain_graph=True)
    assert g.abs().sum() > 0


def test_predict_gives_the_log_likelihood_test_loss_averages():
    # carried state across batches and chunks of 3: the mean of the predicted log-likelihoods is -test/loss
    torch.manual_seed(0)
    lm = RNNLanguageModel(20, 8, encoder=RNNConfig(hidden_size=12), tbptt_steps=3, pad_id=0)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, 20, (2, 7), generator=g), torch.randint(0, 20, (2, 7), generator=g)) for _ in range(3)]
    loader = DataLoader(batches, batch_size=None)
    (metrics,) = trainer().test(lm, loader, verbose=False)
    predictions = trainer().predict(lm, loader)
    assert len(predictions) == 3 and all(p.shape == (2, 7) and p.dtype == torch.float32 for p in predictions)
    logp = torch.cat(predictions, 1)
    targets = torch.cat([t for _, t in batches], 1)
    assert bool(logp.isnan().eq(targets == 0).all())  # pad_id targets are NaN
    assert -logp.nanmean().item() == pytest.approx(metrics["test/loss"], rel=1e-5)
    # the same, computed another way: one forward over the concatenated stream
    with torch.no_grad():
        logits, _ = lm.eval()(torch.cat([x for x, _ in batches], 1))
    ref = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logp, ref.masked_fill(targets == 0, float("nan")), equal_nan=True)


def test_forward_takes_lengths_and_pad_id_is_checked():
    lm = RNNLanguageModel(30, 8, encoder=RNNConfig(hidden_size=16)).eval()
    x = torch.randint(0, 30, (2, 6))
    with torch.no_grad():
        _, state = lm(x, lengths=torch.tensor([6, 3]))
        _, alone = lm(x[1:, :3])
    torch.testing.assert_close(state[0][:, 1:], alone[0])
    with pytest.raises(ValueError, match="Expected pad_id to be an int"):
        RNNLanguageModel(30, pad_id=None)
    with pytest.raises(ValueError, match="Expected weight_decay to be a float >= 0"):
        RNNLanguageModel(30, weight_decay=-1.0)
