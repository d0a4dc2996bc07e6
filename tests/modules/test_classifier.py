"""RNNClassifier against ground truth: unpadded rows run alone, torch.nn RNNs, a hand-written TBPTT loop."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from lightning_rnn import RNNClassifier, RNNConfig

from ._tbptt_models import trainer

SUMMARIES = ["last", "mean", "max", "attention"]


def _batch(n=4, length=9, features=3, lengths=(9, 4, 1, 6), classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, length, features, generator=g)
    lengths = torch.tensor(lengths)
    x = x.masked_fill(torch.arange(length)[None, :, None] >= lengths[:, None, None], 0.0)
    labels = torch.randint(0, classes, (n,), generator=g)
    return {"inputs": x, "lengths": lengths, "labels": labels}


@pytest.mark.parametrize("summary", SUMMARIES)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_invariance(summary, bidirectional):
    torch.manual_seed(0)
    clf = RNNClassifier(3, encoder=RNNConfig(hidden_size=6, num_layers=2, bidirectional=bidirectional), input_size=3, summary=summary).eval()
    b = _batch()
    with torch.no_grad():
        base, _ = clf(b["inputs"], lengths=b["lengths"])
        # pad further with garbage (not zeros) and change the other rows
        more = torch.cat([b["inputs"], 100 * torch.randn(4, 5, 3)], dim=1)
        more[1:] = torch.randn_like(more[1:])
        lengths = b["lengths"].clone()
        lengths[1:] = torch.tensor([14, 2, 3])
        moved, _ = clf(more, lengths=lengths)
        alone, _ = clf(b["inputs"][:1, :9])
    torch.testing.assert_close(moved[0], base[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(alone[0], base[0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_last_summary_equals_torch_rnn_on_each_unpadded_row(cell, bidirectional):
    torch.manual_seed(1)
    clf = RNNClassifier(3, encoder=RNNConfig(hidden_size=5, num_layers=2, cell=cell, bidirectional=bidirectional), input_size=3)
    ref = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell](
        3, 5, num_layers=2, batch_first=True, bidirectional=bidirectional
    )
    ref.load_state_dict(clf.rnn.state_dict())
    b = _batch()
    summary = clf.summarize(b["inputs"], b["lengths"])
    for i, n in enumerate(b["lengths"].tolist()):
        _, hn = ref(b["inputs"][i : i + 1, :n])
        h = hn[0] if cell == "lstm" else hn  # (D*layers, 1, H)
        expected = torch.cat([h[2], h[3]], -1)[0] if bidirectional else h[1, 0]  # top layer [fwd, bwd]
        torch.testing.assert_close(summary[i], expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("summary", ["mean", "max"])
def test_pooled_summary_equals_pooling_of_unpadded_outputs(summary):
    torch.manual_seed(2)
    clf = RNNClassifier(3, encoder=RNNConfig(hidden_size=5, cell="gru", bidirectional=True), input_size=3, summary=summary)
    ref = nn.GRU(3, 5, batch_first=True, bidirectional=True)
    ref.load_state_dict(clf.rnn.state_dict())
    b = _batch()
    pooled = clf.summarize(b["inputs"], b["lengths"])
    for i, n in enumerate(b["lengths"].tolist()):
        out, _ = ref(b["inputs"][i : i + 1, :n])
        expected = out[0].mean(0) if summary == "mean" else out[0].amax(0)
        torch.testing.assert_close(pooled[i], expected, atol=1e-6, rtol=1e-5)


def test_token_inputs_and_tuple_batches():
    torch.manual_seed(3)
    clf = RNNClassifier(4, encoder=RNNConfig(hidden_size=6), vocab_size=11, embedding_dim=5, optimizer="sgd", lr=0.1)
    x = torch.randint(0, 11, (6, 7))
    y = torch.randint(0, 4, (6,))
    (metrics,) = trainer().validate(clf, DataLoader([(x, y)], batch_size=None), verbose=False)
    with torch.no_grad():
        logits, _ = clf(x)
    assert metrics["val/loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert metrics["val/acc"] == pytest.approx((logits.argmax(-1) == y).float().mean().item())


def _hand_tbptt(model: RNNClassifier, batch, k: int, lr: float, loss_at: str = "end") -> None:
    """Reference: each row run on its own, chunk by chunk; one SGD step per chunk on the mean loss of the rows
    whose loss counts in the chunk (ending rows, or every running row for loss_at='every_chunk')."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x, lengths, labels = batch["inputs"], batch["lengths"].tolist(), batch["labels"]
    states: list = [None] * len(lengths)
    for start in range(0, x.shape[1], k):
        end = min(start + k, x.shape[1])
        losses = []
        for i, n in enumerate(lengths):
            if n <= start:
                continue  # ended: untouched
            out, states[i] = model.rnn(x[i : i + 1, start : min(end, n)], states[i])
            if n <= end or loss_at == "every_chunk":
                h = states[i][0] if isinstance(states[i], tuple) else states[i]
                losses.append(F.cross_entropy(model.head(h[-1]), labels[i : i + 1]))
        if losses:
            opt.zero_grad()
            torch.stack(losses).mean().backward()
            opt.step()
        states = [None if s is None else tuple(t.detach() for t in s) if isinstance(s, tuple) else s.detach() for s in states]


