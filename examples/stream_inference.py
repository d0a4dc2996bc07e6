"""Stateful streaming inference: one token in, one token out, the recurrent state carried between calls.

A served language model rarely sees a whole sequence at once: text arrives token by token (a keyboard, a
socket, a log tail) and every new token needs the next-token distribution *now*. A recurrent model does this
in O(1) per token by keeping its state: ``logits, state = model(token[:, None], state)``. This example

1. trains a small character ``RNNLanguageModel`` for a few steps on standard-library source
   (``TextStreamDataModule``), or loads one from ``--ckpt``;
2. wraps it in :class:`StreamingPredictor` (holds the state of N independent streams; ``step(tokens)`` ->
   next-token logits; ``reset(rows)`` starts rows afresh) — eager, or a ``torch.export``-ed one-step graph
   with ``--export``;
3. feeds a prompt one character at a time and checks that the per-step logits equal the fused full-sequence
   forward over the same prompt (the maximum difference is printed), then samples a continuation one token at
   a time.

Run::

    python examples/stream_inference.py                  # ~1 minute on 2 CPU cores
    python examples/stream_inference.py --quick          # seconds
    python examples/stream_inference.py --export --prompt "def main("
    python examples/stream_inference.py --ckpt path/to/lm.ckpt --vocab path/to/vocab.json

Throughput of this path against the fused full-sequence forward: ``python benchmarks/inference_paths.py``.
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

import torch
from lightning.pytorch import Trainer, seed_everything
from torch import Tensor, nn

from lightning_rnn import RNNConfig, RNNLanguageModel
from lightning_rnn.data import TextStreamDataModule, Vocab


class _StepGraph(nn.Module):
    """``(tokens (N, 1), *state leaves) -> (logits (N, 1, V), *new state leaves)``: the one-step forward with the
    state as plain tensors, which is what ``torch.export`` and ONNX take."""

    def __init__(self, model: RNNLanguageModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        logits, new = self.model(tokens, state if len(state) > 1 else state[0])
        return (logits, *(new if isinstance(new, tuple) else (new,)))


class StreamingPredictor:
    """N token streams through a recurrent language model, one token per stream per call.

    Args:
        model: a trained :class:`RNNLanguageModel` (put in eval mode).
        num_streams: N.
        export: run a ``torch.export``-ed one-step graph instead of the eager module (same numbers).

    Example::

        >>> lm = RNNLanguageModel(10, embedding_dim=4, hidden_size=8)
        >>> stream = StreamingPredictor(lm, num_streams=2)
        >>> stream.step(torch.tensor([3, 4])).shape
        torch.Size([2, 10])
    """

    def __init__(self, model: RNNLanguageModel, num_streams: int = 1, *, export: bool = False) -> None:
        self.model = model.eval()
        self.num_streams = num_streams
        self.state: tuple[Tensor, ...] = self._zeros()
        self._step: Any = _StepGraph(self.model)
        if export:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                example = (torch.zeros(num_streams, 1, dtype=torch.long), *(s.clone() for s in self.state))
                self._step = torch.export.export(self._step, example).module()

    def _zeros(self) -> tuple[Tensor, ...]:
        state = self.model.rnn.init_state(self.num_streams)
        return state if isinstance(state, tuple) else (state,)

    @torch.no_grad()
    def step(self, tokens: Tensor) -> Tensor:
        """Inputs: tokens (N,) ids, the newest token of every stream. Outputs: next-token logits (N, V)."""
        if tokens.shape != (self.num_streams,):
            raise ValueError(f"Expected tokens of shape ({self.num_streams},), got {tuple(tokens.shape)}")
        logits, *state = self._step(tokens.view(-1, 1), *self.state)
        self.state = tuple(state)
        return logits[:, -1]

    def reset(self, rows: Tensor | None = None) -> None:
        """Start the given rows (bool (N,) or indices; default all) from the zero state."""
        if rows is None:
            self.state = self._zeros()
            return
        index = torch.as_tensor(rows)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        self.state = tuple(s.index_fill(1, index, 0.0) for s in self.state)  # state leaves are (D*layers, N, H)


def train_small_lm(steps: int, max_bytes: int) -> tuple[RNNLanguageModel, Vocab]:
    dm = TextStreamDataModule(None, batch_size=16, bptt=64, max_bytes=max_bytes, val_fraction=0.0, test_fraction=0.0)
    dm.setup("fit")
    model = RNNLanguageModel(dm.vocab_size, encoder=RNNConfig(hidden_size=128), embedding_dim=32, lr=3e-3)
    trainer = Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(model, datamodule=dm)
    return model, dm.vocab  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few training steps (smoke test)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--ckpt", default=None, help="an RNNLanguageModel checkpoint (needs --vocab)")
    parser.add_argument("--vocab", default=None, help="the vocabulary JSON saved with the checkpoint's data")
    parser.add_argument("--prompt", default="import os\ndef ")
    parser.add_argument("--tokens", type=int, default=200, help="tokens to sample after the prompt")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--export", action="store_true", help="step through a torch.export-ed graph")
    args = parser.parse_args(argv)
    seed_everything(0, verbose=False)
    if args.ckpt:
        if not args.vocab:
            parser.error("--ckpt needs --vocab (the vocabulary the model was trained with)")
        model, vocab = RNNLanguageModel.load_from_checkpoint(args.ckpt, map_location="cpu"), Vocab.load(args.vocab)
    else:
        model, vocab = train_small_lm(5 if args.quick else args.steps, 100_000 if args.quick else 1_000_000)
    model.eval()
    prompt = vocab.encode(args.prompt)
    if prompt.numel() == 0:
        parser.error(f"Expected a non-empty --prompt, got {args.prompt!r}")
    stream = StreamingPredictor(model, num_streams=1, export=args.export)
    # 1. the prompt, one token at a time, against the fused forward over the whole prompt
    stepped = torch.stack([stream.step(tok.view(1)) for tok in prompt], dim=1)  # (1, L, V)
    with torch.no_grad():
        full, _ = model(prompt.view(1, -1))  # (1, L, V)
    max_diff = float((stepped - full).abs().max())
    print(f"per-step vs fused forward over the {prompt.numel()}-token prompt: max |logit difference| = {max_diff:.2e}")
    # 2. sample a continuation, one token in, one token out
    generator = torch.Generator().manual_seed(0)
    logits, out = stepped[:, -1], []
    for _ in range(args.tokens):
        probs = torch.softmax(logits / max(args.temperature, 1e-6), dim=-1)
        token = torch.multinomial(probs, 1, generator=generator).view(1)
        out.append(int(token))
        logits = stream.step(token)
    text = vocab.decode(out)
    print(args.prompt + text)
    return {"max_diff": max_diff, "text": text, "prompt_tokens": int(prompt.numel())}


if __name__ == "__main__":
    main()
