"""RNNConfig: the recurrent encoder's settings as one object (built into an RNNStack, stored as a dict)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lightning_rnn.nn import RNNConfig, RNNStack

SETTINGS = dict(cell="gru", hidden_size=6, num_layers=2, bidirectional=True, residual=True, input_dropout=0.1,
                layer_dropout=0.2, output_dropout=0.3, recurrent_dropout=0.4, recurrent_dropout_mode="state",
                zoneout=0.1, bias=False)


def test_every_field_is_an_rnn_stack_keyword() -> None:
    import inspect

    stack = set(inspect.signature(RNNStack).parameters)
    assert {f.name for f in dataclasses.fields(RNNConfig)} <= stack


def test_build_equals_the_stack_built_from_the_same_flat_arguments() -> None:
    torch.manual_seed(0)
    built = RNNConfig(**SETTINGS).build(5)
    torch.manual_seed(0)
    flat = RNNStack(SETTINGS["cell"], 5, **{k: v for k, v in SETTINGS.items() if k != "cell"})
    assert [(n, p.shape) for n, p in built.named_parameters()] == [(n, p.shape) for n, p in flat.named_parameters()]
    for a, b in zip(built.parameters(), flat.parameters()):
        assert torch.equal(a, b)
    x = torch.randn(3, 7, 5)
    torch.manual_seed(1)
    out_built, _ = built(x)
    torch.manual_seed(1)
    out_flat, _ = flat(x)
    assert torch.equal(out_built, out_flat)  # the same dropout draws: the same function
    assert built.output_size == RNNConfig(**SETTINGS).output_size == 12


def test_coerce_and_dict_round_trip() -> None:
    config = RNNConfig(**SETTINGS)
    assert RNNConfig.coerce(config.to_dict()) == config
    assert RNNConfig.coerce(config) is config
    assert RNNConfig.coerce(None) == RNNConfig()
    assert RNNConfig.coerce(None, RNNConfig(bidirectional=True)).bidirectional
    assert config.replace(hidden_size=9).hidden_size == 9 and config.hidden_size == 6
    assert RNNConfig(cell="LSTM").cell == "lstm"  # normalised like RNNStack's
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hidden_size = 3  # type: ignore[misc]


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"cell": "cnn"}, ValueError, r"Expected cell to be one of \['rnn', 'lstm', 'gru'\], got 'cnn'"),
    ({"hidden_size": 0}, ValueError, r"Expected hidden_size to be an int >= 1, got 0"),
    ({"num_layers": 1.5}, ValueError, r"Expected num_layers to be an int >= 1, got 1.5"),
    ({"bidirectional": "yes"}, ValueError, r"Expected bidirectional to be a bool, got 'yes'"),
    ({"residual": "some"}, ValueError, r"Expected residual to be False, True or 'all', got 'some'"),
    ({"residual": True}, ValueError, r"Expected num_layers >= 2 for residual=True"),
    ({"input_dropout": 1.0}, ValueError, r"Expected input_dropout to be a float in \[0, 1\), got 1.0"),
    ({"zoneout": -0.1}, ValueError, r"Expected zoneout .*got -0.1"),
    ({"recurrent_dropout_mode": "both"}, ValueError, r"Expected recurrent_dropout_mode to be one of .*'both'"),
    ({"bias": 1}, ValueError, r"Expected bias to be a bool, got 1"),
])
def test_bad_fields_fail_at_construction(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        RNNConfig(**kwargs)


def test_coerce_names_the_argument() -> None:
    with pytest.raises(TypeError, match=r"Expected encoder keys among \[.*\], got \['hidden'\]"):
        RNNConfig.coerce({"hidden": 3})
    with pytest.raises(TypeError, match=r"Expected decoder to be an RNNConfig, a dict of its fields or None, got int"):
        RNNConfig.coerce(3, name="decoder")


def test_modules_store_the_encoder_as_a_dict_and_reload_it(tmp_path) -> None:
    """What load_from_checkpoint does: the saved hyper-parameters (a plain dict, loadable with weights_only=True)
    rebuild the same module."""
    from lightning_rnn import RNNLanguageModel

    torch.manual_seed(0)
    lm = RNNLanguageModel(11, 4, RNNConfig("gru", hidden_size=5, num_layers=2, layer_dropout=0.2))
    assert lm.hparams["encoder"] == RNNConfig("gru", hidden_size=5, num_layers=2, layer_dropout=0.2).to_dict()
    torch.save({"hyper_parameters": dict(lm.hparams), "state_dict": lm.state_dict()}, tmp_path / "m.ckpt")
    saved = torch.load(tmp_path / "m.ckpt", weights_only=True)
    again = RNNLanguageModel(**saved["hyper_parameters"])
    again.load_state_dict(saved["state_dict"])
    lm.eval(), again.eval()
    x = torch.randint(0, 11, (2, 6))
    assert torch.equal(lm(x)[0], again(x)[0]) and again.rnn.cell == "gru" and again.rnn.num_layers == 2


@pytest.mark.parametrize("name", ["lm", "classifier", "tagger", "seq2seq"])
def test_checkpoint_with_the_flat_keys_of_0_1_0_is_refused_with_the_conversion(name: str, tmp_path) -> None:
    """Lightning passes only the keys a constructor accepts: flat encoder keys would silently build the default
    encoder. The load refuses them and names the conversion, which then loads the same model."""
    from lightning_rnn import RNNClassifier, RNNLanguageModel, RNNTagger, Seq2SeqAttention

    encoder = RNNConfig("gru", hidden_size=6, bidirectional=name == "seq2seq", input_dropout=0.3)
    cls, sizes = {"lm": (RNNLanguageModel, {"vocab_size": 9}), "classifier": (RNNClassifier, {"num_classes": 3,
                  "vocab_size": 9}), "tagger": (RNNTagger, {"num_classes": 3, "vocab_size": 9}),
                  "seq2seq": (Seq2SeqAttention, {"src_vocab": 9, "tgt_vocab": 9})}[name]
    model = cls(**sizes, encoder=encoder)
    hparams = dict(model.hparams)
    hparams.update(hparams.pop("encoder"))  # what 0.1.0 saved: the encoder's settings as top-level keys
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams, "pytorch-lightning_version": "2.6.0"},
               path)
    with pytest.raises(ValueError, match=r"under 'encoder' .*flat keys \['hidden_size'.*Convert the file once") as err:
        cls.load_from_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    hp = ckpt["hyper_parameters"]
    keys = eval(str(err.value).split("for k in ")[1].split("}")[0])  # the list the message names
    hp["encoder"] = {k: hp.pop(k) for k in keys}
    torch.save(ckpt, path)
    loaded = cls.load_from_checkpoint(path)
    assert RNNConfig.coerce(loaded.hparams["encoder"]) == encoder


def test_encoder_none_is_each_modules_own_default() -> None:
    from lightning_rnn import RNNClassifier, RNNLanguageModel, RNNTagger, Seq2SeqAttention

    lm = RNNLanguageModel(9, 4, None)
    assert (lm.rnn.hidden_size, lm.rnn.bidirectional) == (256, False)
    s2s = Seq2SeqAttention(9, 9, 4, None)
    assert (s2s.model.encoder.rnn.hidden_size, s2s.model.encoder.rnn.bidirectional) == (128, True)
    for cls in (RNNClassifier, RNNTagger):
        assert cls(3, 9, None, 4, None).rnn.hidden_size == 128
