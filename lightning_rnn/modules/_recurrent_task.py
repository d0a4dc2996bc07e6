"""Shared machinery of RNNClassifier and RNNTagger: inputs, padded batches, active-row encoding, metrics.

Private: users see :class:`~lightning_rnn.RNNClassifier` and :class:`~lightning_rnn.RNNTagger`.

A labelled batch is a dict ``{"inputs", "labels"}`` with an optional ``"lengths"`` (N,) (what
:func:`~lightning_rnn.data.pad_collate` returns; other keys such as ``"mask"`` are ignored) or a tuple
``(inputs, labels)`` of unpadded sequences. :meth:`_RecurrentTask.slice_batch` turns every TBPTT chunk into a
dict ``{"inputs", "lengths", "labels", "ends", "start", "end"}`` where ``lengths`` are the valid steps inside
the chunk and ``ends`` (N,) marks the rows whose last real step lies in the chunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Accuracy, F1Score

from lightning_rnn._validation import check_int, check_token_ids
from lightning_rnn.functional.tbptt import batch_time_length
from lightning_rnn.modules._legacy import check_encoder_hparams
from lightning_rnn.modules._optim import build_optimizer, check_optimizer_args
from lightning_rnn.modules.tbptt import TBPTTModule
from lightning_rnn.nn.rnn_config import RNNConfig
from lightning_rnn.nn.state import map_state, select_state_rows


def unpack_labeled(batch: Any, *, require_labels: bool = True) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``(inputs, lengths or None, labels)`` from a dict or an ``(inputs, labels)`` tuple.

    With ``require_labels=False`` (prediction) labels may be missing: a dict without ``"labels"``, or the
    inputs alone (a tensor, or a 1-tuple as ``TensorDataset`` batches are); they are then ``None``.
    """
    if isinstance(batch, Mapping):
        if "inputs" not in batch or (require_labels and "labels" not in batch):
            keys = "'inputs' and 'labels'" if require_labels else "'inputs'"
            raise ValueError(f"Expected a dict batch with keys {keys}, got keys {sorted(batch)}")
        return batch["inputs"], batch.get("lengths"), batch.get("labels")
    if isinstance(batch, list | tuple) and len(batch) == 2:
        return batch[0], None, batch[1]
    if not require_labels and isinstance(batch, Tensor):
        return batch, None, None
    if not require_labels and isinstance(batch, list | tuple) and len(batch) == 1:
        return batch[0], None, None
    raise TypeError(
        "Expected a batch {'inputs': ..., 'lengths': ..., 'labels': ...} (as pad_collate returns) or a tuple "
        f"(inputs, labels), got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, list | tuple) else "")
    )


