"""GPU readiness of every RNNStack path against a flattened ``torch.nn.LSTM``, in one table.

Per path (LSTM and GRU stacks; default 2 layers x 512, batch 32, 64 steps), one training step =
forward + backward of ``out.float().square().mean()`` (+ an SGD step for the determinism check):

- ``warn/call``: "not part of single contiguous chunk of memory" warnings per forward (cuDNN copying
  the weights because they are not one flat buffer);
- ``copies/step``: ``aten::copy_`` inside ``aten::_cudnn_rnn`` (cuDNN copying weights, or a batch-first
  input to time-major: ``nn.LSTM``'s count is the baseline) plus ``aten::_cudnn_rnn_flatten_weight`` calls
  and RNNStack's own one-chunk packings of a per-layer / DropConnect call, per training step;
- ``ms/step`` and ``x LSTM``: median time of a training step and its ratio to ``nn.LSTM``'s (TF32 as
  configured; default: torch's);
- ``peak MiB`` and ``x LSTM``: peak allocated memory of a training step above the model and data;
- ``max|diff|``: largest output difference to ``nn.LSTM`` with the same weights, TF32 off (no-dropout
  paths, eval mode; ``-`` where dropout makes it a different function);
- ``bf16 out/state``, ``fp16 out/state``: dtypes under ``torch.autocast("cuda", ...)`` after two calls
  with the state carried (the contract: state always float32);
- ``syncs/step``: host-device synchronisations of a training step, counted with
  ``torch.cuda.set_sync_debug_mode("warn")``;
- ``probe``: the gradient-flow probe under cuDNN — ``RNNStack.forward_steps`` in *training* mode
  (cuDNN refuses a backward through an eval-mode forward) with dropout off, then
  ``lightning_rnn.functional.per_lag_gradient_norms``; ``ok`` and G(K)/G(0), or the error;
- ``determ.``: two seeded runs of 3 SGD steps give bitwise equal parameters.

After the table, the module-level probe (``RNNLanguageModel.gradient_flow_probe``) and the eval-mode
probe are tried once each and their outcome printed.

Without CUDA it prints a note and exits 0 (``--device cpu`` runs the same checks on CPU, as a smoke test
of this script; the CUDA-only columns then read ``-``).

Usage::

    python benchmarks/gpu_check.py                  # on a machine with a GPU, ~1 minute
    python benchmarks/gpu_check.py --quick          # small sizes
    python benchmarks/gpu_check.py --device cpu --quick   # smoke test without a GPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

from lightning_rnn.functional.gradient_flow import per_lag_gradient_norms
from lightning_rnn.nn import RNNConfig, RNNStack

CONTIGUITY = "contiguous chunk"
ONE_CHUNK = "lightning_rnn.one_chunk_weights"  # record_function name in RNNStack


#: paths that compute exactly what nn.LSTM / nn.GRU computes (no dropout, zoneout or residual)
COMPARABLE = ("RNNStack lstm, no dropout (fused)", "RNNStack lstm, lengths (packed)", "RNNStack gru, no dropout (fused)")


def paths(f: int, h: int, layers: int) -> dict[str, Callable[[], nn.Module]]:
    """name -> constructor of a fresh model (built after seeding, so two builds are identical)."""
    return {
        "nn.LSTM (flattened)": lambda: nn.LSTM(f, h, layers, batch_first=True),
        "RNNStack lstm, no dropout (fused)": lambda: RNNStack("lstm", f, h, layers),
        "RNNStack lstm, bidirectional": lambda: RNNStack("lstm", f, h // 2, layers, bidirectional=True),
        "RNNStack lstm, lengths (packed)": lambda: RNNStack("lstm", f, h, layers),
        "RNNStack lstm, locked in/layer/out 0.3": lambda: RNNStack(
            "lstm", f, h, layers, input_dropout=0.3, layer_dropout=0.3, output_dropout=0.3
        ),
        "RNNStack lstm, residual": lambda: RNNStack("lstm", f, h, layers, residual=True),
        "RNNStack lstm, recurrent 0.3 weight": lambda: RNNStack("lstm", f, h, layers, recurrent_dropout=0.3),
        "RNNStack lstm, recurrent 0.3 state": lambda: RNNStack(
            "lstm", f, h, layers, recurrent_dropout=0.3, recurrent_dropout_mode="state"
        ),
        "RNNStack lstm, zoneout 0.1": lambda: RNNStack("lstm", f, h, layers, zoneout=0.1),
        "nn.GRU (flattened)": lambda: nn.GRU(f, h, layers, batch_first=True),
        "RNNStack gru, no dropout (fused)": lambda: RNNStack("gru", f, h, layers),
        "RNNStack gru, recurrent 0.3 state": lambda: RNNStack(
            "gru", f, h, layers, recurrent_dropout=0.3, recurrent_dropout_mode="state"
        ),
    }


def call(model: nn.Module, x: torch.Tensor, lengths: torch.Tensor | None, state=None):
    if isinstance(model, RNNStack):
        return model(x, state, lengths=lengths)
    return model(x, state)


def loss_of(out: torch.Tensor) -> torch.Tensor:
    return out.float().square().mean()


def train_step(model: nn.Module, x: torch.Tensor, lengths: torch.Tensor | None) -> None:
    out, _ = call(model, x, lengths)
    loss_of(out).backward()


def count_warnings(fn: Callable[[], None], needle: str) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return sum(needle in str(w.message) for w in caught)


def weight_copies(model: nn.Module, x: torch.Tensor, lengths: torch.Tensor | None) -> int:
    """``aten::copy_`` inside ``aten::_cudnn_rnn*`` + weight flattenings + RNNStack's one-chunk packings."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        train_step(model, x, lengths)
    model.zero_grad(set_to_none=True)
    n = 0
    for e in prof.events():
        if e.name in ("aten::_cudnn_rnn_flatten_weight", ONE_CHUNK):
            n += 1
        elif e.name == "aten::copy_":
            parent = e.cpu_parent
            while parent is not None and not parent.name.startswith("aten::_cudnn_rnn"):
                parent = parent.cpu_parent
            n += parent is not None
    return n


