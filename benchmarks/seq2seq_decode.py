"""Decoding throughput of Seq2SeqAttention: greedy and beam-5, sequences/s vs batch size.

Compares batched decoding with decoding one sequence at a time (batch size 1, what a row-by-row
loop does), and beam-5 with greedy. The model (Bahdanau attention, BiLSTM encoder) is untrained with
the EOS logit pushed down, so every hypothesis runs exactly ``--out_len`` steps and every configuration
does the same work per sequence. Repetitions are interleaved across configurations; medians reported.

    python benchmarks/seq2seq_decode.py           # ~1-2 minutes on CPU
    python benchmarks/seq2seq_decode.py --quick   # a few seconds
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lightning_rnn import RNNConfig, Seq2SeqAttention


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--src_len", type=int, default=25)
    p.add_argument("--out_len", type=int, default=30)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--vocab", type=int, default=53)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--sequences", type=int, default=64, help="sequences decoded per measurement (>= batch)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.batch_sizes, args.out_len, args.reps, args.sequences = [1, 8], 5, 1, 8
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = Seq2SeqAttention(args.vocab, args.vocab, encoder=RNNConfig(bidirectional=True, hidden_size=args.hidden), embedding_dim=32, decoder_hidden_size=2 * args.hidden, attention="bahdanau").eval()
    with torch.no_grad():
        model.model.decoder.generator.bias[model.hparams.eos_id] = -1e4  # never stop early: fixed work
    src = torch.randint(3, args.vocab, (max(args.sequences, max(args.batch_sizes)), args.src_len))
    lengths = torch.full((src.size(0),), args.src_len)

    def run(batch: int, beam: int) -> float:
        n = max(args.sequences // batch, 1) * batch
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            out = model.generate(src[start : start + batch], lengths[start : start + batch], beam_size=beam,
                                 max_len=args.out_len)
            if int(out.lengths.min()) != args.out_len:
                raise RuntimeError("a hypothesis stopped early; the comparison would be unfair")
        return n / (time.perf_counter() - t0)

    configs = [(b, k) for b in args.batch_sizes for k in (1, args.beam)]
    run(args.batch_sizes[0], 1)  # warm-up
    samples: dict[tuple[int, int], list[float]] = {c: [] for c in configs}
    for _ in range(args.reps):
        for c in configs:
            samples[c].append(run(*c))
    med = {c: statistics.median(v) for c, v in samples.items()}
    base = {k: med[(args.batch_sizes[0], k)] for k in (1, args.beam)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); source length {args.src_len}, "
          f"output length {args.out_len}, BiLSTM {args.hidden}x2 -> LSTM {2 * args.hidden}, Bahdanau attention, "
          f"vocab {args.vocab}; median of {args.reps}")
    print(f"| batch | greedy seq/s | beam-{args.beam} seq/s | greedy vs batch {args.batch_sizes[0]} | "
          f"beam-{args.beam} vs batch {args.batch_sizes[0]} | beam-{args.beam} / greedy time |")
    print("|---|---|---|---|---|---|")
    for b in args.batch_sizes:
        g, k = med[(b, 1)], med[(b, args.beam)]
        print(f"| {b} | {g:.1f} | {k:.1f} | {g / base[1]:.1f}x | {k / base[args.beam]:.1f}x | {g / k:.2f}x |")


if __name__ == "__main__":
    main()
