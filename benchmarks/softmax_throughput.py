"""Training tokens/s of a word-level LSTM language model with V = 50k: full vs adaptive vs sampled softmax.

One process, one run: the three RNNLanguageModel variants (same embedding, same LSTM, same hidden size) take
training steps in interleaved rounds (full, adaptive, sampled, full, ...) on the same random batch, so
machine noise hits all three alike; we report the median step time of each and its ratio to the full softmax.
A step is forward + backward + Adam update of the whole model (embedding included), as in
``TBPTTModule.training_step``. Token ids are drawn from a Zipf distribution, as word frequencies are (the
adaptive softmax's tail clusters are rarely visited, as in real text).

Run::

    python benchmarks/softmax_throughput.py            # ~1-2 minutes
    python benchmarks/softmax_throughput.py --quick    # seconds
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lightning_rnn import RNNLanguageModel


def zipf_tokens(vocab: int, shape: tuple[int, int], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ranks = torch.arange(1, vocab + 1, dtype=torch.float64)
    probs = (1.0 / ranks) / (1.0 / ranks).sum()
    return torch.multinomial(probs, shape[0] * shape[1], replacement=True, generator=g).view(shape)


def step_fn(model: RNNLanguageModel, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor):
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out, _ = model.rnn(model.embedding(x))
        loss, _, _ = model.token_loss(out, y)
        loss.backward()
        opt.step()

    return step


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--vocab", type=int, default=50_000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--bptt", type=int, default=35)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--num-sampled", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.vocab, args.hidden, args.batch, args.bptt, args.rounds = 5000, 64, 8, 10, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    v = args.vocab
    cutoffs = [min(2000, v // 10), min(10000, v // 2)]
    common = dict(embedding_dim=args.hidden, hidden_size=args.hidden)
    torch.manual_seed(0)
    models = {
        "full": RNNLanguageModel(v, **common),
        "adaptive": RNNLanguageModel(v, output="adaptive", adaptive_cutoffs=cutoffs, **common),
        "sampled": RNNLanguageModel(v, output="sampled", num_sampled=args.num_sampled, **common),
    }
    tokens = zipf_tokens(v, (args.batch, args.bptt + 1), 0)
    x, y = tokens[:, :-1], tokens[:, 1:]
    steps = {}
    for name, m in models.items():
        m.train()
        steps[name] = step_fn(m, torch.optim.Adam(m.parameters(), 1e-3), x, y)
        steps[name]()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    tokens_per_step = args.batch * args.bptt
    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(
        f"V={v}, LSTM E=H={args.hidden}, batch {args.batch} x bptt {args.bptt} = {tokens_per_step} tokens/step, "
        f"adaptive cutoffs {cutoffs}, sampled S={args.num_sampled} (log-uniform), {args.rounds} interleaved rounds, "
        f"{torch.get_num_threads()} threads"
    )
    print("| output | median step (ms) | tokens/s | speed-up vs full |")
    print("|---|---|---|---|")
    for name, t in med.items():
        print(f"| {name} | {1000 * t:.1f} | {tokens_per_step / t:,.0f} | {med['full'] / t:.2f}x |")
    return {name: med["full"] / t for name, t in med.items()}


if __name__ == "__main__":
    main()
