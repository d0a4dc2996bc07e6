"""RNNClassifier: many-to-one sequence classification on the TBPTT engine."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_rnn._validation import check_token_ids
from lightning_rnn.modules._hparams import plain_configs
from lightning_rnn.modules._recurrent_task import _leaves, _RecurrentTask, no_loss
from lightning_rnn.modules.tbptt import TBPTTStep
from lightning_rnn.nn.pooling import AttentionPooling, length_mask, pool_finalize, pool_update
from lightning_rnn.nn.rnn_config import RNNConfig
from lightning_rnn.nn.state import map_state, select_state_rows

__all__ = ["RNNClassifier"]

#: the recurrent stack when ``encoder`` is not given (or is None)
DEFAULT_ENCODER = RNNConfig()

SUMMARIES = ("last", "mean", "max", "attention")
LOSS_AT = ("end", "every_chunk")


class RNNClassifier(_RecurrentTask):
    """Recurrent sequence classifier (one label per sequence) with exact variable-length handling and TBPTT.

    Input -> (embedding) -> :class:`~lightning_rnn.nn.RNNStack` run packed on the true lengths -> summary ->
    dropout -> linear head -> cross-entropy. Padded steps never touch the result: the encoder runs packed, and
    the summary is either the final state at each row's true last step (``"last"``: the top layer's forward
    state at step ``length-1`` concatenated with its backward state, which started at ``length-1`` and ends
    at step 0), or masked ``"mean"`` / ``"max"`` pooling over the outputs, or additive ``"attention"`` pooling
    over the unpadded outputs.

    **Truncated BPTT** (``tbptt_steps=k``): the sequence is read in chunks of k steps with the state carried
    (and detached) between chunks, one optimizer step per chunk. Rows that have ended before a chunk are not
    run at all: their state (and pooling accumulator) stays as it was, and they add nothing to that chunk's
    loss. With ``loss_at="end"`` a row's loss is computed in the chunk that contains its last real step, so
    the gradient of that loss reaches back only to the start of that chunk, i.e. over the last
    ``((length - 1) mod k) + 1`` steps (between 1 and k steps; ``tbptt_backprop_steps=k2`` extends this to up
    to k2 steps). Earlier chunks only carry the state forward, take no gradient and skip the optimizer step.
    Evidence that sits further back than that must be carried in the state by weights learned from other,
    shorter dependencies — that is what truncation costs a many-to-one task. ``loss_at="every_chunk"`` adds
    the intermediate loss of classifying every still-running row from its summary so far at the end of every
    chunk (so every chunk trains, and earlier evidence is pushed into the state); evaluation metrics always
    use the final prediction. Every summary works under TBPTT: the pooling accumulators (sum and count, running
    max, online-softmax attention) are part of the carried state, detached at chunk boundaries like it.
    Bidirectional encoders cannot be truncated (the backward direction needs the future): an error.

    Logs ``train/loss``, ``val/loss``, ``test/loss`` and per epoch ``{train,val,test}/acc`` and
    ``{train,val,test}/f1`` (torchmetrics multiclass accuracy and macro F1).

    Args:
        num_classes: C >= 2.
        vocab_size: inputs are token ids (N, L) fed to an ``nn.Embedding(vocab_size, embedding_dim)``; or
        input_size: inputs are features (N, L, input_size). Give exactly one.
        embedding_dim: E of the embedding (token-id inputs).
        encoder: the recurrent stack (:class:`~lightning_rnn.nn.RNNConfig`: cell, hidden size, layers,
            bidirectional, step-tied dropout, ...) or a dict of its fields; default ``RNNConfig()`` (one LSTM
            layer of 128). Saved in ``hparams`` as a dict.
        summary: ``"last"``, ``"mean"``, ``"max"`` or ``"attention"``.
        loss_at: ``"end"`` or ``"every_chunk"`` (TBPTT only; identical without TBPTT).
        tbptt_steps, tbptt_backprop_steps, gradient_clip_val, gradient_clip_algorithm, eval_tbptt_steps,
            lr_scheduler_step, max_consecutive_skips, nonfinite_inputs: see :class:`~lightning_rnn.TBPTTModule`
            (``carry_state`` is off: every batch is a set of sequences).
        dropout: dropout on the summary before the head.
        optimizer (``"adam"``, ``"adamw"``, ``"sgd"``), lr, weight_decay.

    Batches: ``{"inputs", "lengths", "labels"}`` as :func:`~lightning_rnn.data.pad_collate` returns (labels
    (N,)), or ``(inputs, labels)`` with no padding.

    Example::

        >>> import torch
        >>> from lightning_rnn import RNNClassifier, RNNConfig
        >>> clf = RNNClassifier(num_classes=3, input_size=4, encoder=RNNConfig(cell="gru", hidden_size=8), summary="mean")
        >>> logits, state = clf(torch.randn(2, 5, 4), lengths=torch.tensor([5, 2]))
        >>> logits.shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        num_classes: int,
        vocab_size: int | None = None,
        input_size: int | None = None,
        embedding_dim: int = 128,
        encoder: RNNConfig = DEFAULT_ENCODER,
        *,
        summary: str = "last",
        loss_at: str = "end",
        tbptt_steps: int | None = None,
        tbptt_backprop_steps: int | None = None,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        eval_tbptt_steps: int | None = None,
        lr_scheduler_step: str = "auto",
        max_consecutive_skips: int = 10,
        nonfinite_inputs: str = "error",
        dropout: float = 0.0,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        if summary not in SUMMARIES:
            raise ValueError(f"Expected summary in {SUMMARIES}, got {summary!r}")
        if loss_at not in LOSS_AT:
            raise ValueError(f"Expected loss_at in {LOSS_AT}, got {loss_at!r}")
        config = RNNConfig.coerce(encoder, DEFAULT_ENCODER)  # None: this module's default
        encoder = config.to_dict()  # type: ignore[assignment]  # saved as a plain dict: weights_only checkpoints
        super().__init__(
            num_classes,
            vocab_size=vocab_size,
            input_size=input_size,
            embedding_dim=embedding_dim,
            encoder=config,
            tbptt_steps=tbptt_steps,
            tbptt_backprop_steps=tbptt_backprop_steps,
            carry_state=False,
            gradient_clip_val=gradient_clip_val,
            gradient_clip_algorithm=gradient_clip_algorithm,
            eval_tbptt_steps=eval_tbptt_steps,
            lr_scheduler_step=lr_scheduler_step,
            max_consecutive_skips=max_consecutive_skips,
            nonfinite_inputs=nonfinite_inputs,
            dropout=dropout,
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
        )
        self.save_hyperparameters()
        plain_configs(self)  # a user's subclass taking its own RNNConfig: still a plain dict
        self.summary = summary
        self.loss_at = loss_at
        self.attention = AttentionPooling(self.rnn.output_size) if summary == "attention" else None

    # ------------------------------------------------------------------ model
    def _chunk_summary(self, inputs: Tensor, lengths: Tensor | None, state: Any) -> tuple[Tensor, Any]:
        """One chunk: the summary so far (N, D*H) of every row and the new carried state (lengths None: all
        rows have every step)."""
        rnn_state = state["rnn"] if state is not None else None
        pool = state["pool"] if state is not None else None
        out, rnn_state, idx = self.encode(inputs, lengths, rnn_state)  # (A, k, D*H)
        if lengths is None:
            lengths = torch.full((inputs.shape[0],), inputs.shape[1], dtype=torch.long, device=out.device)
        if self.summary == "last":
            h = rnn_state[0] if isinstance(rnn_state, tuple) else rnn_state  # (D*layers, N, H)
            d = self.rnn.num_directions
            summary = h[-d:].transpose(0, 1).reshape(h.shape[1], d * h.shape[2])  # (N, D*H): [fwd, bwd]
            return summary, {"rnn": rnn_state, "pool": None}
        if idx.numel():
            mask = length_mask(lengths.to(out.device).index_select(0, idx), out.shape[1])  # (A, k)
            scores = self.attention.scores(out, mask) if self.attention is not None else None
            if pool is None:  # first chunk: every row has at least one step, idx covers all rows
                pool = pool_update(self.summary, None, out, mask, scores)
            else:
                sub = pool_update(self.summary, select_state_rows(pool, idx, dim=0), out, mask, scores)
                leaves = iter(_leaves(sub))
                pool = map_state(lambda old: old.index_copy(0, idx, next(leaves)), pool)
        return pool_finalize(self.summary, pool), {"rnn": rnn_state, "pool": pool}

    def summarize(self, inputs: Tensor, lengths: Tensor | None = None) -> Tensor:
        """The sequence summary fed to the head, over the whole sequence (no chunking).

        Inputs: inputs (N, L) ids or (N, L, F) features; lengths (N,) or None (all L).
        Outputs: (N, D*H).
        """
        summary, _ = self._chunk_summary(inputs, lengths.to(inputs.device) if lengths is not None else None, None)
        return summary

    def forward(self, inputs: Tensor, state: Any = None, lengths: Tensor | None = None) -> tuple[Tensor, Any]:
        """Logits of the sequence read so far, and the state to continue it with.

        Inputs: inputs (N, L) ids or (N, L, F) features; state ``None`` (start of the sequences) or the state
        a previous call returned; lengths (N,) valid steps of each row in this call, in [0, L] (``None``: all
        L; a row with 0 steps keeps its state).
        Outputs: logits (N, C) of each row's summary so far; state ``{"rnn": RNNStack state, "pool": pooling
        accumulators or None}``. Feeding a sequence in pieces with the state carried gives the logits of the
        whole sequence (TBPTT evaluation and :meth:`predict_step` do exactly that).
        """
        if self.embedding is not None:
            check_token_ids("inputs", inputs, self.embedding.num_embeddings)
        # lengths=None: the unpacked full-length path (what torch.export / ONNX trace)
        summary, state = self._chunk_summary(
            inputs, lengths.to(inputs.device) if lengths is not None else None, state
        )  # (N, D*H)
        return self.head(self.dropout(summary)), state  # (N, C)

    def predict_chunk(self, chunk: Any, state: Any) -> tuple[Tensor, Any]:
        return self(chunk["inputs"], state, chunk["lengths"])

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Class probabilities (N, C) float32 of every sequence of ``batch`` (labels, if present, are ignored).

        The batch is read in chunks of ``eval_tbptt_steps`` (else ``tbptt_steps``; else whole) with the state
        carried, exactly as in evaluation; rows run packed on their true ``"lengths"``.
        """
        self._validate_predict(batch)
        logits = super().predict_step(batch, batch_idx)[-1]  # (N, C) after the last chunk
        return torch.softmax(logits.float(), dim=-1)

    def tbptt_step(self, chunk: Any, state: Any) -> TBPTTStep:
        lengths, labels, ends = chunk["lengths"], chunk["labels"], chunk["ends"]
        summary, state = self._chunk_summary(chunk["inputs"], lengths, state)  # (N, D*H)
        rows = (lengths > 0) if self.loss_at == "every_chunk" else ends  # rows whose loss counts here
        rows_idx = torch.nonzero(rows).flatten()
        end_idx = torch.nonzero(ends).flatten()
        if rows_idx.numel():
            logits = self.head(self.dropout(summary.index_select(0, rows_idx)))  # (R, C)
            loss = F.cross_entropy(logits, labels.index_select(0, rows_idx))
            if self.loss_at == "end":  # rows == ends
                outputs = (logits, labels.index_select(0, end_idx))
            else:  # every_chunk: the ended rows are a subset of the rows scored here
                pos = torch.searchsorted(rows_idx, end_idx)
                outputs = (logits.index_select(0, pos), labels.index_select(0, end_idx))
        else:
            loss, outputs = no_loss(summary), None
        self._record_train_outputs(chunk, outputs)
        return TBPTTStep(loss=loss, state=state, weight=rows_idx.numel(), outputs=outputs)

