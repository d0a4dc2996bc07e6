"""RNNTagger against ground truth: loss over unpadded rows, torch.nn RNNs, a hand-written TBPTT loop."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lightning_rnn import RNNConfig, RNNTagger
from tests._encoder import with_encoder

from ._tbptt_models import trainer

LENGTHS = (10, 3, 7, 1)


def _batch(length=10, lengths=LENGTHS, classes=4, seed=0, vocab=13):
    g = torch.Generator().manual_seed(seed)
    n = len(lengths)
    x = torch.randint(0, vocab, (n, length), generator=g)
    labels = torch.randint(0, classes, (n, length), generator=g)
    lengths = torch.tensor(lengths)
    pad = torch.arange(length)[None, :] >= lengths[:, None]
    labels = labels.masked_fill(pad, -100)
    labels[0, 2] = -100  # an unlabelled step inside a row
    return {"inputs": x, "lengths": lengths, "labels": labels}


def _model(**kw):
    torch.manual_seed(0)
    defaults = dict(vocab_size=13, embedding_dim=5, hidden_size=6, optimizer="sgd", lr=0.5)
    defaults.update(kw)
    return RNNTagger(4, **with_encoder(defaults))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_loss_ignores_pads_exactly(bidirectional):
    model = _model(bidirectional=bidirectional, num_layers=2).eval()
    b = _batch()
    pad = torch.arange(10)[None, :] >= b["lengths"][:, None]
    garbage = dict(b, inputs=b["inputs"].masked_fill(pad, 12))  # change the pads
    with torch.no_grad():
        step = model.tbptt_step(model.slice_batch(b, 0, 10), None)
        step2 = model.tbptt_step(model.slice_batch(garbage, 0, 10), None)
        # reference: every row alone, unpadded, token CE summed over labelled steps / their count
        total, count = 0.0, 0
        for i, n in enumerate(LENGTHS):
            logits = model(b["inputs"][i : i + 1, :n])[0][0]
            y = b["labels"][i, :n]
            total += F.cross_entropy(logits, y, ignore_index=-100, reduction="sum").item()
            count += int((y != -100).sum())
    assert step.loss.item() == pytest.approx(total / count, rel=1e-5)
    assert step2.loss.item() == pytest.approx(total / count, rel=1e-5)
    assert step.weight == count


def test_metrics_are_per_token_over_labelled_steps():
    model = _model()
    b = _batch()
    (metrics,) = trainer().validate(model, DataLoader([b], batch_size=None), verbose=False)
    with torch.no_grad():
        logits, _ = model(b["inputs"], lengths=b["lengths"])
    keep = b["labels"] != -100
    acc = (logits.argmax(-1)[keep] == b["labels"][keep]).float().mean().item()
    assert metrics["val/acc"] == pytest.approx(acc)
    from torchmetrics.functional.classification import multiclass_f1_score

    f1 = multiclass_f1_score(logits.argmax(-1)[keep], b["labels"][keep], model.num_classes, average="macro")
    assert metrics["val/f1"] == pytest.approx(f1.item())


def _hand_tbptt(model, batch, k, lr):
    """Reference: rows run one by one per chunk (ended rows skipped); loss = token CE summed over the chunk's
    labelled steps of all rows / their count; one SGD step per chunk with any label."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x, labels, lengths = batch["inputs"], batch["labels"], batch["lengths"].tolist()
    states: list = [None] * len(lengths)
    for start in range(0, x.shape[1], k):
        end = min(start + k, x.shape[1])
        total, count = 0.0, 0
        for i, n in enumerate(lengths):
            if n <= start:
                continue
            out, states[i] = model.rnn(model.embedding(x[i : i + 1, start : min(end, n)]), states[i])
            y = labels[i, start : min(end, n)]
            total = total + F.cross_entropy(model.head(out[0]), y, ignore_index=-100, reduction="sum")
            count += int((y != -100).sum())
        if count:
            opt.zero_grad()
            (total / count).backward()
            opt.step()
        states = [None if s is None else tuple(t.detach() for t in s) for s in states]


