"""RNNTagger: many-to-many aligned sequence labelling (one label per step) on the TBPTT engine."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_rnn._validation import check_token_ids
from lightning_rnn.modules._hparams import plain_configs
from lightning_rnn.modules._recurrent_task import _RecurrentTask, no_loss
from lightning_rnn.modules.tbptt import TBPTTStep
from lightning_rnn.nn.pooling import length_mask
from lightning_rnn.nn.rnn_config import RNNConfig

__all__ = ["RNNTagger"]

#: the recurrent stack when ``encoder`` is not given (or is None)
DEFAULT_ENCODER = RNNConfig()


class RNNTagger(_RecurrentTask):
    """Recurrent sequence tagger: a label for every step (POS tags, frame-by-frame labels of a recording).

    Input -> (embedding) -> :class:`~lightning_rnn.nn.RNNStack` run packed on the true lengths -> dropout ->
    linear head per step -> token cross-entropy. Steps at or past a row's length and steps labelled
    ``pad_id`` carry no loss and are not counted by the metrics: the loss is exactly the mean over the
    labelled steps of the unpadded rows.

    **Truncated BPTT** (``tbptt_steps=k``, unidirectional only): chunks of k steps with the state carried;
    each chunk's loss is the mean over its labelled steps and the gradient reaches back at most k steps
    (``tbptt_backprop_steps`` for more). Rows that ended before a chunk are not run: their state stays as it
    was. With ``carry_state=True`` the state is also carried across consecutive batches (long streams cut
    into batches, reset each epoch and where a dict batch's ``"reset"`` (N,) is True). A bidirectional tagger
    cannot be truncated (its backward direction needs the steps after the chunk): an error.

    Logs ``train/loss``, ``val/loss``, ``test/loss`` and per epoch ``{train,val,test}/acc`` (per token) and
    ``{train,val,test}/f1`` (macro), torchmetrics ignoring ``pad_id``. ``trainer.predict`` returns per batch
    ``{"tags" (N, L) long, "probs" (N, L, C) float32, "mask" (N, L) bool}`` (:meth:`predict_step`).

    Args:
        num_classes: C >= 2.
        vocab_size / input_size: token-id inputs (N, L) with an embedding, or features (N, L, input_size).
        embedding_dim, encoder: as :class:`~lightning_rnn.RNNClassifier` (``encoder`` an
            :class:`~lightning_rnn.nn.RNNConfig` or a dict of its fields; default ``RNNConfig()``).
        pad_id: label value of unlabelled steps (padding): labels equal to it carry no loss and are not counted
            by the metrics; predicted tags past a row's length are set to it. ``-100`` is what
            :func:`~lightning_rnn.data.pad_collate` pads labels with (``cross_entropy``'s ``ignore_index``).
        tbptt_steps, tbptt_backprop_steps, carry_state, gradient_clip_val, gradient_clip_algorithm,
            eval_tbptt_steps, lr_scheduler_step, max_consecutive_skips, nonfinite_inputs: see
            :class:`~lightning_rnn.TBPTTModule`.
        dropout, optimizer, lr, weight_decay: as :class:`~lightning_rnn.RNNClassifier`.

    Batches: ``{"inputs", "lengths", "labels"}`` with labels (N, L) padded with ``pad_id`` (as
    :func:`~lightning_rnn.data.pad_collate` returns), or ``(inputs, labels)`` with no padding.

    Example::

        >>> import torch
        >>> from lightning_rnn import RNNConfig, RNNTagger
        >>> tagger = RNNTagger(num_classes=5, vocab_size=20, embedding_dim=8,
        ...                    encoder=RNNConfig(hidden_size=8, bidirectional=True))
        >>> logits, state = tagger(torch.randint(0, 20, (2, 7)), lengths=torch.tensor([7, 3]))
        >>> logits.shape
        torch.Size([2, 7, 5])
    """

    _per_step_labels = True

    def __init__(
        self,
        num_classes: int,
        vocab_size: int | None = None,
        input_size: int | None = None,
        embedding_dim: int = 128,
        encoder: RNNConfig = DEFAULT_ENCODER,
        *,
        pad_id: int = -100,
        tbptt_steps: int | None = None,
        tbptt_backprop_steps: int | None = None,
        carry_state: bool = False,
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
            carry_state=carry_state,
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
            pad_id=pad_id,
        )
        self.save_hyperparameters()
        plain_configs(self)  # a user's subclass taking its own RNNConfig: still a plain dict

    def forward(self, inputs: Tensor, state: Any = None, lengths: Tensor | None = None) -> tuple[Tensor, Any]:
        """Per-step logits and the state to continue the sequences with.

        Inputs: inputs (N, L) ids or (N, L, F) features; state ``None`` (zeros) or the state a previous call
        returned; lengths (N,) valid steps of each row in [0, L] (``None``: all L; a row with 0 steps keeps its
        state).
        Outputs: logits (N, L, C) (steps past a row's length are the head applied to zeros: ignore them);
        the :class:`~lightning_rnn.nn.RNNStack` state after each row's last valid step.
        """
        n, length = inputs.shape[0], inputs.shape[1]
        if self.embedding is not None:
            check_token_ids("inputs", inputs, self.embedding.num_embeddings)
        # lengths=None: the unpacked full-length path (what torch.export / ONNX trace)
        out, state, idx = self.encode(inputs, lengths.to(inputs.device) if lengths is not None else None, state)
        logits = self.head(self.dropout(out))  # (A, L, C)
        if lengths is None or idx.numel() == n:
            return logits, state
        return logits.new_zeros(n, length, self.num_classes).index_copy(0, idx, logits), state

    def predict_chunk(self, chunk: Any, state: Any) -> tuple[Tensor, Any]:
        return self(chunk["inputs"], state, chunk["lengths"])

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """Predicted tags of every step of ``batch`` (labels, if present, are ignored).

        Returns ``{"tags": (N, L) long, "probs": (N, L, C) float32, "mask": (N, L) bool}``: the argmax tag and
        the class probabilities of every step; ``mask`` is True on real steps, and padded steps (at or past a
        row's length) have tag ``pad_id`` and probabilities 0. Chunks and carried state as in evaluation.
        """
        inputs, lengths = self._validate_predict(batch)
        logits = torch.cat(super().predict_step(batch, batch_idx), dim=1)  # (N, L, C)
        mask = length_mask(lengths, logits.shape[1])  # (N, L)
        probs = torch.softmax(logits.float(), dim=-1).masked_fill(~mask.unsqueeze(-1), 0.0)
        tags = probs.argmax(-1).masked_fill(~mask, self.pad_id)
        return {"tags": tags, "probs": probs, "mask": mask}

    def tbptt_step(self, chunk: Any, state: Any) -> TBPTTStep:
        inputs, lengths, labels = chunk["inputs"], chunk["lengths"], chunk["labels"]
        out, state, idx = self.encode(inputs, lengths, state)  # (A, k, D*H)
        logits = self.head(self.dropout(out))  # (A, k, C)
        labels = labels.index_select(0, idx)  # (A, k)
        steps = length_mask(lengths.to(labels.device).index_select(0, idx), labels.shape[1])  # (A, k)
        labels = labels.masked_fill(~steps, self.pad_id)
        count = int((labels != self.pad_id).sum())
        if count:
            loss = F.cross_entropy(
                logits.reshape(-1, self.num_classes), labels.reshape(-1), ignore_index=self.pad_id
            )
        else:
            loss = no_loss(inputs)
        outputs = (logits.reshape(-1, self.num_classes), labels.reshape(-1))
        self._record_train_outputs(chunk, outputs)
        return TBPTTStep(loss=loss, state=state, weight=count, outputs=outputs)
