"""The module contract (DESIGN.md), in one place.

Every shipped module (RNNLanguageModel, RNNClassifier, RNNTagger, Seq2SeqAttention) with its own data module,
and a user's own ``TBPTTModule`` subclass (own cell, dict state), through ``fit``, ``validate``, ``test``,
``predict`` and checkpoint reload (identical outputs), under ``32-true`` and ``bf16-mixed``. Every case is a
second or two: tiny models, tiny data; a model is fitted once per (module, precision) and shared by the
cases of that pair. Predictions are checked against a reference computed another way (the module's
``forward`` on the whole batch, ``generate``), not only for shape.

The callback dimension of the contract is tested in ``tests/callbacks/``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from lightning_rnn import (
    RNNClassifier,
    RNNConfig,
    RNNLanguageModel,
    RNNTagger,
    Seq2SeqAttention,
    TBPTTModule,
    TBPTTStep,
)
from lightning_rnn.data import (
    BitStreamTaggingDataModule,
    ReversalDataModule,
    TextClassificationDataModule,
    TextStreamDataModule,
)
from lightning_rnn.modules.seq2seq import strip_hypotheses
from tests._cpu_features import cpu_bf16_lstm_supported
from tests._encoder import with_encoder

PRECISIONS = ("32-true", "bf16-mixed")
MODULES = ("lm", "classifier", "tagger", "seq2seq", "custom")
OPS = ("fit", "validate", "test", "predict", "reload")


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: thread hand-offs cost more than they save
    yield
    torch.set_num_threads(n)


def _cell(precision: str) -> str:
    """The shipped default cell; where this CPU's oneDNN has no bf16 LSTM kernel, bf16 runs use a GRU."""
    return "lstm" if precision != "bf16-mixed" or cpu_bf16_lstm_supported() else "gru"


