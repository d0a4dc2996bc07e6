"""Deployment paths: torch.export of every shipped module's forward, ONNX export + ONNX Runtime parity, and the
stateful one-token-at-a-time path against the full-sequence forward."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.export import Dim

from lightning_rnn import RNNClassifier, RNNConfig, RNNLanguageModel, RNNTagger, Seq2SeqAttention

V = 23  # vocabulary size


def _ids(n: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (n, length), generator=torch.Generator().manual_seed(seed))


def _flat(out) -> list[torch.Tensor]:
    """The tensors of a nested output (tuples, dicts in order, None skipped), as an exported graph lists them."""
    if out is None:
        return []
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for item in out for t in _flat(item)]


class _LMWithState(nn.Module):
    """RNNLanguageModel.forward with its LSTM state as explicit inputs and outputs (what an exported graph and
    an ONNX file take: tensors, not a tuple argument that may be None)."""

    def __init__(self, lm: RNNLanguageModel) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, tokens: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        logits, (h, c) = self.lm(tokens, (h, c))
        return logits, h, c


def _modules() -> dict[str, tuple[nn.Module, tuple]]:
    torch.manual_seed(0)
    lm = RNNLanguageModel(V, encoder=RNNConfig(hidden_size=16, num_layers=2), embedding_dim=8)
    gru = RNNLanguageModel(V, encoder=RNNConfig(hidden_size=16, cell="gru"), embedding_dim=8)
    clf = RNNClassifier(3, encoder=RNNConfig(hidden_size=16), vocab_size=V, embedding_dim=8)  # summary="last"
    clf_mean = RNNClassifier(3, encoder=RNNConfig(hidden_size=16, bidirectional=True), vocab_size=V, embedding_dim=8, summary="mean")
    tagger = RNNTagger(4, encoder=RNNConfig(hidden_size=16, bidirectional=True), vocab_size=V, embedding_dim=8)
    s2s = Seq2SeqAttention(V, V, encoder=RNNConfig(bidirectional=True, hidden_size=16), embedding_dim=8)
    x = _ids(3, 9)
    h = torch.randn(2, 3, 16)
    return {
        "lm": (lm, (x,)),
        "lm_state": (_LMWithState(lm), (x, h, torch.randn(2, 3, 16))),
        "lm_gru": (gru, (x,)),
        "classifier": (clf, (x,)),
        "classifier_mean_bidirectional": (clf_mean, (x,)),  # the pooled path
        "tagger_bidirectional": (tagger, (x,)),
        "seq2seq_encoder": (s2s.model.encoder, (x,)),
    }


@pytest.mark.parametrize("name", list(_modules()))
def test_torch_export_matches_eager_at_other_batch_sizes(name):
    """The batch dimension stays dynamic; the sequence length is fixed at export (torch's decomposition of the
    fused RNN op unrolls time): export at the length you serve, e.g. 1 for token-by-token streaming."""
    module, args = _modules()[name]
    module.eval()
    batch = Dim("batch", min=1, max=64)
    dynamic = [{0: batch}] + [{1: batch} for _ in args[1:]]  # states are (layers, N, H)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(module, args, dynamic_shapes=tuple(dynamic))
    exported = program.module()
    steps = args[0].shape[1]
    for n in (3, 5, 1):  # batch sizes other than the traced one
        new = (_ids(n, steps, seed=n),) + tuple(torch.randn(a.shape[0], n, a.shape[2]) for a in args[1:])
        with torch.no_grad():
            want, got = _flat(module(*new)), _flat(exported(*new))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_exported_step_carried_state_equals_the_full_sequence_forward():
    """One token in, one token out, state carried between calls = the fused forward over the whole sequence."""
    torch.manual_seed(0)
    lm = RNNLanguageModel(V, encoder=RNNConfig(hidden_size=16, num_layers=2), embedding_dim=8).eval()
    step = _LMWithState(lm)
    h, c = torch.zeros(2, 4, 16), torch.zeros(2, 4, 16)  # two tensors: export treats aliased inputs as one
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.export.export(step, (_ids(4, 1), h, c)).module()
    tokens = _ids(4, 12, seed=3)
    with torch.no_grad():
        full, (h_full, c_full) = lm(tokens)
        outs = []
        for t in range(tokens.shape[1]):
            logits, h, c = exported(tokens[:, t : t + 1], h, c)
            outs.append(logits)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close((h, c), (h_full, c_full), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ ONNX
@pytest.mark.parametrize("name", ["lm_state", "classifier", "seq2seq_encoder"])
def test_onnx_export_matches_onnx_runtime(name, tmp_path):
    pytest.importorskip("onnx", reason="ONNX export needs the onnx extra: pip install 'lightning-rnn[onnx]'")
    pytest.importorskip("onnxscript", reason="ONNX export needs the onnx extra: pip install 'lightning-rnn[onnx]'")
    ort = pytest.importorskip("onnxruntime", reason="parity needs the onnx extra: pip install 'lightning-rnn[onnx]'")
    module, args = _modules()[name]
    module.eval()
    batch = Dim("batch", min=1, max=64)  # dynamic batch; the length is fixed at export, as for torch.export
    dynamic = [{0: batch}] + [{1: batch} for _ in args[1:]]
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=True, dynamic_shapes=tuple(dynamic))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (3, 2):
        new = (_ids(n, args[0].shape[1], seed=7),) + tuple(torch.randn(a.shape[0], n, a.shape[2]) for a in args[1:])
        feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), new)}
        got = session.run(None, feeds)
        with torch.no_grad():
            want = _flat(module(*new))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            torch.testing.assert_close(torch.from_numpy(g), w, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ the streaming example
def _load_example():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "stream_inference.py"
    spec = importlib.util.spec_from_file_location("example_stream_inference", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.mark.parametrize("export", [False, True])
def test_streaming_predictor_equals_full_forward_and_resets_rows(export):
    example = _load_example()
    torch.manual_seed(0)
    lm = RNNLanguageModel(V, encoder=RNNConfig(hidden_size=16, num_layers=2), embedding_dim=8)
    stream = example.StreamingPredictor(lm, num_streams=3, export=export)
    tokens = _ids(3, 6, seed=1)
    stepped = torch.stack([stream.step(tokens[:, t]) for t in range(6)], dim=1)
    with torch.no_grad():
        full, _ = lm(tokens)
    torch.testing.assert_close(stepped, full, rtol=1e-5, atol=1e-6)
    stream.reset(torch.tensor([True, False, False]))
    after = stream.step(tokens[:, 0])
    with torch.no_grad():
        fresh, _ = lm(tokens[:1, :1])
        carried, _ = lm(torch.cat([tokens[1:], tokens[1:, :1]], dim=1))
    torch.testing.assert_close(after[0], fresh[0, 0], rtol=1e-5, atol=1e-6)  # row 0 starts afresh
    torch.testing.assert_close(after[1:], carried[:, -1], rtol=1e-5, atol=1e-6)  # the others keep their state
    with pytest.raises(ValueError, match=r"Expected tokens of shape \(3,\)"):
        stream.step(tokens[:2, 0])


def test_stream_inference_example_quick(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIGHTNING_RNN_CACHE", str(tmp_path / "cache"))
    out = _load_example().main(["--quick", "--tokens", "5"])
    assert out["max_diff"] < 1e-4 and len(out["text"]) == 5 and out["prompt_tokens"] > 0
