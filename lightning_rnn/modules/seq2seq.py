"""Seq2SeqAttention: an attention encoder-decoder LightningModule (Bahdanau / Luong / no attention)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.text import BLEUScore, CharErrorRate

from lightning_rnn._validation import check_choice, check_float, check_int, check_probability
from lightning_rnn.data.vocab import Vocab
from lightning_rnn.modules._hparams import plain_configs
from lightning_rnn.modules._legacy import check_encoder_hparams
from lightning_rnn.modules._optim import build_optimizer, check_optimizer_args
from lightning_rnn.nn.rnn_config import RNNConfig
from lightning_rnn.nn.search import LENGTH_PENALTIES, SearchOutput
from lightning_rnn.nn.seq2seq import AttentionDecoder, Bridge, EncoderDecoder, Seq2SeqEncoder

__all__ = ["Seq2SeqAttention", "plot_attention", "strip_hypotheses"]

#: the recurrent stack when ``encoder`` is not given (or is None)
DEFAULT_ENCODER = RNNConfig(bidirectional=True)

BATCH_KEYS = ("src", "src_lengths", "tgt_in", "tgt_out")


def _vocab_size(vocab: Any, name: str) -> int:
    if isinstance(vocab, bool | str) or not (isinstance(vocab, int) or hasattr(vocab, "__len__")):
        raise TypeError(f"Expected {name} to be an int or a vocabulary with len(), got {vocab!r}")
    size = vocab if isinstance(vocab, int) else len(vocab)
    if size < 1:
        raise ValueError(f"Expected {name} >= 1, got {size}")
    return size


def _saved_vocab(vocab: Any) -> Any:
    """A lightning-rnn vocabulary as its plain dict (``Vocab.to_dict``): checkpoints stay loadable with
    ``torch.load(weights_only=True)``, which Lightning uses; sizes and other objects as they are."""
    return vocab.to_dict() if isinstance(vocab, Vocab) else vocab


def _vocab_object(vocab: Any) -> Any:
    """Inverse of :func:`_saved_vocab`: a saved dict back to the vocabulary."""
    return Vocab.from_dict(vocab) if isinstance(vocab, Mapping) else vocab


def unpack_batch(batch: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(src, src_lengths, tgt_in, tgt_out)`` from a dict with those keys or a 4-tuple, shapes checked."""
    if isinstance(batch, Mapping):
        missing = [k for k in BATCH_KEYS if k not in batch]
        if missing:
            raise ValueError(f"Expected a dict batch with keys {list(BATCH_KEYS)}, got keys {sorted(batch)}")
        src, lengths, tgt_in, tgt_out = (batch[k] for k in BATCH_KEYS)
    elif isinstance(batch, (list, tuple)) and len(batch) == 4:
        src, lengths, tgt_in, tgt_out = batch
    else:
        raise TypeError(
            f"Expected a batch (src, src_lengths, tgt_in, tgt_out) or a dict with keys {list(BATCH_KEYS)}, "
            f"got {type(batch).__name__}"
        )
    if tgt_in.shape != tgt_out.shape:
        raise ValueError(f"Expected tgt_out of the shape of tgt_in {list(tgt_in.shape)}, got {list(tgt_out.shape)}")
    if tgt_in.dim() != 2 or src.dim() != 2 or src.size(0) != tgt_in.size(0):
        raise ValueError(
            f"Expected src (N, S) and tgt (N, T) with the same batch size, got {list(src.shape)} and {list(tgt_in.shape)}"
        )
    return src, lengths, tgt_in, tgt_out


def strip_hypotheses(tokens: Tensor, lengths: Tensor, eos_id: int) -> list[list[int]]:
    """Generated ids (N, T) + lengths (N,) -> lists of ids without the trailing EOS (and padding)."""
    out = []
    for row, n in zip(tokens.tolist(), lengths.tolist()):
        row = row[:n]
        if row and row[-1] == eos_id:
            row = row[:-1]
        out.append(row)
    return out


