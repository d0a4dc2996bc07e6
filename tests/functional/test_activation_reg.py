"""AR / TAR (AWD-LSTM): the pure functions against element-by-element loops, and RNNLanguageModel's use of them
through TBPTT chunks, carried state and padding, against a hand-written training loop."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lightning_rnn import RNNConfig, RNNLanguageModel
from lightning_rnn.functional import activation_regularization, temporal_activation_regularization

from ..modules._tbptt_models import trainer


def _hand_ar(out: torch.Tensor, alpha: float, mask: torch.Tensor) -> float:
    total, count = 0.0, 0
    n, length, h = out.shape
    for i in range(n):
        for t in range(length):
            if mask[i, t]:
                for j in range(h):
                    total += float(out[i, t, j]) ** 2
                    count += 1
    return alpha * total / count if count else 0.0


def _hand_tar(out: torch.Tensor, beta: float, mask: torch.Tensor) -> float:
    total, count = 0.0, 0
    n, length, h = out.shape
    for i in range(n):
        for t in range(1, length):
            if mask[i, t] and mask[i, t - 1]:
                for j in range(h):
                    total += (float(out[i, t, j]) - float(out[i, t - 1, j])) ** 2
                    count += 1
    return beta * total / count if count else 0.0


def test_functions_equal_element_loops_with_and_without_mask():
    g = torch.Generator().manual_seed(1)
    out = torch.randn(3, 7, 4, generator=g, dtype=torch.float64)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[0, 5:] = False  # padding at the end of row 0
    mask[2, 3] = False  # a hole: pairs (2, 3) and (3, 4) of row 2 do not count
    for m in (None, mask):
        ref_mask = torch.ones(3, 7, dtype=torch.bool) if m is None else m
        ar = activation_regularization(out, 2.0, m)
        tar = temporal_activation_regularization(out, 0.5, m)
        assert float(ar) == pytest.approx(_hand_ar(out, 2.0, ref_mask), rel=1e-6)
        assert float(tar) == pytest.approx(_hand_tar(out, 0.5, ref_mask), rel=1e-6)
    # padding values do not matter
    poisoned = out.clone()
    poisoned[0, 5:] = 1e6
    assert float(activation_regularization(poisoned, 2.0, mask)) == pytest.approx(float(activation_regularization(out, 2.0, mask)))
    assert float(temporal_activation_regularization(poisoned, 1.0, mask)) == pytest.approx(
        float(temporal_activation_regularization(out, 1.0, mask))
    )


def test_gradients_and_edge_cases():
    out = torch.randn(2, 5, 3, requires_grad=True)
    (activation_regularization(out, 1.0) + temporal_activation_regularization(out, 1.0)).backward()
    manual = out.detach().clone().requires_grad_(True)
    d = manual[:, 1:] - manual[:, :-1]
    (manual.pow(2).mean() + d.pow(2).mean()).backward()
    torch.testing.assert_close(out.grad, manual.grad)
    one_step = torch.randn(2, 1, 3)
    assert float(temporal_activation_regularization(one_step, 1.0)) == 0.0  # no pair inside a 1-step chunk
    assert float(activation_regularization(out.detach(), 1.0, torch.zeros(2, 5, dtype=torch.bool))) == 0.0
    with pytest.raises(ValueError, match="Expected alpha to be a float >= 0, got -1"):
        activation_regularization(out, -1.0)
    with pytest.raises(ValueError, match=r"Expected mask of shape \(2, 5\)"):
        temporal_activation_regularization(out, 1.0, torch.ones(5, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"Expected outputs of shape \(N, L, H\)"):
        activation_regularization(torch.zeros(4, 3), 1.0)
    with pytest.raises(ValueError, match="Expected ar_alpha to be a float >= 0"):
        RNNLanguageModel(10, 8, encoder=RNNConfig(hidden_size=8), ar_alpha=-2.0)


def test_language_model_chunk_uses_dropped_outputs_for_ar_and_undropped_for_tar():
    """One training chunk with every dropout on: the loss is unchanged by AR/TAR (same masks as without them),
    AR is computed on the output after output dropout, TAR before it."""
    encoder = RNNConfig(hidden_size=6, num_layers=2, input_dropout=0.2, layer_dropout=0.2, output_dropout=0.4,
                        recurrent_dropout=0.3)
    kw = dict(embedding_dropout=0.1, pad_id=-1)
    lm = RNNLanguageModel(20, 6, encoder, ar_alpha=2.0, tar_beta=1.0, **kw).train()
    plain = RNNLanguageModel(20, 6, encoder, **kw).train()
    plain.load_state_dict(lm.state_dict())
    undropped = copy.deepcopy(plain)
    undropped.rnn.output_dropout = 0.0
    x = torch.randint(0, 20, (3, 9))
    y = torch.randint(0, 20, (3, 9))
    y[1, 6:] = -1  # padding
    mask = y != -1
    state = plain.rnn.init_state(3)

    torch.manual_seed(5)
    step = lm.tbptt_step((x, y), state)
    torch.manual_seed(5)
    out, _ = plain.rnn(plain.embedding(x), state)  # the unregularized path: same masks, dropped outputs
    torch.manual_seed(5)
    raw, _ = undropped.rnn(undropped.embedding(x), state)  # same masks but the output one: undropped outputs
    assert not torch.equal(out, raw)
    expected_ce = F.cross_entropy(plain.decoder(out).reshape(-1, 20), y.reshape(-1), ignore_index=-1)
    torch.testing.assert_close(step.loss, expected_ce)
    ar, tar = _hand_ar(out.detach(), 2.0, mask), _hand_tar(raw.detach(), 1.0, mask)
    assert float(step.metrics["ar"]) == pytest.approx(ar, rel=1e-5)
    assert float(step.metrics["tar"]) == pytest.approx(tar, rel=1e-5)
    assert float(step.penalty) == pytest.approx(ar + tar, rel=1e-5)
    # evaluation: no penalty, no metrics
    lm.eval()
    with torch.no_grad():
        step = lm.tbptt_step((x, y), state)
    assert float(step.penalty) == 0.0 and not step.metrics


def test_training_with_tbptt_chunks_carried_state_and_padding_matches_hand_loop():
    """Two batches of 10 steps, chunks of 4 (4, 4, 2), state carried across chunks and batches, padded
    targets: the parameters after fit equal a hand-written SGD loop on CE + AR + TAR per chunk, and the
    logged train/ar, train/tar, train/loss are the last chunk's (train/loss without the penalty)."""
    torch.manual_seed(0)
    lm = RNNLanguageModel(12, 5, encoder=RNNConfig(hidden_size=5, num_layers=2), tbptt_steps=4, optimizer="sgd", lr=0.5, ar_alpha=2.0, tar_beta=1.0, pad_id=-1)
    ref = copy.deepcopy(lm)
    g = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(2):
        x = torch.randint(0, 12, (3, 10), generator=g)
        y = torch.randint(0, 12, (3, 10), generator=g)
        y[0, 7:] = -1
        y[2, :2] = -1
        batches.append((x, y))
    t = trainer(max_epochs=1, log_every_n_steps=1)
    t.fit(lm, torch.utils.data.DataLoader(batches, batch_size=None))

    opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    ref.train()
    state = None
    for x, y in batches:
        for a, b in ((0, 4), (4, 8), (8, 10)):
            xs, ys = x[:, a:b], y[:, a:b]
            emb = ref.embedding(xs)
            out, state = ref.rnn(emb, state)
            ce = F.cross_entropy(ref.decoder(out).reshape(-1, 12), ys.reshape(-1), ignore_index=-1)
            m = (ys != -1).unsqueeze(-1)
            ar = 2.0 * (out.pow(2) * m).sum() / (m.sum() * 5)
            pair = m[:, 1:] & m[:, :-1]
            tar = 1.0 * ((out[:, 1:] - out[:, :-1]).pow(2) * pair).sum() / (pair.sum() * 5)
            opt.zero_grad()
            (ce + ar + tar).backward()
            opt.step()
            state = tuple(s.detach() for s in state)
    for (name, p), q in zip(lm.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)
    metrics = t.callback_metrics
    assert float(metrics["train/ar"]) == pytest.approx(float(ar), rel=1e-5)
    assert float(metrics["train/tar"]) == pytest.approx(float(tar), rel=1e-5)
    assert float(metrics["train/loss_chunk"]) == pytest.approx(float(ce), rel=1e-5)