# ---------------------------------------------------------------------------------------------- a user's module
class UserCell(nn.Module):
    """A user's own recurrent cell whose state is a dict: an Elman state and a running mean of the inputs."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.ih = nn.Linear(input_size, hidden_size)
        self.hh = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, x: Tensor, state: dict[str, Tensor]) -> dict[str, Tensor]:  # x (N, F)
        h = torch.tanh(self.ih(x) + self.hh(state["h"]))  # (N, H)
        count = state["count"] + 1
        mean = state["mean"] + (x - state["mean"]) / count.unsqueeze(-1)  # (N, F)
        return {"h": h, "mean": mean, "count": count}


class UserTBPTT(TBPTTModule):
    """Per-step regression with a user cell and dict state; ``outputs`` are the predictions (N, k, 1)."""

    def __init__(self, input_size: int = 2, hidden_size: int = 8, tbptt_steps: int | None = 3) -> None:
        super().__init__(tbptt_steps=tbptt_steps, eval_tbptt_steps=tbptt_steps)
        self.save_hyperparameters()
        self.cell = UserCell(input_size, hidden_size)
        self.head = nn.Linear(hidden_size + input_size, 1)

    def initial_state(self, batch: Any) -> dict[str, Tensor]:
        x = batch[0]
        n = x.shape[0]
        return {
            "h": x.new_zeros(n, self.hparams.hidden_size),
            "mean": x.new_zeros(n, self.hparams.input_size),
            "count": x.new_zeros(n),
        }

    def forward(self, x: Tensor, state: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        state = self.initial_state((x,)) if state is None else state
        preds = []
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)
            preds.append(self.head(torch.cat([state["h"], state["mean"].to(state["h"].dtype)], -1)))
        return torch.stack(preds, 1), state  # (N, k, 1)

    def tbptt_step(self, chunk: Any, state: Any) -> TBPTTStep:
        x, y = chunk
        pred, state = self(x, state)
        return TBPTTStep(nn.functional.mse_loss(pred.float(), y), state, outputs=pred.detach().float())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _user_data() -> LightningDataModule:
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> TensorDataset:
        x = torch.randn(n, 7, 2, generator=g)
        return TensorDataset(x, x.cumsum(1)[..., :1] / 3)

    return LightningDataModule.from_datasets(
        train_dataset=split(8), val_dataset=split(4), test_dataset=split(4), predict_dataset=split(4), batch_size=4
    )


# ---------------------------------------------------------------------------------------------- the cases
@dataclass
class Case:
    """A module with its own data module, and the reference each prediction batch is checked against."""

    model: L.LightningModule
    data: LightningDataModule
    reference: Callable[[Any, Any], Any]  # (model, batch) -> the expected prediction of that batch


def _lm_reference(model: RNNLanguageModel, batch: Any, state: list) -> Tensor:
    inputs, targets = batch
    logits, state[0] = model(inputs, state[0])  # the state carried across batches, as predict does
    logp = torch.log_softmax(logits.float(), -1).gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return logp.masked_fill(targets == model.pad_id, math.nan)


def make_case(name: str, precision: str, tmp: Path) -> Case:
    torch.manual_seed(0)
    cell = _cell(precision)
    if name == "lm":
        text = "the quick brown fox jumps over the lazy dog; " * 12
        dm = TextStreamDataModule(text, batch_size=2, bptt=8, val_fraction=0.15, test_fraction=0.15)
        dm.setup("fit")
        model = RNNLanguageModel(len(dm.vocab), 8, encoder=RNNConfig(hidden_size=16, cell=cell), tbptt_steps=4)
        carried: list = [None]
        return Case(model, dm, lambda m, b: _lm_reference(m, b, carried))
    if name == "classifier":
        source = tmp / "labelled.tsv"
        source.write_text("".join(f"{'ab'[i % 2]}\t{'xy'[i % 2] * (3 + i % 5)}{'z' * (i % 3)}\n" for i in range(40)))
        dm = TextClassificationDataModule(str(source), batch_size=8, max_length=12, val_fraction=0.2, test_fraction=0.2)
        dm.setup("fit")
        model = RNNClassifier(dm.num_classes, dm.vocab_size, None, 8, encoder=RNNConfig(hidden_size=16, cell=cell), tbptt_steps=3, summary="mean")
        return Case(model, dm, lambda m, b: torch.softmax(m(b["inputs"], lengths=b["lengths"])[0].float(), -1))
    if name == "tagger":
        dm = BitStreamTaggingDataModule("parity", length=12, num_train=8, num_val=4, num_test=4, batch_size=4,
                                        eval_batch_size=4)
        model = RNNTagger(dm.num_classes, dm.vocab_size, None, 4, encoder=RNNConfig(hidden_size=16, cell=cell), tbptt_steps=4)

        def tags(m: RNNTagger, b: dict) -> Tensor:
            logits, _ = m(b["inputs"], lengths=b["lengths"])
            return logits.argmax(-1).masked_fill(~b["mask"], m.pad_id)

        return Case(model, dm, tags)
    if name == "seq2seq":
        dm = ReversalDataModule(num_train=8, num_val=4, num_test=4, num_symbols=5, train_max_len=5, test_max_len=6,
                                batch_size=4, eval_batch_size=4)
        model = Seq2SeqAttention(dm.src_vocab_size, dm.tgt_vocab_size, 8, encoder=RNNConfig(bidirectional=True, hidden_size=8, num_layers=1, cell=cell), max_decode_len=8, num_attention_maps=0, optimizer="adamw")

        def decoded(m: Seq2SeqAttention, b: dict) -> list[list[int]]:
            out = m.generate(b["src"], b["src_lengths"])
            return strip_hypotheses(out.tokens, out.lengths, m.hparams.eos_id)

        return Case(model, dm, decoded)
    if name == "custom":
        return Case(UserTBPTT(), _user_data(), lambda m, b: m(b[0])[0].float())
    raise AssertionError(name)


def trainer(precision: str, tmp: Path) -> L.Trainer:
    return L.Trainer(
        max_steps=3, limit_val_batches=1, precision=precision, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=tmp,
    )


def predict_loader(data: LightningDataModule) -> Any:
    """The data module's own predict loader: every shipped data module has one."""
    return data.predict_dataloader()


# ---------------------------------------------------------------------------------------------- fitted once
_FITTED: dict[tuple[str, str], tuple[Case, Path] | BaseException] = {}


