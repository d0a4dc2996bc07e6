"""Cost of one gradient-flow probe (``lightning_rnn.functional.measure_gradient_flow``) on a language model.

For an LSTM ``RNNLanguageModel`` it times, as medians over repetitions:

- ``own``: the model's own probe (``RNNStack.forward_steps``, per-row losses, one backward pass);
- ``default``: the probe every ``TBPTTModule`` derives from ``tbptt_step`` (one ``tbptt_step`` call per time
  step, losses summed over rows: one backward pass per target);
- ``own, oneDNN off``: the own probe with the process-wide oneDNN flag off for the timed calls only (what
  earlier versions did inside the probe; the library no longer touches that flag) — CPU only;

and prints each as milliseconds per probe and as a ratio to one training step (a TBPTT chunk of 35 steps,
forward + backward + optimizer step) of the same model.

Usage:
    python benchmarks/gradient_flow_probe.py            # ~1 min on 2 CPU cores
    python benchmarks/gradient_flow_probe.py --quick    # a few seconds, smoke test
    python benchmarks/gradient_flow_probe.py --device cuda --hidden 512 --layers 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from lightning_rnn import RNNConfig, RNNLanguageModel, TBPTTModule
from lightning_rnn.functional import measure_gradient_flow


def _median_ms(fn: Callable[[], object], reps: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--max-lag", type=int, default=32)
    parser.add_argument("--num-targets", type=int, default=8)
    args = parser.parse_args()
    device = torch.device(args.device)
    reps = 2 if args.quick else 7
    hidden = 32 if args.quick else args.hidden
    torch.manual_seed(0)
    vocab, rows = 1000, 32
    model = RNNLanguageModel(vocab, hidden, encoder=RNNConfig(hidden_size=hidden, num_layers=args.layers, layer_dropout=0.2), tbptt_steps=35)
    model.to(device).train()
    length = args.max_lag + args.num_targets
    batch = (torch.randint(0, vocab, (rows, length), device=device), torch.randint(0, vocab, (rows, length), device=device))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    chunk = tuple(t[:, :35] for t in torch.randint(0, vocab, (2, rows, 36), device=device))

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        model.tbptt_step(chunk, None).loss.backward()
        opt.step()

    def own() -> object:
        return measure_gradient_flow(model, batch, max_lag=args.max_lag, num_targets=args.num_targets)

    def default() -> object:
        return measure_gradient_flow(model, batch, probe=lambda b, m: TBPTTModule.gradient_flow_probe(model, b, m),
                                     max_lag=args.max_lag, num_targets=args.num_targets)

    step = _median_ms(train_step, reps, device)
    rows_out = [("own", _median_ms(own, reps, device)), ("default", _median_ms(default, reps, device))]
    if device.type == "cpu":
        with torch.backends.mkldnn.flags(enabled=False):
            rows_out.append(("own, oneDNN off", _median_ms(own, reps, device)))
    print(f"LSTM LM {args.layers}x{hidden}, batch {rows}, probe {length} steps (K={args.max_lag}), {device}")
    print(f"training step (chunk of 35): {step:.1f} ms")
    for name, ms in rows_out:
        print(f"{name:>16}: {ms:8.1f} ms per probe = {ms / step:6.2f} training steps")


if __name__ == "__main__":
    main()
