"""BucketBatchSampler under Lightning: a new shuffle every epoch, the same per seed and epoch, disjoint ranks."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from lightning_rnn import RNNClassifier, RNNConfig
from lightning_rnn.data import BucketBatchSampler, pad_collate


class _Items(torch.utils.data.Dataset):
    def __init__(self, n: int = 24) -> None:
        g = torch.Generator().manual_seed(0)
        self.lengths = torch.randint(2, 9, (n,), generator=g).tolist()
        self.items = [torch.randint(1, 10, (m,), generator=g) for m in self.lengths]
        self.labels = torch.randint(0, 2, (n,), generator=g).tolist()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return {"inputs": self.items[i], "labels": torch.tensor(self.labels[i]), "index": torch.tensor(i)}


def _collate(items):
    out = pad_collate([(it["inputs"], it["labels"]) for it in items])
    out["index"] = torch.stack([it["index"] for it in items])
    return out


class _Seen(pl.Callback):
    def __init__(self) -> None:
        self.epochs: list[list[list[int]]] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.epochs.append([])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.epochs[-1].append(batch.pop("index").tolist())


def _fit(seed: int, epochs: int = 3) -> list[list[list[int]]]:
    data = _Items()
    sampler = BucketBatchSampler(data.lengths, 4, seed=seed, bucket_size_multiplier=2)
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=_collate)
    seen = _Seen()
    model = RNNClassifier(2, encoder=RNNConfig(hidden_size=4), vocab_size=10, embedding_dim=4, tbptt_steps=3)
    pl.Trainer(
        accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[seen],
    ).fit(model, loader)
    return seen.epochs


def test_lightning_reshuffles_every_epoch_deterministically_per_seed():
    epochs = _fit(seed=3)
    assert len(epochs) == 3
    for batches in epochs:  # every item once per epoch
        assert sorted(i for b in batches for i in b) == list(range(24))
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]  # set_epoch reached the batch sampler
    for e, batches in enumerate(epochs):  # what set_epoch(e) gives, outside Lightning
        ref = BucketBatchSampler(_Items().lengths, 4, seed=3, bucket_size_multiplier=2)
        ref.set_epoch(e)
        assert batches == list(ref)
    assert _fit(seed=3, epochs=2) == epochs[:2]  # deterministic per seed and epoch


def test_ranks_are_disjoint_every_epoch():
    lengths = list(range(1, 40))
    for epoch in range(3):
        shards = []
        for rank in range(3):
            s = BucketBatchSampler(lengths, 4, seed=1, num_replicas=3, rank=rank)
            s.sampler.set_epoch(epoch)
            shards.append(list(s))
        flat = [i for shard in shards for b in shard for i in b]
        assert len(flat) == len(set(flat))
        assert len({len(shard) for shard in shards}) == 1