def fitted(name: str, precision: str, tmp_factory: pytest.TempPathFactory) -> tuple[Case, Path]:
    """(the case after a short fit, its checkpoint); made once per (module, precision)."""
    key = (name, precision)
    if isinstance(_FITTED.get(key), BaseException):  # fit failed once: the other cases fail the same way
        raise _FITTED[key]  # type: ignore[misc]
    if key not in _FITTED:
        try:
            _FITTED[key] = _fit(name, precision, tmp_factory)
        except Exception as error:
            _FITTED[key] = error
            raise
    return _FITTED[key]  # type: ignore[return-value]


def _fit(name: str, precision: str, tmp_factory: pytest.TempPathFactory) -> tuple[Case, Path]:
    """Fit a fresh case briefly: steps taken, parameters moved, a finite train/loss; save a checkpoint."""
    tmp = tmp_factory.mktemp(f"{name}-{precision}")
    case = make_case(name, precision, tmp)
    before = [p.detach().clone() for p in case.model.parameters()]
    t = trainer(precision, tmp)
    t.fit(case.model, datamodule=case.data)
    assert t.global_step > 0
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, case.model.parameters())), "nothing trained"
    loss = t.callback_metrics.get("train/loss")
    assert loss is not None and torch.isfinite(loss), f"train/loss {loss}"
    ckpt = tmp / "model.ckpt"
    t.save_checkpoint(ckpt)
    return case, ckpt


def _params() -> list[Any]:
    return [
        pytest.param(name, op, precision, id=f"{name}-{op}-{precision}")
        for precision in PRECISIONS
        for name in MODULES
        for op in OPS
    ]


def _assert_same(actual: Any, expected: Any, exact: bool) -> None:
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for k in expected:
            _assert_same(actual[k], expected[k], exact)
    elif isinstance(expected, list | tuple) and any(isinstance(e, Tensor) for e in expected):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            _assert_same(a, e, exact)
    elif isinstance(expected, Tensor):
        if exact:  # bit for bit (NaN where NaN)
            torch.testing.assert_close(actual, expected, equal_nan=True, rtol=0, atol=0)
        else:
            torch.testing.assert_close(actual, expected, equal_nan=True)
    else:
        assert actual == expected


def _run_predict(case: Case, precision: str, tmp: Path, model: L.LightningModule | None = None) -> list[Any]:
    model = model or case.model
    out = trainer(precision, tmp).predict(model, dataloaders=predict_loader(case.data))
    assert out, "no prediction"
    return out


