import glob
import os

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader
from torchmetrics.functional.text import bleu_score, char_error_rate

from lightning_rnn import RNNConfig, Seq2SeqAttention
from lightning_rnn.data.seq2seq import ReversalDataset, Seq2SeqCollate, seq2seq_collate
from lightning_rnn.modules.seq2seq import strip_hypotheses


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: thread hand-offs cost more than they save
    yield
    torch.set_num_threads(n)


def _trainer(tmp_path, **kw):
    kw.setdefault("logger", False)
    return L.Trainer(default_root_dir=tmp_path, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, accelerator="cpu", devices=1, **kw)


def test_short_reversal_training_learns(tmp_path):
    torch.manual_seed(0)
    train = ReversalDataset(1600, num_symbols=10, min_len=2, max_len=7, seed=1)
    val = ReversalDataset(150, num_symbols=10, min_len=2, max_len=7, seed=2)
    collate = Seq2SeqCollate()
    model = Seq2SeqAttention(train.vocab_size, train.vocab_size, encoder=RNNConfig(bidirectional=True, hidden_size=32), embedding_dim=16, lr=1e-2, num_attention_maps=1)
    val_loader = DataLoader(val, batch_size=150, collate_fn=collate)
    trainer = _trainer(tmp_path, max_epochs=2, logger=CSVLogger(tmp_path))
    before = trainer.validate(model, val_loader, verbose=False)[0]
    trainer.fit(model, DataLoader(train, batch_size=32, shuffle=True, collate_fn=collate), val_loader)
    after = trainer.validate(model, val_loader, verbose=False)[0]
    assert set(after) >= {"val/loss", "val/token_acc", "val/exact_match", "val/bleu", "val/cer"}
    assert after["val/loss"] < 0.5 * before["val/loss"]
    # chance of guessing a whole reversed sequence of length >= 2 over 10 symbols is <= 1 %
    assert after["val/exact_match"] > 0.5 > before["val/exact_match"]
    assert after["val/bleu"] > before["val/bleu"] and after["val/cer"] < before["val/cer"]

    # the logged metrics equal a recomputation from greedy decoding
    batch = next(iter(val_loader))
    out = model.generate(batch["src"], batch["src_lengths"], beam_size=1, max_len=30)
    real = batch["tgt_out"] != 0
    hyps = strip_hypotheses(out.tokens, out.lengths, 2)
    refs = strip_hypotheses(batch["tgt_out"], real.sum(1), 2)
    exact = sum(h == r for h, r in zip(hyps, refs)) / len(refs)
    assert after["val/exact_match"] == pytest.approx(exact, abs=1e-6)
    words = lambda ids: " ".join(map(str, ids))  # noqa: E731
    bleu = bleu_score([words(h) for h in hyps], [[words(r)] for r in refs])
    assert after["val/bleu"] == pytest.approx(float(bleu), abs=1e-5)
    cer = char_error_rate([words(h) for h in hyps], [words(r) for r in refs])
    assert after["val/cer"] == pytest.approx(float(cer), abs=1e-5)
    # attention heatmaps went to the run directory as PNGs
    assert glob.glob(os.path.join(trainer.log_dir, "attention", "*.png"))


def test_teacher_forcing_schedule_is_linear():
    model = Seq2SeqAttention(10, 10, encoder=RNNConfig(bidirectional=True, hidden_size=4), embedding_dim=4, teacher_forcing=1.0, teacher_forcing_end=0.5, teacher_forcing_steps=100)
    assert [model.teacher_forcing_ratio(s) for s in (0, 50, 100, 500)] == [1.0, 0.75, 0.5, 0.5]
    assert Seq2SeqAttention(10, 10, encoder=RNNConfig(bidirectional=True, hidden_size=4), embedding_dim=4, teacher_forcing=0.3).teacher_forcing_ratio(7) == 0.3


def test_dict_and_tuple_batches_and_forward_outputs():
    model = Seq2SeqAttention(12, 12, encoder=RNNConfig(bidirectional=True, hidden_size=8), embedding_dim=8, attention="luong_general").eval()
    b = seq2seq_collate([([3, 4, 5], [5, 4, 3]), ([6], [6])])
    loss_dict = model.training_step(b, 0)
    loss_tuple = model.training_step((b["src"], b["src_lengths"], b["tgt_in"], b["tgt_out"]), 0)
    torch.testing.assert_close(loss_dict, loss_tuple)
    logits, attn = model(b["src"], b["src_lengths"], b["tgt_in"], return_attention=True)
    assert logits.shape == (2, 4, 12) and attn.shape == (2, 4, 3)
    assert attn[1, :, 1:].eq(0).all()
    out = model.generate(b["src"], b["src_lengths"], beam_size=3, n_best=2, max_len=6, return_attention=True)
    dot = Seq2SeqAttention(12, 12, encoder=RNNConfig(bidirectional=True, hidden_size=8), embedding_dim=8, attention="luong_dot")
    assert dot.model.decoder.hidden_size == 16  # = bidirectional encoder output size
    assert dot(b["src"], b["src_lengths"], b["tgt_in"]).shape == (2, 4, 12)
    assert out.tokens.shape[:2] == (2, 2) and (out.scores[:, 0] >= out.scores[:, 1]).all()
    assert out.attention.shape[:2] == (2, 2)