def timed(fn: Callable[[], None], device: torch.device, reps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_mib(fn: Callable[[], None], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def amp_dtypes(model: nn.Module, x, lengths, device: torch.device, dtype: torch.dtype) -> str:
    try:
        with torch.autocast(device.type, dtype=dtype):
            out, state = call(model, x, lengths)
            out, state = call(model, x, lengths, state)  # carried state
            loss_of(out).backward()
        model.zero_grad(set_to_none=True)
        s = state[0] if isinstance(state, tuple) else state
        return f"{_short(out.dtype)}/{_short(s.dtype)}"
    except RuntimeError as err:
        return f"error: {str(err).splitlines()[0][:40]}"


def _short(dtype: torch.dtype) -> str:
    return {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


def host_syncs(model: nn.Module, x, lengths, device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        n = count_warnings(lambda: train_step(model, x, lengths), "synchroniz")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    model.zero_grad(set_to_none=True)
    return n


def max_diff_to_lstm(name: str, model: nn.Module, ref: nn.Module, x, lengths) -> str:
    if name not in COMPARABLE or type(ref) is not _TORCH[model.cell]:
        return "-"
    ref.load_state_dict(model.state_dict())
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        model.eval(), ref.eval()
        with torch.no_grad():
            out, _ = call(model, x, lengths)
            if lengths is not None:
                packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
                out_ref, _ = nn.utils.rnn.pad_packed_sequence(ref(packed)[0], batch_first=True, total_length=x.shape[1])
            else:
                out_ref, _ = ref(x)
        return f"{float((out - out_ref).abs().max()):.1e}"
    finally:
        model.train(), ref.train()
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


_TORCH = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


def probe(model: nn.Module, x: torch.Tensor, max_lag: int) -> str:
    """The gradient-flow probe in training mode with dropout switched off (a dropout-free twin)."""
    if not isinstance(model, RNNStack) or model.bidirectional:
        return "-"
    twin = RNNStack(model.cell, model.input_size, model.hidden_size, model.num_layers,
                    residual=model.residual, device=x.device)
    twin.load_state_dict(model.state_dict())
    twin.train()  # cuDNN: backward only through a training-mode forward; no dropout is configured
    try:
        out, states = twin.forward_steps(x)
        top = [(s[0] if isinstance(s, tuple) else s)[-1] for s in states]
        losses = torch.stack([t.float().square().mean(-1) for t in top], 1)  # (N, L)
        res = per_lag_gradient_norms(states, losses, max_lag, num_targets=4, backward_passes=1)
        return f"ok {float(res.normalized[-1]):.1e}"
    except RuntimeError as err:
        return f"error: {str(err).splitlines()[0][:40]}"


def determinism(build: Callable[[], nn.Module], x, lengths, device: torch.device) -> str:
    finals = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build().to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            train_step(model, x, lengths)
            opt.step()
        finals.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    return "yes" if torch.equal(*finals) else f"no ({float((finals[0] - finals[1]).abs().max()):.1e})"


def module_probe_notes(device: torch.device, f: int, h: int) -> list[str]:
    """The module-level probe and the eval-mode probe, once each."""
    notes = []
    try:
        from lightning_rnn import RNNLanguageModel

        lm = RNNLanguageModel(encoder=RNNConfig(hidden_size=h), vocab_size=50, embedding_dim=f).to(device)
        lm.train()
        ids = torch.randint(0, 50, (4, 17), device=device)
        batch = (ids[:, :-1], ids[:, 1:])
        states, losses = lm.gradient_flow_probe(batch, max_steps=16)
        res = per_lag_gradient_norms(states, losses, 8, num_targets=4, backward_passes=1)
        notes.append(f"RNNLanguageModel.gradient_flow_probe (module in train mode): ok, G(8)/G(0) = "
                     f"{float(res.normalized[-1]):.2e}")
    except Exception as err:  # noqa: BLE001 - reported, not raised: this is a check script
        notes.append(f"RNNLanguageModel.gradient_flow_probe: {type(err).__name__}: {str(err).splitlines()[0]}")
    try:
        m = RNNStack("lstm", f, h, device=device).eval()
        out, states = m.forward_steps(torch.randn(4, 16, f, device=device))
        torch.autograd.grad(out.sum(), states[0][0])
        notes.append("eval-mode forward_steps + backward: accepted by this backend")
    except RuntimeError as err:
        notes.append(f"eval-mode forward_steps + backward: refused ({str(err).splitlines()[0]})")
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--input-size", type=int, default=512)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check (run it on a machine with a GPU).")
        sys.exit(0)
    if args.quick:
        args.input_size = args.hidden_size = 64
        args.seq_len, args.reps, args.warmup = 16, 3, 1
    f, h, layers, n, length = args.input_size, args.hidden_size, args.num_layers, args.batch_size, args.seq_len
    torch.manual_seed(0)
    x = torch.randn(n, length, f, device=device)
    full_lengths = torch.randint(length // 2, length + 1, (n,))
    full_lengths[0] = length
    builds = paths(f, h, layers)
    refs = {"lstm": nn.LSTM(f, h, layers, batch_first=True).to(device),
            "gru": nn.GRU(f, h, layers, batch_first=True).to(device)}

    rows, base_ms, base_mib = [], {}, {}
    for name, build in builds.items():
        torch.manual_seed(0)
        model = build().to(device).train()
        lengths = full_lengths if "packed" in name else None
        step = lambda m=model, ln=lengths: (train_step(m, x, ln), m.zero_grad(set_to_none=True))  # noqa: E731
        warn = count_warnings(lambda m=model, ln=lengths: call(m, x, ln), CONTIGUITY)
        copies = weight_copies(model, x, lengths) if device.type == "cuda" else None
        ms = timed(step, device, args.reps, args.warmup) * 1e3
        mib = peak_mib(step, device)
        cell = "gru" if "gru" in name.lower() else "lstm"
        if name.startswith("nn."):
            base_ms[cell], base_mib[cell] = ms, mib
        rows.append([
            name, str(warn), "-" if copies is None else str(copies), f"{ms:.2f}", f"{base_ms[cell] / ms:.2f}",
            "-" if mib is None else f"{mib:.0f}",
            "-" if mib is None or not base_mib[cell] else f"{mib / base_mib[cell]:.2f}",
            max_diff_to_lstm(name, model, refs[cell], x, lengths),
            amp_dtypes(model, x, lengths, device, torch.bfloat16),
            amp_dtypes(model, x, lengths, device, torch.float16),
            str(host_syncs(model, x, lengths, device) if device.type == "cuda" else "-"),
            probe(model, x[:, : min(length, 16)], max_lag=min(length, 16) - 1),
            determinism(build, x, lengths, device),
        ])

    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"gpu_check on {dev}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}; "
          f"{layers} layers x {h}, input {f}, batch {n}, {length} steps; median of {args.reps}; TF32 matmul "
          f"{torch.backends.cuda.matmul.allow_tf32}, cuDNN TF32 {torch.backends.cudnn.allow_tf32} (off for max|diff|)\n")
    header = ["path", "warn/call", "copies/step", "ms/step", "x LSTM", "peak MiB", "x LSTM", "max|diff|",
              "bf16 out/state", "fp16 out/state", "syncs/step", "probe (train)", "determ."]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    for note in module_probe_notes(device, f, h):
        print(note)


if __name__ == "__main__":
    main()