# ---------------------------------------------------------------------------------------------- the contract
@pytest.mark.parametrize(("name", "op", "precision"), _params())
def test_contract(name: str, op: str, precision: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    case, ckpt = fitted(name, precision, tmp_path_factory)
    model, tmp = case.model, ckpt.parent
    if op == "fit":
        return  # asserted in fitted(): steps taken, parameters moved, a finite train/loss
    if op in ("validate", "test"):
        run = trainer(precision, tmp).validate if op == "validate" else trainer(precision, tmp).test
        (metrics,) = run(model, datamodule=case.data, verbose=False)
        stage = "val" if op == "validate" else "test"
        assert f"{stage}/loss" in metrics and math.isfinite(metrics[f"{stage}/loss"]), metrics
        return
    if op == "predict":
        predictions = _run_predict(case, precision, tmp)
        batches = list(predict_loader(case.data))
        assert len(predictions) == len(batches)
        model.eval()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
        with torch.no_grad(), autocast:
            expected = [case.reference(model, b) for b in batches]
        for got, want, batch in zip(predictions, expected, batches):
            _check_prediction(name, model, got, want, batch, exact=precision == "32-true")
        return
    if op == "reload":
        loaded = type(model).load_from_checkpoint(ckpt)
        assert dict(loaded.hparams) == dict(model.hparams)
        for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
            assert torch.equal(a, b), k
        first = _run_predict(case, precision, tmp)
        again = _run_predict(case, precision, tmp, loaded)
        for a, b in zip(first, again):
            _assert_same(b, a, exact=True)
        return
    raise AssertionError(op)


def _check_prediction(name: str, model: Any, got: Any, want: Any, batch: Any, exact: bool) -> None:
    """The documented result of each module's ``predict_step``, equal to the reference computed another way."""
    if name == "lm":  # (N, L) log-likelihood of every target
        assert isinstance(got, Tensor) and got.dtype == torch.float32 and got.shape == batch[1].shape
        assert bool((got[~got.isnan()] <= 0).all())
        torch.testing.assert_close(got, want, equal_nan=True, **({} if exact else {"atol": 0.1, "rtol": 0.05}))
    elif name == "classifier":  # (N, C) probabilities
        assert got.dtype == torch.float32 and got.shape == (batch["inputs"].shape[0], model.num_classes)
        torch.testing.assert_close(got.sum(-1), torch.ones(got.shape[0]))
        torch.testing.assert_close(got, want, **({} if exact else {"atol": 0.05, "rtol": 0.05}))
    elif name == "tagger":  # tags with padding marked, probabilities, mask
        assert set(got) == {"tags", "probs", "mask"}
        assert torch.equal(got["mask"], batch["mask"])
        assert bool((got["tags"][~batch["mask"]] == model.pad_id).all())
        assert bool((got["probs"][~batch["mask"]] == 0).all())
        torch.testing.assert_close(got["probs"].sum(-1)[batch["mask"]], torch.ones(int(batch["mask"].sum())))
        if exact:
            assert torch.equal(got["tags"], want)
    elif name == "seq2seq":  # decoded ids, one list per row
        assert isinstance(got, list) and len(got) == batch["src"].shape[0]
        assert all(isinstance(i, int) for row in got for i in row)
        if exact:
            assert got == want
    elif name == "custom":  # the default predict_step: one TBPTTStep.outputs per chunk, in order
        chunks = math.ceil(batch[0].shape[1] / model.tbptt_steps)
        assert isinstance(got, list) and len(got) == chunks
        torch.testing.assert_close(torch.cat(got, 1), want, **({} if exact else {"atol": 0.05, "rtol": 0.05}))
    else:
        raise AssertionError(name)


# ---------------------------------------------------------------------------------------------- every option
V = 12
OPTION_SETS: list[tuple[str, dict[str, Any]]] = [
    ("lm", {}),
    ("lm", {"output": "adaptive", "adaptive_cutoffs": [4, 8]}),
    ("lm", {"output": "sampled", "num_sampled": 4}),
    ("lm", {"output": "sampled", "sampler": "unigram", "sampler_counts": torch.arange(1.0, V + 1), "num_sampled": 4}),
    ("lm", {"output": "sampled", "sampler": "uniform", "num_sampled": 4}),
    ("lm", {"embedding_dim": 8, "hidden_size": 8, "tie_weights": True, "embedding_dropout": 0.1}),
    ("lm", {"cell": "gru", "num_layers": 2, "layer_dropout": 0.2, "recurrent_dropout": 0.3,
            "recurrent_dropout_mode": "state", "variable_bptt": True, "tbptt_steps": 4, "pad_id": 0}),
    ("lm", {"cell": "rnn", "recurrent_dropout": 0.3, "optimizer": "sgd", "weight_decay": 0.1}),
    ("classifier", {"summary": "last", "bidirectional": True}),
    ("classifier", {"summary": "attention", "tbptt_steps": 2, "loss_at": "every_chunk"}),
    ("classifier", {"summary": "max", "vocab_size": None, "input_size": 3, "cell": "gru", "dropout": 0.2}),
    ("tagger", {"bidirectional": True, "num_layers": 2}),
    ("tagger", {"carry_state": True, "tbptt_steps": 3, "pad_id": -1, "cell": "rnn"}),
    ("tagger", {"vocab_size": None, "input_size": 3, "recurrent_dropout": 0.2, "recurrent_dropout_mode": "state"}),
    ("seq2seq", {}),
    ("seq2seq", {"attention": "luong_dot", "tie_weights": True, "embedding_dim": 8, "bidirectional": False}),
    ("seq2seq", {"attention": "luong_general", "bridge": "zeros", "decoder_num_layers": 2, "cell": "gru"}),
    ("seq2seq", {"attention": "none", "src_vocab": "vocab", "tgt_vocab": "vocab", "beam_size": 2}),
]


def _build(name: str, options: dict[str, Any]) -> L.LightningModule:
    torch.manual_seed(0)
    options = dict(options)
    if name == "lm":
        return RNNLanguageModel(V, **with_encoder({"embedding_dim": 6, "hidden_size": 8, **options}))
    if name in ("classifier", "tagger"):
        cls = RNNClassifier if name == "classifier" else RNNTagger
        return cls(3, **with_encoder({"vocab_size": V, "embedding_dim": 4, "hidden_size": 8, **options}))
    from lightning_rnn.data import CharVocab

    vocab = CharVocab.build("abcdefghi")
    for key in ("src_vocab", "tgt_vocab"):
        options[key] = vocab if options.get(key) == "vocab" else V
    return Seq2SeqAttention(options.pop("src_vocab"), options.pop("tgt_vocab"),
                            **with_encoder({"embedding_dim": 6, "hidden_size": 8, **options},
                                           RNNConfig(bidirectional=True)))


def _outputs(name: str, model: L.LightningModule) -> list[Tensor]:
    g = torch.Generator().manual_seed(1)
    model.eval()
    with torch.no_grad():
        if name == "seq2seq":
            size = model.model.encoder.vocab_size
            src = torch.randint(3, size, (2, 5), generator=g)
            lengths = torch.tensor([5, 3])
            tgt = torch.randint(3, size, (2, 4), generator=g)
            return [model(src, lengths, tgt), model.generate(src, lengths, max_len=6).tokens]
        if model.hparams.get("input_size"):
            x = torch.randn(2, 6, 3, generator=g)
        else:
            x = torch.randint(0, V, (2, 6), generator=g)
        out, state = model(x)
        return [out, *(state if isinstance(state, tuple) else [state] if isinstance(state, Tensor) else [])]


@pytest.mark.parametrize(("name", "options"), OPTION_SETS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(OPTION_SETS)])
def test_checkpoint_round_trips_every_option(name: str, options: dict[str, Any], tmp_path: Path) -> None:
    model = _build(name, options)
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": L.__version__,
    }
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "model.ckpt")
    loaded = type(model).load_from_checkpoint(tmp_path / "model.ckpt")
    assert dict(loaded.hparams).keys() == dict(model.hparams).keys()
    for a, b in zip(_outputs(name, model), _outputs(name, loaded)):
        assert torch.equal(a, b)
    # the sampled softmax of a reloaded model draws from the same distribution
    if getattr(model, "sampler", None) is not None:
        ids = torch.arange(V)
        torch.testing.assert_close(loaded.sampler.log_q(ids), model.sampler.log_q(ids), rtol=0, atol=0)


