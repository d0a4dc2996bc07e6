"""RNNLanguageModel: a word- or character-level recurrent language model on the TBPTT engine."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.text import Perplexity

from lightning_rnn._validation import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_probability,
    check_token_ids,
)
from lightning_rnn.functional.activation_reg import (
    activation_regularization,
    temporal_activation_regularization,
)
from lightning_rnn.modules._hparams import plain_configs
from lightning_rnn.modules._legacy import check_encoder_hparams
from lightning_rnn.modules._optim import build_optimizer, check_optimizer_args
from lightning_rnn.modules.tbptt import TBPTTModule, TBPTTStep
from lightning_rnn.nn.dropout import EmbeddingDropout, locked_dropout
from lightning_rnn.nn.rnn_config import RNNConfig
from lightning_rnn.nn.softmax import (
    SAMPLER_DISTRIBUTIONS,
    CandidateSampler,
    adaptive_softmax,
    check_cutoffs,
    sampled_softmax_loss,
)

__all__ = ["RNNLanguageModel"]

#: the recurrent stack when ``encoder`` is not given (or is None)
DEFAULT_ENCODER = RNNConfig(hidden_size=256)

_OUTPUTS = ("full", "adaptive", "sampled")


def _unpack(batch: Any) -> tuple[Tensor, Tensor]:
    if isinstance(batch, Mapping):
        if "inputs" not in batch or "targets" not in batch:
            raise ValueError(f"Expected a dict batch with keys 'inputs' and 'targets', got keys {sorted(batch)}")
        return batch["inputs"], batch["targets"]
    if isinstance(batch, list | tuple) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(
        f"Expected a batch (inputs, targets) or {{'inputs': ..., 'targets': ...}} of LongTensors (N, L), "
        f"got {type(batch).__name__}"
    )



class RNNLanguageModel(TBPTTModule):
    """Recurrent language model (RNN / LSTM / GRU) trained with truncated BPTT.

    Embedding -> :class:`~lightning_rnn.nn.RNNStack` (every step-tied dropout option) -> linear decoder
    (optionally tied to the embedding). The loss of a chunk is the mean token cross-entropy over that chunk.
    Logs ``train/loss`` (+ ``train/loss_chunk``), ``train/ppl``, ``train/bits_per_token``, ``val/loss``,
    ``val/ppl``, ``val/bits_per_token`` (torchmetrics ``Perplexity`` over whole validation sequences) and the
    same for ``test/``. ``trainer.predict`` returns per batch the (N, L) log-likelihood of every target
    (:meth:`predict_step`).

    Batches are ``(inputs, targets)`` LongTensors ``(N, L)`` (targets = inputs shifted by one) or a dict with
    ``"inputs"``, ``"targets"`` (and optionally ``"reset"``), as :class:`~lightning_rnn.data.TextStreamDataModule`
    hands out. ``carry_state`` defaults to True because those batches are consecutive slices of streams.

    Args:
        vocab_size: V, number of token ids.
        embedding_dim: E.
        encoder: the recurrent stack (:class:`~lightning_rnn.nn.RNNConfig`: cell, hidden size, layers, step-tied
            dropout, zoneout, ...) or a dict of its fields; default ``RNNConfig(hidden_size=256)`` (one LSTM
            layer). Saved in ``hparams`` as a dict.
        tbptt_steps, tbptt_backprop_steps, carry_state, variable_bptt, gradient_clip_val,
            gradient_clip_algorithm, eval_tbptt_steps, variable_bptt_std, variable_bptt_min, lr_scheduler_step,
            max_consecutive_skips, nonfinite_inputs: see :class:`~lightning_rnn.TBPTTModule`.
        embedding_dropout: drops whole vocabulary rows of the embedding (AWD-LSTM).
        ar_alpha, tar_beta: AWD-LSTM's activation regularization ``ar_alpha * mean(dropped outputs**2)`` and
            temporal activation regularization ``tar_beta * mean((h_t - h_{t-1})**2)`` on the last layer's
            outputs, per training chunk (:mod:`lightning_rnn.functional.activation_reg`), added to the loss
            that is backpropagated (not to the logged ``train/loss``) and logged as ``train/ar``, ``train/tar``.
        tie_weights: share the decoder's weight with the embedding (needs ``embedding_dim`` equal to the
            recurrent output size ``D*H``).
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``; override ``configure_optimizers`` for anything else.
        lr, weight_decay: optimizer settings.
        pad_id: target id that carries no loss and is not counted by the perplexity (padding);
            :meth:`predict_step` gives it NaN. The default ``-100`` is no token id.
        output: the output layer for large vocabularies: ``"full"`` (linear + softmax over V), ``"adaptive"``
            (``torch.nn.AdaptiveLogSoftmaxWithLoss``: exact log-probabilities, used for training *and*
            evaluation; ids must be sorted by decreasing frequency) or ``"sampled"`` (sampled softmax in
            training, the exact full softmax of the same decoder in evaluation, so ``val/ppl`` is exact).
        adaptive_cutoffs: increasing cut-offs in (0, V) for ``output="adaptive"`` (default
            ``[V//20, V//5]`` rounded, at least 1).
        adaptive_div_value: dimension divisor of successive adaptive tail clusters.
        num_sampled: S, shared negative candidates per chunk for ``output="sampled"``.
        sampler: candidate distribution for ``output="sampled"``: ``"log_uniform"`` (Zipf, ids sorted by
            frequency), ``"unigram"`` (needs ``sampler_counts``) or ``"uniform"``.
        sampler_counts: (V,) unigram weights for ``sampler="unigram"``.

    Example::

        >>> import torch
        >>> from lightning_rnn import RNNConfig, RNNLanguageModel
        >>> lm = RNNLanguageModel(vocab_size=50, embedding_dim=16, encoder=RNNConfig(hidden_size=32), tbptt_steps=8)
        >>> logits, state = lm(torch.randint(0, 50, (2, 12)))
        >>> tuple(logits.shape)
        (2, 12, 50)
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 128,
        encoder: RNNConfig = DEFAULT_ENCODER,
        *,
        tbptt_steps: int | None = None,
        tbptt_backprop_steps: int | None = None,
        carry_state: bool = True,
        variable_bptt: bool = False,
        embedding_dropout: float = 0.0,
        ar_alpha: float = 0.0,
        tar_beta: float = 0.0,
        tie_weights: bool = False,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        eval_tbptt_steps: int | None = None,
        variable_bptt_std: float = 5.0,
        variable_bptt_min: int = 5,
        lr_scheduler_step: str = "auto",
        max_consecutive_skips: int = 10,
        nonfinite_inputs: str = "error",
        pad_id: int = -100,
        output: str = "full",
        adaptive_cutoffs: list[int] | None = None,
        adaptive_div_value: float = 4.0,
        num_sampled: int = 1024,
        sampler: str = "log_uniform",
        sampler_counts: Tensor | list[float] | None = None,
    ) -> None:
        super().__init__(
            tbptt_steps=tbptt_steps,
            tbptt_backprop_steps=tbptt_backprop_steps,
            carry_state=carry_state,
            variable_bptt=variable_bptt,
            gradient_clip_val=gradient_clip_val,
            gradient_clip_algorithm=gradient_clip_algorithm,
            eval_tbptt_steps=eval_tbptt_steps,
            variable_bptt_std=variable_bptt_std,
            variable_bptt_min=variable_bptt_min,
            lr_scheduler_step=lr_scheduler_step,
            max_consecutive_skips=max_consecutive_skips,
            nonfinite_inputs=nonfinite_inputs,
        )
        for name, value in (("vocab_size", vocab_size), ("embedding_dim", embedding_dim)):
            check_int(name, value, min=1)
        check_optimizer_args(optimizer, lr, weight_decay)
        check_int("pad_id", pad_id)
        if output not in _OUTPUTS:
            raise ValueError(f"Expected output in {_OUTPUTS}, got {output!r}")
        if output != "full" and type(self).project is not RNNLanguageModel.project:
            raise TypeError(
                f"Expected output='full' with {type(self).__name__}.project overridden, got output={output!r}: the "
                f"{output} softmax loss reads the output layer's weights directly, so training would ignore project()."
            )
        if output == "adaptive" and tie_weights:
            raise ValueError("Expected tie_weights=False with output='adaptive' (its head has V' < V rows), got True")
        check_choice("sampler", sampler, SAMPLER_DISTRIBUTIONS)
        check_bool("tie_weights", tie_weights)
        if output == "sampled":
            check_int("num_sampled", num_sampled, min=1, max=vocab_size)
        check_probability("embedding_dropout", embedding_dropout)
        check_float("adaptive_div_value", adaptive_div_value, min=0.0, min_inclusive=False)
        if output == "adaptive" and adaptive_cutoffs is not None:
            try:
                check_cutoffs(adaptive_cutoffs, vocab_size)
            except (TypeError, ValueError) as err:  # name the module's argument, keep the detail
                raise type(err)(
                    f"Expected adaptive_cutoffs to be strictly increasing ints in (0, vocab_size={vocab_size}), "
                    f"got {adaptive_cutoffs!r} ({err})"
                ) from None
        if sampler_counts is not None:
            # saved as a plain list: a checkpoint must rebuild the same sampler (load_from_checkpoint, the CLI)
            sampler_counts = [float(c) for c in torch.as_tensor(sampler_counts, dtype=torch.float64).flatten()]
        for name, value in (("ar_alpha", ar_alpha), ("tar_beta", tar_beta)):
            check_float(name, value, min=0.0)
        self.ar_alpha, self.tar_beta = float(ar_alpha), float(tar_beta)
        config = RNNConfig.coerce(encoder, DEFAULT_ENCODER)  # None: this module's default
        if config.bidirectional:
            raise ValueError(
                "Expected encoder.bidirectional=False for a language model (a backward direction would read the "
                "tokens it is asked to predict), got True"
            )
        encoder = config.to_dict()  # type: ignore[assignment]  # saved as a plain dict: weights_only checkpoints
        self.save_hyperparameters()
        plain_configs(self)  # a user's subclass taking its own RNNConfig: still a plain dict
        self.output = output
        self.vocab_size = vocab_size
        self.pad_id = pad_id
        embedding = nn.Embedding(vocab_size, embedding_dim)
        self.embedding: nn.Module = EmbeddingDropout(embedding, embedding_dropout) if embedding_dropout else embedding
        self.rnn = config.build(embedding_dim)
        self.sampler: CandidateSampler | None = None
        if output == "adaptive":
            if adaptive_cutoffs is None:
                adaptive_cutoffs = sorted({max(1, vocab_size // 20), max(2, vocab_size // 5)})
                adaptive_cutoffs = [c for c in adaptive_cutoffs if c < vocab_size]
            self.adaptive = adaptive_softmax(
                self.rnn.output_size, vocab_size, adaptive_cutoffs, div_value=adaptive_div_value
            )
        else:
            self.decoder = nn.Linear(self.rnn.output_size, vocab_size)
            if output == "sampled":
                self.sampler = CandidateSampler(vocab_size, sampler, sampler_counts)
        if tie_weights:
            if embedding_dim != self.rnn.output_size:
                raise ValueError(
                    f"Expected embedding_dim == recurrent output size for tie_weights=True, got embedding_dim="
                    f"{embedding_dim} and output size {self.rnn.output_size}"
                )
            self.decoder.weight = embedding.weight
        self.val_ppl = Perplexity(ignore_index=pad_id)
        self.test_ppl = Perplexity(ignore_index=pad_id)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_encoder_hparams(type(self).__name__, checkpoint)
        super().on_load_checkpoint(checkpoint)

    # ------------------------------------------------------------------ model
    def forward(self, inputs: Tensor, state: Any = None, lengths: Tensor | None = None) -> tuple[Tensor, Any]:
        """Next-token scores and the state to continue with.

        Inputs: inputs (N, L) LongTensor; state ``None`` (zeros) or the state a previous call returned;
        lengths (N,) valid steps per row (``None``: all L; see :class:`~lightning_rnn.nn.RNNStack`).
        Outputs: logits (N, L, V), state.

        With ``output="adaptive"`` the "logits" are the exact log-probabilities (their ``log_softmax`` is
        themselves); with ``"sampled"`` they are the full decoder's logits.
        """
        check_token_ids("inputs", inputs, self.vocab_size)
        emb = self.embedding(inputs)  # (N, L, E)
        out, state = self.rnn(emb, state, lengths=lengths)  # (N, L, D*H)
        return self.project(out), state  # (N, L, V)

    def project(self, features: Tensor) -> Tensor:
        """Inputs: features (..., D*H). Outputs: (..., V) logits (``"full"``/``"sampled"``) or exact
        log-probabilities (``"adaptive"``)."""
        if self.output == "adaptive":
            return self.adaptive.log_prob(features.reshape(-1, features.shape[-1])).reshape(
                *features.shape[:-1], self.vocab_size
            )
        return self.decoder(features)

    def token_loss(self, features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Mean token loss of the output layer, its weight (counted targets), and the (N, L, V) scores or None.

        Inputs: features (N, L, D*H), targets (N, L). Training uses the configured output (sampled softmax
        for ``"sampled"``); evaluation is always exact (full softmax, or exact adaptive log-probabilities).
        Scores are returned in evaluation only.
        """
        valid = targets != self.pad_id  # (N, L)
        weight = valid.sum()
        if self.output == "full" or (self.output == "sampled" and not self.training):
            logits = self.project(features)  # (N, L, V); a subclass's project() override trains and evaluates
            loss = F.cross_entropy(logits.reshape(-1, self.vocab_size), targets.reshape(-1), ignore_index=self.pad_id)
            return loss, weight, None if self.training else logits
        flat, tgt = features[valid], targets[valid]  # (M, D*H), (M,)
        if tgt.numel() == 0:
            return features.sum() * 0.0, weight, None if self.training else self.project(features)
        if self.output == "sampled":
            loss = sampled_softmax_loss(
                flat, tgt, self.decoder.weight, self.decoder.bias, self.hparams.num_sampled, self.sampler  # type: ignore[arg-type]
            )
            return loss, weight, None
        loss = self.adaptive(flat, tgt).loss
        return loss, weight, None if self.training else self.project(features)

    def _check_tokens(self, *tensors: Tensor) -> None:
        for name, t in zip(("inputs", "targets"), tensors):
            if t.dtype not in (torch.int64, torch.int32):
                raise TypeError(f"Expected {name} to be an integer tensor of token ids, got dtype {t.dtype}")
            if t.dim() != 2:
                raise ValueError(f"Expected {name} of shape (N, L), got {tuple(t.shape)}")
            valid = t[t != self.pad_id] if name == "targets" else t
            if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= self.vocab_size):
                bad = int(valid.max()) if int(valid.max()) >= self.vocab_size else int(valid.min())
                raise ValueError(
                    f"Expected {name} ids in [0, {self.vocab_size}) (vocab_size={self.vocab_size}), got id {bad}"
                )

    def tbptt_step(self, chunk: Any, state: Any) -> TBPTTStep:
        inputs, targets = _unpack(chunk)
        regularize = self.training and (self.ar_alpha > 0 or self.tar_beta > 0)
        if not regularize:
            out, state = self.rnn(self.embedding(inputs), state)  # (N, k, D*H)
            raw = out
        else:  # TAR needs the outputs before the output dropout: apply it here, same mask draw as RNNStack's
            p, self.rnn.output_dropout = self.rnn.output_dropout, 0.0
            try:
                raw, state = self.rnn(self.embedding(inputs), state)  # (N, k, D*H), undropped
            finally:
                self.rnn.output_dropout = p
            out = locked_dropout(raw, p, batch_first=self.rnn.batch_first)
        loss, weight, scores = self.token_loss(out, targets)  # scores (N, k, V) in evaluation
        step = TBPTTStep(loss=loss, state=state, weight=weight, outputs=scores)
        if regularize:
            valid = targets != self.pad_id  # padding steps count in neither penalty
            ar = activation_regularization(out, self.ar_alpha, valid)
            tar = temporal_activation_regularization(raw, self.tar_beta, valid)
            step.penalty, step.metrics = ar + tar, {"ar": ar.detach(), "tar": tar.detach()}
        return step

    def predict_chunk(self, chunk: Any, state: Any) -> tuple[Tensor, Any]:
        inputs, targets = _unpack(chunk)
        scores, state = self(inputs, state)  # (N, k, V)
        log_probs = torch.log_softmax(scores.float(), dim=-1)  # exact for every output layer
        valid = targets != self.pad_id  # (N, k)
        picked = log_probs.gather(-1, targets.masked_fill(~valid, 0).unsqueeze(-1)).squeeze(-1)  # (N, k)
        return picked.masked_fill(~valid, float("nan")), state

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Per-token log-likelihoods ``log p(targets[n, t] | inputs[n, :t+1], carried state)``, (N, L) float32.

        Targets equal to ``pad_id`` give NaN. Evaluation semantics: chunks of ``eval_tbptt_steps`` (else
        ``tbptt_steps``), the state carried across chunks and, with ``carry_state``, across batches (so over
        a text stream the sum of the non-NaN entries is the stream's log-likelihood; ``-mean`` is ``test/loss``).
        Batches are what training takes: ``(inputs, targets)`` or ``{"inputs", "targets"}``.
        """
        self._check_tokens(*_unpack(batch))
        return torch.cat(super().predict_step(batch, batch_idx), dim=1)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        self._check_tokens(*_unpack(batch))
        loss = super().training_step(batch, batch_idx)
        self.log("train/ppl", torch.exp(loss), on_step=True, on_epoch=False)
        self.log("train/bits_per_token", loss / math.log(2), on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        self._check_tokens(*_unpack(batch))
        return super().validation_step(batch, batch_idx)

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        self._check_tokens(*_unpack(batch))
        return super().test_step(batch, batch_idx)

    def on_eval_chunk_end(self, stage: str, chunk: Any, step: TBPTTStep) -> None:
        metric = {"val": self.val_ppl, "test": self.test_ppl}.get(stage)
        if metric is not None and step.outputs is not None:
            metric.update(step.outputs.float(), _unpack(chunk)[1])

    def _log_ppl(self, stage: str, metric: Perplexity) -> None:
        if metric.update_count == 0:
            return
        ppl = metric.compute()
        metric.reset()
        self.log(f"{stage}/ppl", ppl, prog_bar=stage == "val")
        self.log(f"{stage}/bits_per_token", torch.log2(ppl))

    def on_validation_epoch_end(self) -> None:
        self._log_ppl("val", self.val_ppl)

    def on_test_epoch_end(self) -> None:
        self._log_ppl("test", self.test_ppl)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        return build_optimizer(self.parameters(), hp.optimizer, hp.lr, hp.weight_decay)

    # ------------------------------------------------------------------ diagnostics probe
    def gradient_flow_probe(self, batch: Any, max_steps: int | None = None) -> tuple[list[Any], Tensor]:
        """Per-step states and per-row losses for the gradient-flow callbacks (faster than the default probe).

        Runs the same parameters one step at a time over the first ``max_steps`` steps of ``batch`` (inside
        :func:`~lightning_rnn.functional.gradient_flow.unrolled_recurrence`, so the loss at t is read from the
        state after step t) and returns every row's token loss: one backward pass serves the whole probe.
        Outputs: a list of L states (graph attached) and the token losses (N, L), NaN at ``pad_id``.
        """
        from lightning_rnn.functional.gradient_flow import unrolled_recurrence

        inputs, targets = _unpack(batch)
        if max_steps is not None:
            inputs, targets = inputs[:, :max_steps], targets[:, :max_steps]
        emb = self.embedding(inputs)  # (N, L, E)
        state, step_states, outs = None, [], []
        with unrolled_recurrence(self.rnn):
            for t in range(emb.shape[1]):
                out, state = self.rnn(emb[:, t : t + 1], state)  # (N, 1, D*H): the state's top h
                outs.append(out)
                step_states.append(state)
        scores = self.project(torch.cat(outs, 1))  # (N, L, V): exact logits / log-probabilities
        losses = F.cross_entropy(
            scores.transpose(1, 2), targets, ignore_index=self.pad_id, reduction="none"
        )  # (N, L)
        # the probe protocol marks positions without a target by NaN (not a zero-norm sample)
        return step_states, losses.masked_fill(targets == self.pad_id, float("nan"))

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(
        self,
        prompt_ids: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Sample a continuation.

        Inputs: prompt_ids (L,) or (N, L) LongTensor (L >= 1). Outputs: (L + max_new_tokens,) or
        (N, L + max_new_tokens): the prompt followed by the sampled ids. ``temperature=0`` is greedy.
        """
        if max_new_tokens < 0:
            raise ValueError(f"Expected max_new_tokens >= 0, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"Expected temperature >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"Expected top_k >= 1 or None, got {top_k}")
        squeeze = prompt_ids.dim() == 1
        ids = prompt_ids.unsqueeze(0) if squeeze else prompt_ids
        if ids.dim() != 2 or ids.shape[1] < 1:
            raise ValueError(f"Expected prompt_ids of shape (L,) or (N, L) with L >= 1, got {tuple(prompt_ids.shape)}")
        self._check_tokens(ids, ids)
        was_training = self.training
        self.eval()
        try:
            ids = ids.to(self.device)
            logits, state = self(ids)
            out = [ids]
            for _ in range(max_new_tokens):
                last = logits[:, -1].float()  # (N, V)
                if temperature == 0:
                    nxt = last.argmax(-1, keepdim=True)
                else:
                    last = last / temperature
                    if top_k is not None:
                        kth = torch.topk(last, min(top_k, last.shape[-1]), dim=-1).values[:, -1:]
                        last = last.masked_fill(last < kth, float("-inf"))
                    nxt = torch.multinomial(torch.softmax(last, -1), 1, generator=generator)  # (N, 1)
                out.append(nxt)
                logits, state = self(nxt, state)
        finally:
            self.train(was_training)
        result = torch.cat(out, dim=1)
        return result[0] if squeeze else result
