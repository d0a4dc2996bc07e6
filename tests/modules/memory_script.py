"""Peak RSS of one RNNLanguageModel training batch of length T. Usage: memory_script.py T K|none -> prints MiB."""

from __future__ import annotations

import resource
import sys

import lightning.pytorch as pl
import torch

from lightning_rnn import RNNConfig, RNNLanguageModel


def peak_rss_mib() -> float:
    """Peak resident memory of this process image. VmHWM (Linux) is reset by exec, unlike ru_maxrss,
    which keeps the parent's high-water mark across fork + exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    length, k = int(sys.argv[1]), None if sys.argv[2] == "none" else int(sys.argv[2])
    torch.set_num_threads(1)
    pl.seed_everything(0)
    tokens = torch.randint(0, 64, (16, length + 1))
    batch = (tokens[:, :-1], tokens[:, 1:])
    model = RNNLanguageModel(64, 32, encoder=RNNConfig(hidden_size=256), tbptt_steps=k, carry_state=False)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=-1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, torch.utils.data.DataLoader([batch], batch_size=None))
    print(peak_rss_mib())


if __name__ == "__main__":
    main()