class _UserLM(RNNLanguageModel):
    """A user's subclass whose own ``__init__`` takes the encoder (Lightning records the outermost init's locals)."""

    def __init__(self, vocab_size: int = V, encoder: RNNConfig = RNNConfig(cell="gru", hidden_size=6)) -> None:
        super().__init__(vocab_size, 4, encoder)


def test_subclass_passing_its_own_rnn_config_saves_a_plain_dict(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = RNNConfig(cell="rnn", hidden_size=5, num_layers=2, zoneout=0.1)
    model = _UserLM(encoder=encoder)
    assert model.hparams["encoder"] == encoder.to_dict()
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    batches = [(torch.randint(0, V, (2, 6)), torch.randint(0, V, (2, 6)))]
    trainer.fit(model, torch.utils.data.DataLoader(batches, batch_size=None))
    trainer.save_checkpoint(tmp_path / "user.ckpt")
    assert torch.load(tmp_path / "user.ckpt", weights_only=True)["hyper_parameters"]["encoder"]["cell"] == "rnn"
    loaded = _UserLM.load_from_checkpoint(tmp_path / "user.ckpt", weights_only=True)
    assert RNNConfig.coerce(loaded.hparams["encoder"]) == encoder
    for a, b in zip(_outputs("lm", model), _outputs("lm", loaded)):
        assert torch.equal(a, b)


class _UserClassifier(RNNClassifier):
    def __init__(self, encoder: RNNConfig = RNNConfig(hidden_size=6)) -> None:
        super().__init__(3, V, None, 4, encoder)


class _UserTagger(RNNTagger):
    def __init__(self, encoder: RNNConfig = RNNConfig(hidden_size=6)) -> None:
        super().__init__(3, V, None, 4, encoder)


class _UserSeq2Seq(Seq2SeqAttention):
    def __init__(self, encoder: RNNConfig = RNNConfig(hidden_size=6, bidirectional=True)) -> None:
        super().__init__(V, V, 6, encoder)


@pytest.mark.parametrize(("name", "cls"), [("classifier", _UserClassifier), ("tagger", _UserTagger),
                                           ("seq2seq", _UserSeq2Seq)])
def test_other_modules_subclass_passing_its_own_rnn_config_saves_a_plain_dict(name: str, cls: type,
                                                                               tmp_path: Path) -> None:
    """As above for the other shipped modules: the checkpoint Lightning writes from ``hparams`` loads with
    ``weights_only=True`` and rebuilds the subclass's own encoder."""
    torch.manual_seed(0)
    encoder = RNNConfig(cell="gru", hidden_size=5, num_layers=2, bidirectional=name == "seq2seq", zoneout=0.1)
    model = cls(encoder=encoder)
    assert model.hparams["encoder"] == encoder.to_dict()
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                  "pytorch-lightning_version": L.__version__}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "user.ckpt")
    loaded = cls.load_from_checkpoint(tmp_path / "user.ckpt", weights_only=True)
    assert RNNConfig.coerce(loaded.hparams["encoder"]) == encoder
    for a, b in zip(_outputs(name, model), _outputs(name, loaded)):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------- one API