def plot_attention(weights: Tensor, src_tokens: Sequence[str], tgt_tokens: Sequence[str], path: str | None = None,
                   title: str | None = None):
    """Heatmap of attention weights (T, S) with target tokens on the y axis and source tokens on the x axis.

    Returns a ``matplotlib.figure.Figure`` with its own Agg canvas (no pyplot state, the process's matplotlib
    backend untouched), also saved to ``path`` as PNG when given.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    w = weights.detach().float().cpu()[: len(tgt_tokens), : len(src_tokens)]
    fig = Figure(figsize=(1.0 + 0.3 * max(len(src_tokens), 4), 1.0 + 0.3 * max(len(tgt_tokens), 4)))
    FigureCanvasAgg(fig)  # a canvas of its own: no pyplot, no global backend change
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(w.numpy(), cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(src_tokens)), list(src_tokens), rotation=90, fontsize=7)
    ax.set_yticks(range(len(tgt_tokens)), list(tgt_tokens), fontsize=7)
    ax.set_xlabel("source")
    ax.set_ylabel("generated")
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    if path is not None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fig.savefig(path, dpi=100)
    return fig


class Seq2SeqAttention(L.LightningModule):
    """Attention encoder-decoder (Bahdanau et al. 2014; Luong et al. 2015) as a LightningModule.

    Encoder :class:`~lightning_rnn.nn.seq2seq.Seq2SeqEncoder` (embedding -> ``RNNStack`` with every
    step-tied dropout, packed over the true lengths) -> :class:`~lightning_rnn.nn.seq2seq.Bridge` ->
    :class:`~lightning_rnn.nn.seq2seq.AttentionDecoder`; plain automatic optimization (``optimizer``).
    ``trainer.predict`` decodes every source (:meth:`predict_step`: token ids without BOS / EOS / padding).

    Batches (see :func:`lightning_rnn.data.seq2seq.seq2seq_collate`): a dict with keys ``src`` (N, S),
    ``src_lengths`` (N,), ``tgt_in`` (N, T) = BOS + target, ``tgt_out`` (N, T) = target + EOS (both
    padded with ``pad_id``), or the same four tensors as a tuple in that order.

    Logged: ``train/loss``, ``train/teacher_forcing``; ``val/loss`` (teacher-forced cross-entropy),
    ``val/token_acc`` (teacher-forced), and on greedy-decoded outputs ``val/exact_match``, ``val/bleu``
    (torchmetrics ``BLEUScore`` on space-joined token strings) and ``val/cer`` (``CharErrorRate`` on
    detokenized strings); the same under ``test/``. Attention heatmaps of the first
    ``num_attention_maps`` validation examples go to W&B (``WandbLogger.log_image``), TensorBoard
    (``add_figure``), or otherwise to ``<trainer.log_dir>/attention/*.png``.

    Args:
        src_vocab / tgt_vocab: vocabulary sizes, or vocabulary objects (``len()``, ``itos``, optional
            ``join``) used to turn ids into strings for BLEU/CER and heatmap labels. A lightning-rnn
            :class:`~lightning_rnn.data.Vocab` is saved in the hyper-parameters as its ``to_dict()`` (also
            accepted here), so checkpoints load with ``weights_only=True``; another vocabulary object is
            pickled into the checkpoint, which then needs ``load_from_checkpoint(path, weights_only=False)``.
        embedding_dim: E (encoder and decoder).
        encoder: the encoder's recurrent stack (:class:`~lightning_rnn.nn.RNNConfig`: cell, hidden size H per
            direction, layers, bidirectional, step-tied dropout, ...) or a dict of its fields; default
            ``RNNConfig(bidirectional=True)`` (one bidirectional LSTM layer of 128 per direction). Its ``cell``
            is the decoder's cell too. Saved in ``hparams`` as a dict.
        decoder_hidden_size / decoder_num_layers: default to the encoder's ``hidden_size`` / ``num_layers``
            (``luong_dot``: the decoder size defaults to the encoder output size ``D*hidden_size``).
        attention: ``"bahdanau"`` | ``"luong_dot"`` | ``"luong_general"`` | ``"luong_concat"`` | ``"none"``.
        ordering: override the attention's ordering (``"bahdanau"`` | ``"luong"``).
        input_feeding: Luong input feeding.
        bridge: ``"projection"`` | ``"zeros"``.
        tie_weights: tie the decoder's output projection to its embedding.
        decoder_dropout: decoder dropout (embeddings, between layers, output).
        teacher_forcing: probability of feeding the gold token while training; with
            ``teacher_forcing_end`` and ``teacher_forcing_steps`` it moves linearly from ``teacher_forcing``
            to ``teacher_forcing_end`` over that many optimizer steps (scheduled sampling), then stays.
        label_smoothing: of the training cross-entropy.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``; override ``configure_optimizers`` for anything else.
        lr / weight_decay: optimizer settings.
        beam_size / max_decode_len / max_decode_ratio / length_penalty / length_penalty_type: defaults of
            :meth:`generate` (validation metrics always decode greedily).
        pad_id / bos_id / eos_id: special ids (the same in source and target vocabularies). ``pad_id`` pads
            ``src``, ``tgt_in`` and ``tgt_out``: targets equal to it carry no loss and are not counted by the
            metrics, and its embedding rows are the embeddings' ``padding_idx``.
        num_attention_maps: heatmaps logged per validation epoch (0 = none).

    Example::

        >>> import torch
        >>> from lightning_rnn import RNNConfig, Seq2SeqAttention
        >>> model = Seq2SeqAttention(20, 20, embedding_dim=8, encoder=RNNConfig(hidden_size=16, bidirectional=True))
        >>> src, lengths = torch.tensor([[5, 6, 7], [8, 9, 0]]), torch.tensor([3, 2])
        >>> logits = model(src, lengths, torch.tensor([[1, 7, 6, 5], [1, 9, 8, 0]]))
        >>> tuple(logits.shape)
        (2, 4, 20)
        >>> out = model.generate(src, lengths, beam_size=2, max_len=5)
        >>> tuple(out.tokens.shape[:2])
        (2, 1)
    """

    def __init__(
        self,
        src_vocab: Any,
        tgt_vocab: Any,
        embedding_dim: int = 64,
        encoder: RNNConfig = DEFAULT_ENCODER,
        *,
        decoder_hidden_size: int | None = None,
        decoder_num_layers: int | None = None,
        attention: str = "bahdanau",
        ordering: str | None = None,
        input_feeding: bool = True,
        bridge: str = "projection",
        tie_weights: bool = False,
        decoder_dropout: float = 0.0,
        teacher_forcing: float = 1.0,
        teacher_forcing_end: float | None = None,
        teacher_forcing_steps: int = 0,
        label_smoothing: float = 0.0,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        beam_size: int = 1,
        max_decode_len: int = 100,
        max_decode_ratio: float | None = None,
        length_penalty: float = 0.0,
        length_penalty_type: str = "gnmt",
        pad_id: int = 0,
        bos_id: int = 1,
        eos_id: int = 2,
        num_attention_maps: int = 2,
    ) -> None:
        super().__init__()
        check_optimizer_args(optimizer, lr, weight_decay)
        src_vocab, tgt_vocab = _saved_vocab(src_vocab), _saved_vocab(tgt_vocab)
        config = RNNConfig.coerce(encoder, DEFAULT_ENCODER)  # None: this module's default
        encoder = config.to_dict()  # type: ignore[assignment]  # saved as a plain dict: weights_only checkpoints
        self.save_hyperparameters()
        plain_configs(self)  # a user's subclass taking its own RNNConfig: still a plain dict
        cell, hidden_size, num_layers = config.cell, config.hidden_size, config.num_layers
        bidirectional = config.bidirectional
        src_vocab, tgt_vocab = _vocab_object(src_vocab), _vocab_object(tgt_vocab)
        self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab
        src_size, tgt_size = _vocab_size(src_vocab, "src_vocab"), _vocab_size(tgt_vocab, "tgt_vocab")
        check_float("teacher_forcing", teacher_forcing, min=0.0, max=1.0)
        check_float("teacher_forcing_end", teacher_forcing_end, min=0.0, max=1.0, allow_none=True)
        check_int("teacher_forcing_steps", teacher_forcing_steps, min=0)
        check_probability("label_smoothing", label_smoothing)
        check_probability("decoder_dropout", decoder_dropout)
        check_int("decoder_hidden_size", decoder_hidden_size, min=1, allow_none=True)
        check_int("decoder_num_layers", decoder_num_layers, min=1, allow_none=True)
        check_int("beam_size", beam_size, min=1)
        check_int("max_decode_len", max_decode_len, min=1)
        check_float("max_decode_ratio", max_decode_ratio, min=0.0, min_inclusive=False, allow_none=True)
        check_float("length_penalty", length_penalty)
        check_choice("length_penalty_type", length_penalty_type, LENGTH_PENALTIES)
        check_int("num_attention_maps", num_attention_maps, min=0)
        for name, i in (("pad_id", pad_id), ("bos_id", bos_id), ("eos_id", eos_id)):
            check_int(name, i)
            if not 0 <= i < tgt_size:
                raise ValueError(f"Expected {name} in [0, {tgt_size}) (the target vocab size), got {i}")
        if pad_id == eos_id:
            raise ValueError(f"Expected pad_id different from eos_id (the loss ignores pad_id: EOS would never be "
                             f"learned), got pad_id=eos_id={pad_id}")
        dec_hidden = decoder_hidden_size or hidden_size
        if attention == "luong_dot" and decoder_hidden_size is None:
            dec_hidden = config.output_size  # dot scores need query size == key size
        dec_layers = decoder_num_layers or num_layers
        rnn_options = {k: v for k, v in config.to_dict().items() if k not in ("hidden_size", "num_layers")}
        seq_encoder = Seq2SeqEncoder(
            src_size, embedding_dim, hidden_size, num_layers, padding_idx=pad_id if pad_id < src_size else None,
            **rnn_options,
        )
        decoder = AttentionDecoder(
            tgt_size, embedding_dim, dec_hidden, seq_encoder.output_size, dec_layers, cell=cell, attention=attention,
            ordering=ordering, input_feeding=input_feeding, dropout=decoder_dropout,
            tie_weights=tie_weights, padding_idx=pad_id,
        )
        bridge_module = Bridge(cell, hidden_size, num_layers, bidirectional, cell, dec_hidden, dec_layers, mode=bridge)
        self.model = EncoderDecoder(seq_encoder, decoder, bridge_module, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)
        for stage in ("val", "test"):
            setattr(self, f"{stage}_loss", MeanMetric())
            setattr(self, f"{stage}_token_acc", MeanMetric())
            setattr(self, f"{stage}_exact_match", MeanMetric())
            setattr(self, f"{stage}_bleu", BLEUScore(n_gram=4))
            setattr(self, f"{stage}_cer", CharErrorRate())

    # ------------------------------------------------------------------ model
    def forward(
        self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor, teacher_forcing: float = 1.0,
        return_attention: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor | None]:
        """Teacher-forced logits (N, T, V_tgt); with ``return_attention`` also the weights (N, T, S)."""
        logits, attention = self.model(src, src_lengths, tgt_in, teacher_forcing)
        return (logits, attention) if return_attention else logits

    def generate(
        self,
        src: Tensor,
        src_lengths: Tensor,
        *,
        beam_size: int | None = None,
        max_len: int | None = None,
        max_ratio: float | None = None,
        n_best: int = 1,
        return_attention: bool = False,
    ) -> SearchOutput:
        """Greedy (``beam_size=1``) or beam search; defaults from the constructor.

        Returns a :class:`~lightning_rnn.nn.search.SearchOutput`: ``tokens`` (N, T) for greedy decoding,
        (N, n_best, T) for beam search, ``scores``, ``lengths`` (EOS counted) and, on request, ``attention``.
        """
        hp = self.hparams
        return self.model.generate(
            src, src_lengths, beam_size=hp.beam_size if beam_size is None else beam_size,
            max_len=hp.max_decode_len if max_len is None else max_len,
            max_ratio=hp.max_decode_ratio if max_ratio is None else max_ratio, n_best=n_best,
            alpha=hp.length_penalty, length_penalty_type=hp.length_penalty_type, return_attention=return_attention,
        )

    def teacher_forcing_ratio(self, step: int | None = None) -> float:
        """Teacher-forcing probability at optimizer step ``step`` (default: the current global step)."""
        hp = self.hparams
        if hp.teacher_forcing_end is None or hp.teacher_forcing_steps <= 0:
            return float(hp.teacher_forcing)
        step = self.global_step if step is None else step
        frac = min(max(step / hp.teacher_forcing_steps, 0.0), 1.0)
        return float(hp.teacher_forcing + frac * (hp.teacher_forcing_end - hp.teacher_forcing))

    def _loss(self, logits: Tensor, tgt_out: Tensor, label_smoothing: float = 0.0) -> Tensor:
        return F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), tgt_out.reshape(-1), ignore_index=self.hparams.pad_id,
            label_smoothing=label_smoothing,
        )

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        src, lengths, tgt_in, tgt_out = unpack_batch(batch)
        ratio = self.teacher_forcing_ratio()
        logits = self(src, lengths, tgt_in, teacher_forcing=ratio)
        loss = self._loss(logits, tgt_out, self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, batch_size=src.size(0))
        self.log("train/teacher_forcing", ratio, batch_size=src.size(0))
        return loss

    def _reset_metrics(self, stage: str) -> None:
        # a `trainer.validate()` before `fit()` leaves the metric states as inference tensors, which the
        # next evaluation loop may not update in place: give every state a normal tensor again
        with torch.inference_mode(False):
            for name in ("loss", "token_acc", "exact_match", "bleu", "cer"):
                getattr(self, f"{stage}_{name}").reset()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_encoder_hparams(type(self).__name__, checkpoint)

    def on_validation_epoch_start(self) -> None:
        self._reset_metrics("val")

    def on_test_epoch_start(self) -> None:
        self._reset_metrics("test")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> list[list[int]]:
        """The decoded target ids of every source of ``batch``: one list per row, without BOS, EOS and padding.

        Decoding is :meth:`generate` with the constructor's defaults (``beam_size``: the best hypothesis).
        Batches: a dict with ``"src"`` and ``"src_lengths"`` (other keys ignored) or a tuple starting with them.
        """
        src, lengths = (batch["src"], batch["src_lengths"]) if isinstance(batch, Mapping) else batch[:2]
        out = self.generate(src, lengths)
        tokens, lens = (out.tokens, out.lengths) if out.tokens.dim() == 2 else (out.tokens[:, 0], out.lengths[:, 0])
        return strip_hypotheses(tokens, lens, self.hparams.eos_id)

    def _evaluate(self, batch: Any, batch_idx: int, stage: str) -> None:
        src, lengths, tgt_in, tgt_out = unpack_batch(batch)
        n = src.size(0)
        logits = self(src, lengths, tgt_in)
        real = tgt_out != self.hparams.pad_id
        getattr(self, f"{stage}_loss").update(self._loss(logits, tgt_out), weight=int(real.sum()))
        correct = (logits.argmax(-1) == tgt_out) & real
        getattr(self, f"{stage}_token_acc").update(correct.sum() / real.sum(), weight=int(real.sum()))

        max_len = int(real.sum(1).max()) + 10
        out = self.model.generate(src, lengths, beam_size=1, max_len=max_len, return_attention=True)
        hyps = strip_hypotheses(out.tokens, out.lengths, self.hparams.eos_id)
        refs = strip_hypotheses(tgt_out, real.sum(1), self.hparams.eos_id)
        exact = torch.tensor([h == r for h, r in zip(hyps, refs)], dtype=torch.float, device=self.device)
        getattr(self, f"{stage}_exact_match").update(exact)
        getattr(self, f"{stage}_bleu").update([self._words(h) for h in hyps], [[self._words(r)] for r in refs])
        getattr(self, f"{stage}_cer").update([self._text(h) for h in hyps], [self._text(r) for r in refs])
        for name in ("loss", "token_acc", "exact_match", "bleu", "cer"):
            self.log(f"{stage}/{name}", getattr(self, f"{stage}_{name}"), on_epoch=True, batch_size=n,
                     prog_bar=name in ("loss", "exact_match"))
        if stage == "val" and batch_idx == 0 and not self.trainer.sanity_checking and self.hparams.num_attention_maps:
            self._log_attention_maps(src, lengths, out, hyps)

    # ------------------------------------------------------------------ strings and images
    def _itos(self, vocab: Any, ids: Sequence[int]) -> list[str]:
        itos = getattr(vocab, "itos", None)
        return [str(itos[i]) if itos is not None else str(i) for i in ids]

    def _words(self, ids: Sequence[int]) -> str:
        return " ".join(self._itos(self.tgt_vocab, ids))

    def _text(self, ids: Sequence[int]) -> str:
        join = getattr(self.tgt_vocab, "join", None)
        tokens = self._itos(self.tgt_vocab, ids)
        return join(tokens) if callable(join) else " ".join(tokens)

    def _log_attention_maps(self, src: Tensor, lengths: Tensor, out: SearchOutput, hyps: list[list[int]]) -> None:
        if out.attention is None:
            return
        folder = os.path.join(self.trainer.log_dir or self.trainer.default_root_dir, "attention")
        self._draw_maps(src, lengths, out, hyps, folder)

    @rank_zero_only
    def _draw_maps(self, src: Tensor, lengths: Tensor, out: SearchOutput, hyps: list[list[int]], folder: str) -> None:
        step = self.global_step
        paths, figs = [], []
        for i in range(min(self.hparams.num_attention_maps, src.size(0))):
            n = int(lengths[i])
            src_tokens = self._itos(self.src_vocab, src[i, :n].tolist())
            gen_len = int(out.lengths[i])
            tgt_tokens = self._itos(self.tgt_vocab, out.tokens[i, :gen_len].tolist())
            path = os.path.join(folder, f"epoch={self.current_epoch}_example={i}.png")
            figs.append(plot_attention(out.attention[i, :gen_len, :n], src_tokens, tgt_tokens, path,
                                       title=f"epoch {self.current_epoch}, example {i}"))
            paths.append(path)
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="val/attention", images=paths, step=step)
            elif isinstance(logger, TensorBoardLogger):
                for i, fig in enumerate(figs):
                    logger.experiment.add_figure(f"val/attention_{i}", fig, global_step=step, close=False)

    def configure_callbacks(self) -> list[Any]:
        from lightning_rnn.callbacks.resume import ExactResume  # RNG restored when fit resumes

        return [ExactResume()]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        return build_optimizer(self.parameters(), hp.optimizer, hp.lr, hp.weight_decay)