@pytest.mark.parametrize("k,loss_at", [(3, "end"), (4, "end"), (3, "every_chunk")])
def test_tbptt_update_equals_hand_written_chunk_loop(k, loss_at):
    torch.manual_seed(4)
    model = RNNClassifier(3, encoder=RNNConfig(hidden_size=6, cell="lstm"), input_size=3, tbptt_steps=k, loss_at=loss_at, optimizer="sgd", lr=0.5)
    ref, init = copy.deepcopy(model), copy.deepcopy(model)
    b = _batch()
    trainer().fit(model, DataLoader([b], batch_size=None))
    _hand_tbptt(ref, b, k, 0.5, loss_at)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=f"parameter {name} differs")
    assert any(not torch.allclose(p, q) for p, q in zip(model.parameters(), init.parameters()))


def test_tbptt_pooling_equals_whole_sequence_pooling():
    torch.manual_seed(5)
    for summary in ("mean", "max", "attention"):
        model = RNNClassifier(3, encoder=RNNConfig(hidden_size=6), input_size=3, summary=summary, tbptt_steps=2).eval()
        b = _batch()
        with torch.no_grad():
            whole, _ = model(b["inputs"], lengths=b["lengths"])
            state, logits = None, torch.zeros(4, 3)
            for start in range(0, 9, 2):
                chunk = model.slice_batch(b, start, min(start + 2, 9))
                step = model.tbptt_step(chunk, state)
                state = step.state
                if step.outputs is not None:
                    logits[chunk["ends"]] = step.outputs[0]
        torch.testing.assert_close(logits, whole, atol=1e-6, rtol=1e-5)


def test_errors():
    clf = RNNClassifier(3, encoder=RNNConfig(hidden_size=4), input_size=3)
    b = _batch()
    bad = dict(b, labels=torch.tensor([0, 1, 7, 2]))
    with pytest.raises(ValueError, match=r"num_classes=3.*got label 7"):
        clf.training_step(bad, 0)
    with pytest.raises(ValueError, match=r"Expected every length in \[1, 9\]"):
        clf.validation_step(dict(b, lengths=torch.tensor([9, 4, 10, 1])), 0)
    with pytest.raises(ValueError, match=r"lengths of shape \(4,\)"):
        clf.validation_step(dict(b, lengths=torch.tensor([9, 4])), 0)
    with pytest.raises(ValueError, match="bidirectional=True"):
        RNNClassifier(3, encoder=RNNConfig(bidirectional=True), input_size=3, tbptt_steps=4)
    with pytest.raises(ValueError, match="summary in"):
        RNNClassifier(3, input_size=3, summary="first")
    with pytest.raises(ValueError, match="exactly one of vocab_size"):
        RNNClassifier(3)
    with pytest.raises(ValueError, match=r"\(N, L, 3\)"):
        clf.validation_step(dict(b, inputs=torch.randn(4, 9, 5)), 0)


@pytest.mark.parametrize("summary", SUMMARIES)
def test_predict_probabilities_without_labels_equal_the_whole_sequence_forward(summary):
    torch.manual_seed(6)
    model = RNNClassifier(3, encoder=RNNConfig(hidden_size=6), input_size=3, summary=summary, tbptt_steps=2)
    b = _batch()
    unlabelled = {"inputs": b["inputs"], "lengths": b["lengths"]}
    (probs,) = trainer().predict(model, DataLoader([unlabelled], batch_size=None))
    (again,) = trainer().predict(model, DataLoader([b], batch_size=None))  # labels are ignored
    with torch.no_grad():
        logits, _ = model.eval()(b["inputs"], lengths=b["lengths"])
    assert probs.shape == (4, 3) and probs.dtype == torch.float32
    torch.testing.assert_close(probs, torch.softmax(logits, -1))
    torch.testing.assert_close(again, probs)
    # a plain tensor batch (TensorDataset-style 1-tuple) has no lengths: every row is whole
    (whole,) = trainer().predict(model, DataLoader([(b["inputs"],)], batch_size=None))
    with torch.no_grad():
        full, _ = model(b["inputs"])
    torch.testing.assert_close(whole, torch.softmax(full, -1))


def test_forward_state_continues_the_sequence():
    torch.manual_seed(7)
    model = RNNClassifier(3, encoder=RNNConfig(hidden_size=6), input_size=3, summary="mean").eval()
    b = _batch()
    with torch.no_grad():
        whole, _ = model(b["inputs"], lengths=b["lengths"])
        first, state = model(b["inputs"][:, :4], lengths=b["lengths"].clamp(max=4))
        second, _ = model(b["inputs"][:, 4:], state, lengths=(b["lengths"] - 4).clamp(min=0))
    torch.testing.assert_close(second, whole)