SHIPPED = (RNNLanguageModel, RNNClassifier, RNNTagger, Seq2SeqAttention)


@pytest.mark.parametrize("cls", SHIPPED, ids=lambda c: c.__name__)
def test_one_constructor_shape_and_names(cls: type) -> None:
    import inspect

    params = inspect.signature(cls).parameters
    positional = [n for n, p in params.items() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    # (<task sizes>, embedding_dim, encoder, *, options): the recurrent stack is one RNNConfig
    assert positional[-2:] == ["embedding_dim", "encoder"]
    assert params["encoder"].annotation in ("RNNConfig", RNNConfig) and isinstance(params["encoder"].default, RNNConfig)
    assert not {"hidden_size", "num_layers", "cell", "bidirectional", "input_dropout", "layer_dropout",
                "output_dropout", "recurrent_dropout", "recurrent_dropout_mode", "zoneout"} & set(params)
    assert {"optimizer", "lr", "weight_decay"} <= set(params)
    assert not {"ignore_index", "tie_embeddings", "embedding_size"} & set(params)
    if cls is not RNNClassifier:  # the classifier has no per-step targets, hence no padding id
        assert "pad_id" in params
    if cls in (RNNLanguageModel, Seq2SeqAttention):
        assert "tie_weights" in params


@pytest.mark.parametrize("cls", (RNNLanguageModel, RNNClassifier, RNNTagger), ids=lambda c: c.__name__)
def test_recurrent_forward_takes_and_returns_state(cls: type) -> None:
    torch.manual_seed(0)
    encoder = RNNConfig(hidden_size=6)
    model = cls(V, embedding_dim=4, encoder=encoder) if cls is RNNLanguageModel else cls(3, V, None, 4, encoder)
    model.eval()
    x = torch.randint(0, V, (2, 8))
    with torch.no_grad():
        whole, _ = model(x)
        _, state = model(x[:, :5])
        rest, _ = model(x[:, 5:], state)
    # the state returned by the first call continues the sequence exactly
    torch.testing.assert_close(rest, whole if cls is RNNClassifier else whole[:, 5:])


@pytest.mark.parametrize("cls", [RNNLanguageModel, RNNClassifier, RNNTagger])
def test_engine_options_reach_the_engine_from_every_shipped_constructor(cls):
    """The TBPTT engine's options are constructor keywords of every shipped TBPTTModule (so configs can set
    them), saved as hyper-parameters, and land on the engine."""
    sizes = {RNNLanguageModel: {"vocab_size": 11}, RNNClassifier: {"num_classes": 3, "vocab_size": 11},
             RNNTagger: {"num_classes": 3, "vocab_size": 11}}[cls]
    model = cls(**sizes, lr_scheduler_step="optimizer_step", max_consecutive_skips=3, nonfinite_inputs="skip")
    assert (model.lr_scheduler_step, model.max_consecutive_skips, model.nonfinite_inputs) == (
        "optimizer_step", 3, "skip")
    assert model.hparams["max_consecutive_skips"] == 3
    with pytest.raises(ValueError, match="lr_scheduler_step"):
        cls(**sizes, lr_scheduler_step="epoch")