class _RecurrentTask(TBPTTModule):
    """Embedding or feature input -> RNNStack -> task head; see RNNClassifier / RNNTagger for the arguments."""

    _per_step_labels = False

    def __init__(
        self,
        num_classes: int,
        *,
        vocab_size: int | None,
        input_size: int | None,
        embedding_dim: int,
        encoder: RNNConfig,
        tbptt_steps: int | None,
        tbptt_backprop_steps: int | None,
        carry_state: bool,
        gradient_clip_val: float | None,
        gradient_clip_algorithm: str,
        eval_tbptt_steps: int | None,
        dropout: float,
        optimizer: str,
        lr: float,
        weight_decay: float,
        pad_id: int = -100,
        lr_scheduler_step: str = "auto",
        max_consecutive_skips: int = 10,
        nonfinite_inputs: str = "error",
    ) -> None:
        super().__init__(
            tbptt_steps=tbptt_steps,
            tbptt_backprop_steps=tbptt_backprop_steps,
            carry_state=carry_state,
            gradient_clip_val=gradient_clip_val,
            gradient_clip_algorithm=gradient_clip_algorithm,
            eval_tbptt_steps=eval_tbptt_steps,
            lr_scheduler_step=lr_scheduler_step,
            max_consecutive_skips=max_consecutive_skips,
            nonfinite_inputs=nonfinite_inputs,
        )
        check_int("num_classes", num_classes, min=2)
        if (vocab_size is None) == (input_size is None):
            raise ValueError(
                "Expected exactly one of vocab_size (token-id inputs (N, L)) or input_size (feature inputs "
                f"(N, L, F)), got vocab_size={vocab_size!r}, input_size={input_size!r}"
            )
        if vocab_size is not None:
            check_int("vocab_size", vocab_size, min=1)
            check_int("embedding_dim", embedding_dim, min=1)
        else:
            check_int("input_size", input_size, min=1)
        check_optimizer_args(optimizer, lr, weight_decay)
        check_int("pad_id", pad_id)
        if self._per_step_labels and 0 <= pad_id < num_classes:
            raise ValueError(
                f"Expected pad_id outside [0, num_classes={num_classes}) (it marks steps without a label), got {pad_id}"
            )
        if not 0 <= dropout < 1:
            raise ValueError(f"Expected dropout in [0, 1), got {dropout}")
        if encoder.bidirectional and (tbptt_steps is not None or eval_tbptt_steps is not None):
            raise ValueError(self._bidirectional_tbptt_message(tbptt_steps or eval_tbptt_steps))
        self.num_classes = num_classes
        self.vocab_size = vocab_size
        self.input_size = input_size
        self.pad_id = pad_id
        self.embedding = nn.Embedding(vocab_size, embedding_dim) if vocab_size is not None else None
        self.rnn = encoder.build(embedding_dim if vocab_size is not None else input_size)  # type: ignore[arg-type]
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.rnn.output_size, num_classes)
        metric_kw: dict[str, Any] = {"task": "multiclass", "num_classes": num_classes}
        if self._per_step_labels:
            metric_kw["ignore_index"] = pad_id
        for stage in ("train", "val", "test"):  # train_metrics, val_metrics, test_metrics
            metrics = {"acc": Accuracy(**metric_kw), "f1": F1Score(average="macro", **metric_kw)}
            setattr(self, f"{stage}_metrics", nn.ModuleDict(metrics))
        self._train_metric_end = 0

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_encoder_hparams(type(self).__name__, checkpoint)
        super().on_load_checkpoint(checkpoint)

    @staticmethod
    def _bidirectional_tbptt_message(steps: int | None) -> str:
        return (
            f"Expected tbptt_steps=None and eval_tbptt_steps=None with bidirectional=True, got {steps}: the "
            "backward direction reads the sequence from its end, so its state at a chunk boundary depends on "
            "steps that have not been read yet and cannot be carried forward; truncating it would change the "
            "model. Use a unidirectional encoder for TBPTT."
        )

    # ------------------------------------------------------------------ checks
    def _check_batch(self, inputs: Tensor, lengths: Tensor | None, labels: Tensor | None) -> None:
        """Inputs, lengths and (unless ``None``: prediction) labels checked against the module's options."""
        if not isinstance(inputs, Tensor) or not isinstance(labels, Tensor | None):
            raise TypeError(
                f"Expected inputs and labels to be Tensors, got {type(inputs).__name__} and {type(labels).__name__}"
            )
        if self.embedding is not None:
            if inputs.dtype not in (torch.int64, torch.int32) or inputs.dim() != 2:
                raise ValueError(
                    f"Expected token-id inputs: an integer tensor (N, L), got dtype {inputs.dtype} and shape "
                    f"{tuple(inputs.shape)}"
                )
            check_token_ids("inputs", inputs, self.embedding.num_embeddings)  # once per batch, not per chunk
        elif not inputs.is_floating_point() or inputs.dim() != 3 or inputs.shape[-1] != self.input_size:
            raise ValueError(
                f"Expected feature inputs: a floating tensor (N, L, {self.input_size}), got dtype {inputs.dtype} "
                f"and shape {tuple(inputs.shape)}"
            )
        n, length = inputs.shape[:2]
        if lengths is not None:
            if not isinstance(lengths, Tensor) or lengths.is_floating_point() or lengths.dtype == torch.bool:
                raise TypeError(f"Expected lengths to be an integer tensor (N,), got {lengths!r}")
            if lengths.dim() != 1 or lengths.shape[0] != n:
                raise ValueError(f"Expected lengths of shape ({n},) (one per row of inputs), got {tuple(lengths.shape)}")
            if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > length):
                raise ValueError(
                    f"Expected every length in [1, {length}] (L of inputs {tuple(inputs.shape)}), got min "
                    f"{int(lengths.min())}, max {int(lengths.max())}"
                )
        if labels is None:
            return
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise TypeError(f"Expected integer labels, got dtype {labels.dtype}")
        expected = (n, length) if self._per_step_labels else (n,)
        if tuple(labels.shape) != expected:
            raise ValueError(f"Expected labels of shape {expected}, got {tuple(labels.shape)}")
        valid = labels
        if self._per_step_labels:
            keep = labels != self.pad_id
            if lengths is not None:
                steps = torch.arange(length, device=labels.device)
                keep = keep & (steps.unsqueeze(0) < lengths.to(labels.device).unsqueeze(1))
            valid = labels[keep]
        if valid.numel():
            bad = valid[(valid < 0) | (valid >= self.num_classes)]
            if bad.numel():
                extra = f" (pad_id={self.pad_id} marks steps without a label)" if self._per_step_labels else ""
                raise ValueError(
                    f"Expected labels in [0, num_classes={self.num_classes}){extra}, got label {int(bad[0])}"
                )

    # ------------------------------------------------------------------ chunks
    def slice_batch(self, batch: Any, start: int, end: int) -> dict[str, Any]:
        """The chunk ``[start, end)`` as ``{"inputs", "lengths", "labels", "ends", "start", "end"}`` (labels
        ``None`` in a prediction batch without labels)."""
        inputs, lengths, labels = unpack_labeled(batch, require_labels=False)
        n, total = inputs.shape[0], inputs.shape[1]
        if lengths is None:
            lengths = torch.full((n,), total, dtype=torch.long, device=inputs.device)
        lengths = lengths.to(inputs.device).long()
        return {
            "inputs": inputs[:, start:end],
            "lengths": (lengths - start).clamp(0, end - start),
            "labels": labels[:, start:end] if self._per_step_labels and labels is not None else labels,
            "ends": (lengths > start) & (lengths <= end),
            "start": start,
            "end": end,
        }

    def encode(self, inputs: Tensor, lengths: Tensor | None, state: Any = None) -> tuple[Tensor, Any, Tensor]:
        """Run the encoder on the rows that have steps in this chunk; the other rows' state is untouched.

        Inputs: inputs (N, k) ids or (N, k, F) features; lengths (N,) valid steps in [0, k], or None: every
        row has all k steps (no data-dependent row selection or packing, so ``torch.export`` can trace it);
        state or None.
        Outputs: outputs (A, k, D*H) of the A active rows (zero past each row's length), the new state of all
        N rows (active rows replaced, graph attached), and the active row indices (A,).
        """
        n, k = inputs.shape[0], inputs.shape[1]
        if lengths is not None and tuple(lengths.shape) != (n,):
            raise ValueError(f"Expected lengths of shape ({n},) (one per row of inputs), got {tuple(lengths.shape)}")
        if state is None:
            ref = self.rnn.weight_hh_l0
            state = self.rnn.init_state(n, device=inputs.device, dtype=ref.dtype)
        if lengths is None:
            x = self.embedding(inputs) if self.embedding is not None else inputs  # (N, k, F)
            out, new = self.rnn(x, state)
            return out, new, torch.arange(n, device=inputs.device)
        lengths = lengths.to(inputs.device)
        idx = torch.nonzero(lengths > 0).flatten()  # (A,)
        all_active = idx.numel() == n
        x = inputs if all_active else inputs.index_select(0, idx)
        x = self.embedding(x) if self.embedding is not None else x  # (A, k, F)
        if idx.numel() == 0:
            return x.new_zeros(0, k, self.rnn.output_size), state, idx
        rows_len = lengths if all_active else lengths.index_select(0, idx)
        packed_len = None if bool((rows_len == k).all()) else rows_len
        if all_active:
            out, new = self.rnn(x, state, lengths=packed_len)
            return out, new, idx
        out, sub = self.rnn(x, select_state_rows(state, idx), lengths=packed_len)
        leaves_new = iter(_leaves(sub))
        new = map_state(lambda old: old.index_copy(1, idx, next(leaves_new)), state)
        return out, new, idx

    # ------------------------------------------------------------------ Lightning
    def _validate(self, batch: Any) -> None:
        if self.rnn.bidirectional and (self.tbptt_steps is not None or self.eval_tbptt_steps is not None):
            raise ValueError(self._bidirectional_tbptt_message(self.tbptt_steps or self.eval_tbptt_steps))
        inputs, lengths, labels = unpack_labeled(batch)
        self._check_batch(inputs, lengths, labels)
        batch_time_length((inputs, labels) if self._per_step_labels else inputs)

    def _validate_predict(self, batch: Any) -> tuple[Tensor, Tensor]:
        """Checks a prediction batch (labels optional, ignored); returns ``(inputs, lengths (N,))``."""
        inputs, lengths, labels = unpack_labeled(batch, require_labels=False)
        self._check_batch(inputs, lengths, None)
        if lengths is None:
            lengths = torch.full((inputs.shape[0],), inputs.shape[1], dtype=torch.long, device=inputs.device)
        return inputs, lengths.to(inputs.device).long()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        self._validate(batch)
        self._train_metric_end = 0
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        self._validate(batch)
        return super().validation_step(batch, batch_idx)

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        self._validate(batch)
        return super().test_step(batch, batch_idx)

    def _update_metrics(self, stage: str, outputs: Any) -> None:
        metrics = getattr(self, f"{stage}_metrics", None) if stage in ("train", "val", "test") else None
        if outputs is None or metrics is None:
            return
        preds, target = outputs
        if target.numel():
            for metric in metrics.values():
                metric.update(preds.detach(), target)

    def _log_metrics(self, stage: str) -> None:
        for name, metric in getattr(self, f"{stage}_metrics").items():
            if metric.update_count:
                self.log(f"{stage}/{name}", metric.compute(), prog_bar=stage == "val" and name == "acc")
            metric.reset()

    def on_eval_chunk_end(self, stage: str, chunk: Any, step: Any) -> None:
        self._update_metrics(stage, step.outputs)

    def _record_train_outputs(self, chunk: Mapping[str, Any], outputs: Any) -> None:
        # k2 > k1 windows re-run earlier chunks; count each chunk once
        if self.training and chunk["end"] > self._train_metric_end:
            self._train_metric_end = chunk["end"]
            self._update_metrics("train", outputs)

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self._log_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        return build_optimizer(self.parameters(), hp.optimizer, hp.lr, hp.weight_decay)


def _leaves(state: Any) -> list[Tensor]:
    out: list[Tensor] = []
    map_state(lambda t: out.append(t) or t, state)
    return out


def no_loss(like: Tensor) -> Tensor:
    """A zero loss with no parameter in its graph: backward gives no gradients, so optimizers skip the step."""
    return torch.zeros((), device=like.device, dtype=torch.float32, requires_grad=torch.is_grad_enabled())