@pytest.mark.parametrize("k", [3, 4])
def test_tbptt_update_equals_hand_written_chunk_loop(k):
    model = _model(tbptt_steps=k)
    ref, init = copy.deepcopy(model), copy.deepcopy(model)
    b = _batch()
    trainer().fit(model, DataLoader([b], batch_size=None))
    _hand_tbptt(ref, b, k, 0.5)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=f"parameter {name} differs")
    assert any(not torch.allclose(p, q) for p, q in zip(model.parameters(), init.parameters()))


def test_features_and_tuple_batch_train():
    torch.manual_seed(1)
    model = RNNTagger(3, encoder=RNNConfig(hidden_size=8, cell="gru", bidirectional=True), input_size=2, lr=0.1)
    x = torch.randn(8, 12, 2)
    y = (x[..., 0] > 0).long()  # a per-step rule
    before = F.cross_entropy(model(x)[0].reshape(-1, 3), y.reshape(-1)).item()
    trainer(max_epochs=5).fit(model, DataLoader([(x, y)], batch_size=None))
    after = F.cross_entropy(model(x)[0].reshape(-1, 3), y.reshape(-1)).item()
    assert after < 0.9 * before


def test_errors():
    model = _model()
    b = _batch()
    with pytest.raises(ValueError, match="bidirectional=True"):
        _model(bidirectional=True, tbptt_steps=4)
    labels = b["labels"].clone()
    labels[1, 1] = 9
    with pytest.raises(ValueError, match=r"num_classes=4.*got label 9"):
        model.training_step(dict(b, labels=labels), 0)
    labels = b["labels"].clone()
    labels[1, 8] = 9  # beyond the row's length (3): not a label, ignored
    model.validation_step(dict(b, labels=labels), 0)
    with pytest.raises(ValueError, match=r"labels of shape \(4, 10\)"):
        model.validation_step(dict(b, labels=b["labels"][:, :5]), 0)
    with pytest.raises(ValueError, match=r"Expected every length in \[1, 10\]"):
        model.validation_step(dict(b, lengths=torch.tensor([10, 0, 3, 2])), 0)
    with pytest.raises(TypeError, match="Expected a batch"):
        model.validation_step([b["inputs"]], 0)


def test_predict_tags_probabilities_and_padding():
    model = _model(tbptt_steps=4)
    b = _batch()
    (pred,) = trainer().predict(model, DataLoader([b], batch_size=None))
    with torch.no_grad():
        logits, _ = model.eval()(b["inputs"], lengths=b["lengths"])
    mask = torch.arange(10)[None, :] < b["lengths"][:, None]
    assert set(pred) == {"tags", "probs", "mask"} and torch.equal(pred["mask"], mask)
    assert torch.equal(pred["tags"], logits.argmax(-1).masked_fill(~mask, -100))
    torch.testing.assert_close(pred["probs"][mask], torch.softmax(logits, -1)[mask])
    assert bool((pred["probs"][~mask] == 0).all())


def test_predict_carries_state_across_batches_with_carry_state():
    model = _model(carry_state=True, tbptt_steps=3, vocab_size=None, input_size=2)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 12, 2, generator=g)
    batches = [(x[:, :6], torch.zeros(2, 6, dtype=torch.long)), (x[:, 6:], torch.zeros(2, 6, dtype=torch.long))]
    preds = trainer().predict(model, DataLoader(batches, batch_size=None))
    with torch.no_grad():
        logits, _ = model.eval()(x)
    torch.testing.assert_close(torch.cat([p["probs"] for p in preds], 1), torch.softmax(logits, -1))


def test_pad_id_must_not_be_a_class():
    with pytest.raises(ValueError, match=r"Expected pad_id outside \[0, num_classes=4\)"):
        _model(pad_id=2)