def test_bad_input():
    with pytest.raises(ValueError, match=r"\['bahdanau', 'luong_dot', 'luong_general', 'luong_concat', 'none'\]"):
        Seq2SeqAttention(10, 10, attention="dot")
    with pytest.raises(ValueError, match="Expected beam_size to be an int >= 1, got 0"):
        Seq2SeqAttention(10, 10, beam_size=0)
    with pytest.raises(ValueError, match="Expected max_decode_len to be an int >= 1, got 0"):
        Seq2SeqAttention(10, 10, max_decode_len=0)
    with pytest.raises(ValueError, match=r"eos_id in \[0, 2\)"):
        Seq2SeqAttention(10, 2)
    model = Seq2SeqAttention(10, 10, encoder=RNNConfig(bidirectional=True, hidden_size=4), embedding_dim=4)
    b = seq2seq_collate([([3, 4], [4, 3]), ([5], [5])])
    with pytest.raises(ValueError, match="same batch size"):
        model.training_step((b["src"], b["src_lengths"], b["tgt_in"][:1], b["tgt_out"][:1]), 0)
    with pytest.raises(ValueError, match="keys"):
        model.training_step({"src": b["src"]}, 0)
    with pytest.raises(ValueError, match=r"vocab size 10\), got largest id 14"):
        model(b["src"] + 9, b["src_lengths"], b["tgt_in"])
    with pytest.raises(ValueError, match="Expected max_len to be an int >= 1, got 0"):
        model.generate(b["src"], b["src_lengths"], max_len=0)


def test_attention_maps_go_to_wandb_log_image(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="s2s-test")
    calls = []
    monkeypatch.setattr(logger, "log_image", lambda key, images, step=None, **kw: calls.append((key, images)))
    data = ReversalDataset(16, num_symbols=6, min_len=2, max_len=5, seed=0)
    loader = DataLoader(data, batch_size=8, collate_fn=Seq2SeqCollate())
    model = Seq2SeqAttention(data.vocab_size, data.vocab_size, encoder=RNNConfig(bidirectional=True, hidden_size=4), embedding_dim=4, num_attention_maps=2)
    try:
        _trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=1, logger=logger, num_sanity_val_steps=0).fit(
            model, loader, loader
        )
    finally:
        wandb.finish()
    assert len(calls) == 1 and calls[0][0] == "val/attention"
    assert len(calls[0][1]) == 2 and all(os.path.isfile(p) and p.endswith(".png") for p in calls[0][1])


def test_optimizer_option_and_predict_returns_decoded_ids(tmp_path):
    model = Seq2SeqAttention(12, 12, 8, encoder=RNNConfig(bidirectional=True, hidden_size=8, num_layers=1, cell="gru"), optimizer="sgd", lr=0.5, weight_decay=0.01)
    opt = model.configure_optimizers()
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["lr"] == 0.5 and opt.defaults["weight_decay"] == 0.01
    with pytest.raises(ValueError, match="Expected optimizer in"):
        Seq2SeqAttention(12, 12, optimizer="lbfgs")
    b = seq2seq_collate([([5, 6, 7], [7, 6, 5]), ([8], [8])])
    (got,) = _trainer(tmp_path).predict(model, DataLoader([b], batch_size=None))
    out = model.eval().generate(b["src"], b["src_lengths"])
    assert got == strip_hypotheses(out.tokens, out.lengths, 2)


def test_plot_attention_leaves_the_matplotlib_backend_alone(tmp_path):
    import subprocess
    import sys

    code = (
        "import matplotlib, torch\n"
        "from lightning_rnn.modules.seq2seq import plot_attention\n"
        f"fig = plot_attention(torch.rand(3, 4), list('abcd'), list('xyz'), path={str(tmp_path / 'a.png')!r})\n"
        "print(matplotlib.get_backend(), type(fig).__name__)\n"
    )
    env = {**os.environ, "MPLBACKEND": "svg"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["svg", "Figure"]
    assert (tmp_path / "a.png").stat().st_size > 0
