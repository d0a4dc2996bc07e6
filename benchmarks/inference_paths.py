"""Inference paths of RNNLanguageModel: tokens/s of stateful step-by-step inference vs the fused full sequence.

For an ``RNNLanguageModel`` (default: 2x512 LSTM, 256-token vocabulary, eval mode, no grad) and N streams:

- ``fused``: one forward over (N, L) tokens — scoring a known sequence (the reference, ratio 1.00);
- ``step eager``: ``model(token[:, None], state)`` L times, state carried (``examples/stream_inference.py``);
- ``step export``: the same through a ``torch.export``-ed one-step graph;
- ``step ort`` / ``fused ort``: the one-step / full-sequence graph exported to ONNX, run by ONNX Runtime (when
  ``onnx``, ``onnxscript`` and ``onnxruntime`` are installed: ``pip install 'lightning-rnn[onnx]'``).

Every path is checked against the fused forward before it is timed (max |logit difference| printed). Repetitions
are interleaved; medians of tokens/s are reported with the ratio to ``fused`` at the same N.

Usage (idle machine):
    python benchmarks/inference_paths.py                       # N in 1,32; L=256; ~2 minutes on 2 cores
    python benchmarks/inference_paths.py --quick               # seconds
    python benchmarks/inference_paths.py --hidden 256 --layers 1 --cell gru --streams 1,8,64
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from lightning_rnn import RNNConfig, RNNLanguageModel


class StepGraph(nn.Module):
    """(tokens (N, T), *state leaves) -> (logits (N, T, V), *state leaves)."""

    def __init__(self, model: RNNLanguageModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        logits, new = self.model(tokens, state if len(state) > 1 else state[0])
        return (logits, *(new if isinstance(new, tuple) else (new,)))


def zeros(model: RNNLanguageModel, n: int) -> tuple[Tensor, ...]:
    state = model.rnn.init_state(n)
    return state if isinstance(state, tuple) else (state,)


def stepper(fn, model: RNNLanguageModel, n: int):
    def run(tokens: Tensor) -> Tensor:
        state, out = zeros(model, n), []
        for t in range(tokens.shape[1]):
            logits, *state = fn(tokens[:, t : t + 1], *state)
            out.append(logits)
        return torch.cat(out, dim=1)

    return run


def ort_paths(model: RNNLanguageModel, n: int, length: int, workdir: Path) -> dict:
    try:
        import onnxruntime as ort
    except ImportError:
        return {}
    graph = StepGraph(model).eval()
    paths = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, steps in (("step ort", 1), ("fused ort", length)):
            file = workdir / f"{name.replace(' ', '_')}_{n}.onnx"
            example = (torch.zeros(n, steps, dtype=torch.long), *zeros(model, n))
            try:
                torch.onnx.export(graph, example, str(file), dynamo=True, verbose=False)
            except Exception as err:  # noqa: BLE001 - report and go on with the other paths
                print(f"# {name}: export failed ({type(err).__name__}: {str(err)[:120]})")
                continue
            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.intra_op_num_threads = torch.get_num_threads()
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads leave the CPU
            session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
            names = [i.name for i in session.get_inputs()]

            def call(tokens: Tensor, *state: Tensor, _s=session, _names=names) -> tuple[Tensor, ...]:
                feeds = dict(zip(_names, (x.numpy() for x in (tokens, *state))))
                return tuple(torch.from_numpy(o) for o in _s.run(None, feeds))

            if steps == 1:
                paths[name] = stepper(call, model, n)
            else:
                paths[name] = lambda tokens, _call=call, _n=n: _call(tokens, *zeros(model, _n))[0]
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--embedding", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--cell", default="lstm", choices=["lstm", "gru", "rnn"])
    parser.add_argument("--streams", default="1,32", help="comma-separated N")
    parser.add_argument("--length", type=int, default=256, help="tokens per stream")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.hidden, args.embedding, args.layers, args.length, args.repeats, args.streams = 64, 16, 1, 32, 2, "1,4"
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = RNNLanguageModel(args.vocab, encoder=RNNConfig(hidden_size=args.hidden, num_layers=args.layers, cell=args.cell), embedding_dim=args.embedding).eval()
    print(f"# inference_paths: {args.layers}x{args.hidden} {args.cell}, vocab {args.vocab}, L={args.length}, "
          f"threads={torch.get_num_threads()}, repeats={args.repeats}")
    print(f"{'N':>4} {'path':<12} {'tokens/s':>12} {'ratio':>7} {'max|diff|':>10}")
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for n in (int(s) for s in args.streams.split(",")):
            tokens = torch.randint(0, args.vocab, (n, args.length), generator=torch.Generator().manual_seed(n))
            graph = StepGraph(model).eval()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                exported = torch.export.export(graph, (tokens[:, :1], *zeros(model, n))).module()
            paths = {
                "fused": lambda x, _n=n: model(x)[0],
                "step eager": stepper(graph, model, n),
                "step export": stepper(exported, model, n),
                **ort_paths(model, n, args.length, Path(tmp)),
            }
            reference = model(tokens)[0]
            diffs = {name: float((fn(tokens) - reference).abs().max()) for name, fn in paths.items()}  # + warm-up
            times: dict[str, list[float]] = {name: [] for name in paths}
            for _ in range(args.repeats):
                for name, fn in paths.items():
                    start = time.perf_counter()
                    fn(tokens)
                    times[name].append(time.perf_counter() - start)
            fused = n * args.length / statistics.median(times["fused"])
            for name in paths:
                rate = n * args.length / statistics.median(times[name])
                print(f"{n:>4} {name:<12} {rate:>12,.0f} {rate / fused:>7.3f} {diffs[name]:>10.1e}", flush=True)


if __name__ == "__main__":
    main()
