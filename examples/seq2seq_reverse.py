"""Reversal task: attention vs. a plain encoder-decoder, by source length (Bahdanau et al. 2014, Figure 2).

Trains three :class:`lightning_rnn.Seq2SeqAttention` models on reversing sequences of integers (0-49,
train lengths 1-25; joeynmt's task) — Bahdanau attention, Luong ("general") attention with input
feeding, and no attention — then decodes a test set with lengths 1-30 (26-30 never seen in training)
greedily and reports exact match and BLEU per source length. Saves the plot (default
``docs/seq2seq_reverse.png``) and prints a markdown table.

    python examples/seq2seq_reverse.py             # a few CPU minutes
    python examples/seq2seq_reverse.py --quick     # seconds, smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import time

import lightning as L
import torch
from torch.utils.data import DataLoader
from torchmetrics.functional.text import bleu_score

from lightning_rnn import RNNConfig, Seq2SeqAttention
from lightning_rnn.data.seq2seq import ReversalDataset, Seq2SeqCollate, seq2seq_collate
from lightning_rnn.modules.seq2seq import strip_hypotheses

MODELS = {
    "Bahdanau": {"attention": "bahdanau"},
    "Luong (general)": {"attention": "luong_general"},
    "no attention": {"attention": "none"},
}


def evaluate(model: Seq2SeqAttention, test: ReversalDataset, batch_size: int = 256) -> dict[int, dict[str, float]]:
    """Greedy decoding; exact match and corpus BLEU per source length."""
    model.eval()
    by_len: dict[int, tuple[list[str], list[str], list[bool]]] = {}
    pairs = [test[i] for i in range(len(test))]
    for start in range(0, len(pairs), batch_size):
        b = seq2seq_collate(pairs[start : start + batch_size])
        out = model.generate(b["src"], b["src_lengths"], beam_size=1, max_len=40)
        hyps = strip_hypotheses(out.tokens, out.lengths, model.hparams.eos_id)
        for (src, tgt), hyp in zip(pairs[start : start + batch_size], hyps):
            h, r, ok = by_len.setdefault(len(src), ([], [], []))
            h.append(" ".join(map(str, hyp)))
            r.append(" ".join(map(str, tgt)))
            ok.append(hyp == tgt)
    result = {}
    for n in sorted(by_len):
        h, r, ok = by_len[n]
        result[n] = {"exact": sum(ok) / len(ok), "bleu": float(bleu_score(h, [[x] for x in r], n_gram=min(4, n)))}
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=700, help="optimizer steps per model")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--hidden", type=int, default=64, help="encoder hidden size per direction (decoder: 2x)")
    p.add_argument("--embedding", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--train_max_len", type=int, default=25)
    p.add_argument("--test_max_len", type=int, default=30)
    p.add_argument("--test_per_len", type=int, default=40)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (tiny models: 1 is fastest)")
    p.add_argument("--out", default="docs/seq2seq_reverse.png")
    p.add_argument("--quick", action="store_true", help="a few seconds: tiny run, no files written")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.quick:
        args.steps, args.test_per_len, args.hidden = 20, 4, 16
    torch.set_num_threads(args.threads)

    train = ReversalDataset(args.steps * args.batch_size, num_symbols=50, min_len=1, max_len=args.train_max_len,
                            seed=args.seed + 1)
    tests = [ReversalDataset(args.test_per_len, num_symbols=50, min_len=n, max_len=n, seed=1000 + n)
             for n in range(1, args.test_max_len + 1)]
    test_pairs = ReversalDataset.__new__(ReversalDataset)
    test_pairs.samples = [s for t in tests for s in t.samples]
    test_pairs.vocab_size = train.vocab_size

    results: dict[str, dict[int, dict[str, float]]] = {}
    examples = {}
    for name, kw in MODELS.items():
        L.seed_everything(args.seed, verbose=False)
        model = Seq2SeqAttention(train.vocab_size, train.vocab_size, encoder=RNNConfig(bidirectional=True, hidden_size=args.hidden), embedding_dim=args.embedding, decoder_hidden_size=2 * args.hidden, lr=args.lr, num_attention_maps=0, **kw)
        trainer = L.Trainer(
            max_steps=args.steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, gradient_clip_val=1.0, accelerator="cpu", devices=1,
        )
        t0 = time.perf_counter()
        loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, collate_fn=Seq2SeqCollate())
        trainer.fit(model, loader)
        seconds = time.perf_counter() - t0
        results[name] = evaluate(model, test_pairs)
        seen = [v for n, v in results[name].items() if n <= args.train_max_len]
        unseen = [v for n, v in results[name].items() if n > args.train_max_len]
        mean = lambda rows, k: sum(r[k] for r in rows) / max(len(rows), 1)  # noqa: E731
        print(f"{name:16s} train {seconds:6.1f}s  exact(<= {args.train_max_len}) {mean(seen, 'exact'):.3f}  "
              f"exact(> {args.train_max_len}) {mean(unseen, 'exact'):.3f}  BLEU(<= {args.train_max_len}) "
              f"{100 * mean(seen, 'bleu'):.1f}  BLEU(> {args.train_max_len}) {100 * mean(unseen, 'bleu'):.1f}",
              flush=True)
        if kw["attention"] == "bahdanau":
            src = tests[11].samples[0]  # a length-12 example
            b = seq2seq_collate([(src, src[::-1])])
            out = model.generate(b["src"], b["src_lengths"], max_len=40, return_attention=True)
            examples[name] = (src, out.tokens[0, : int(out.lengths[0])].tolist(), out.attention[0, : int(out.lengths[0])])

    lengths = sorted(next(iter(results.values())))
    print("\n| source length | " + " | ".join(f"{m} exact / BLEU" for m in results) + " |")
    print("|---|" + "---|" * len(results))
    for n in lengths:
        if n in (1, 5, 10, 15, 20, 25, 26, 28, 30) or args.quick:
            cells = [f"{results[m][n]['exact']:.2f} / {100 * results[m][n]['bleu']:.1f}" for m in results]
            print(f"| {n} | " + " | ".join(cells) + " |")
    if args.quick:
        return

    from matplotlib.figure import Figure  # no pyplot, no global backend change

    fig = Figure(figsize=(15, 4.2))
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 0.8]})
    for m, res in results.items():
        axes[0].plot(lengths, [res[n]["exact"] for n in lengths], marker="o", ms=3, label=m)
        axes[1].plot(lengths, [100 * res[n]["bleu"] for n in lengths], marker="o", ms=3, label=m)
    for ax, ylabel in zip(axes[:2], ("exact match", "BLEU")):
        ax.axvline(args.train_max_len + 0.5, color="grey", ls="--", lw=1)
        ax.text(args.train_max_len + 0.7, ax.get_ylim()[0], "unseen\nlengths", fontsize=7, va="bottom")
        ax.set_xlabel("source length")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].set_title(f"Reversal, {args.steps} steps x {args.batch_size}, greedy", fontsize=9)
    axes[1].set_title("BLEU by source length (cf. Bahdanau et al. 2014, Fig. 2)", fontsize=9)
    src, hyp, attn = examples["Bahdanau"]
    w = attn[:, : len(src)].numpy()
    axes[2].imshow(w, cmap="Greys", vmin=0, vmax=1, aspect="auto")
    axes[2].set_xticks(range(len(src)), [str(s) for s in src], fontsize=6, rotation=90)
    axes[2].set_yticks(range(len(hyp)), [str(t) if t != 2 else "</s>" for t in hyp], fontsize=6)
    axes[2].set_xlabel("source")
    axes[2].set_ylabel("generated")
    axes[2].set_title("Bahdanau attention (anti-diagonal = reversal)", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    fig.savefig(args.out, dpi=110)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    print(f"\nsaved {args.out}")


if __name__ == "__main__":
    main()
