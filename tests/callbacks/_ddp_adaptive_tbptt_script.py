"""2-process CPU DDP run for tests/callbacks/test_adaptive_tbptt_ddp.py (not collected by pytest).

Usage: python _ddp_adaptive_tbptt_script.py OUT_DIR. Lightning's DDP launcher re-runs this script once per extra
rank; every rank writes OUT_DIR/rank{r}.json.

Two fits per process, both ``strategy="ddp"`` on 2 CPU processes (gloo):

- ``full``: 3 epochs of a short-memory recurrent model (tanh, ‖W‖ = 0.3: gradients die within a few steps)
  started at ``tbptt_steps=24``, with ``AdaptiveTBPTT`` probing every 4 optimizer steps, so k shrinks
  towards ``min_steps`` during the run; a checkpoint is written after every epoch.
- ``resumed``: a fresh model and callback (again ``tbptt_steps=24``) resumed from the checkpoint after
  epoch 2 and trained through epoch 3, to compare with the last epoch of ``full``.

Per fit and rank: the ``tbptt_steps`` of every batch and of every optimizer step, the number of optimizer
steps, the callback's ``state_dict``, the final parameters, how often the probe ran, and a fingerprint of the
rank's local batches (the ranks must see different data, or the test proves little).

With ``LRNN_FAIL_PROBE=AdaptiveTBPTT`` (or ``GradientFlowMonitor``) in the environment it instead fits once with
that callback and a probe that raises on rank 0: every rank must stop with an error, none may hang.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from lightning_rnn.callbacks import AdaptiveTBPTT, GradientFlowMonitor
from tests.callbacks._diagnostics_models import FixedMemoryRNN  # noqa: E402

START_K = 24
LENGTH = 48  # time steps per batch (k = 24: 2 optimizer steps per batch; k = 2: 24)
ROWS = 24  # 2 ranks x 3 batches of 4 rows per epoch
CALLBACK_KWARGS: dict[str, Any] = dict(
    every_n_steps=4, bias_bound=0.1, min_steps=2, max_steps=40, probe_steps=30, num_targets=4, smoothing=0.3,
)


class ShortMemoryRNN(FixedMemoryRNN):
    """FixedMemoryRNN("tanh", 0.3): every Jacobian has norm <= 0.3; counts its probe calls (rank 0 only)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("tanh", 0.3, lr=0.05, **kwargs)
        self.probe_calls = 0

    def gradient_flow_probe(self, batch: Any, max_steps: int | None = None):
        self.probe_calls += 1
        if os.environ.get("LRNN_FAIL_PROBE") and self.global_rank == 0:
            raise RuntimeError("the probe broke on purpose")
        return super().gradient_flow_probe(batch, max_steps)


class Record(pl.Callback):
    """The k in effect at every batch and at every optimizer step (inside ``optimizer.step()``)."""

    def __init__(self) -> None:
        self.batch_k: list[int | None] = []
        self.step_k: list[int | None] = []
        self.batch_sums: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch_k.append(pl_module.tbptt_steps)
        self.batch_sums.append(float(batch[0].double().sum()))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.step_k.append(pl_module.tbptt_steps)


def _data() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(ROWS, LENGTH, 3, generator=g)  # (N, L, 3)
    y = x.cumsum(1)[..., :1] * 0.1  # (N, L, 1)
    return DataLoader(TensorDataset(x, y), batch_size=4)  # the DDP sampler deals rows to ranks


def _fit(out_dir: Path, max_epochs: int, ckpt_path: str | None = None) -> dict[str, Any]:
    pl.seed_everything(0, verbose=False)
    model = ShortMemoryRNN(tbptt_steps=START_K)
    fail = os.environ.get("LRNN_FAIL_PROBE")
    cb = GradientFlowMonitor(every_n_steps=4, max_lag=8, heatmap=False) if fail == "GradientFlowMonitor" \
        else AdaptiveTBPTT(**CALLBACK_KWARGS)
    record = Record()
    callbacks: list[pl.Callback] = [cb, record]
    if ckpt_path is None:
        callbacks.append(ModelCheckpoint(dirpath=out_dir / "ckpt", every_n_epochs=1, save_top_k=-1))
    trainer = pl.Trainer(
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=ckpt_path is None,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(out_dir),
    )
    trainer.fit(model, _data(), ckpt_path=ckpt_path)
    return {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "batch_k": record.batch_k,
        "step_k": record.step_k,
        "batch_sums": record.batch_sums,
        "global_step": trainer.global_step,
        "final_k": model.tbptt_steps,
        "state": cb.state_dict(),
        "probe_calls": model.probe_calls,
        "params": [p.detach().double().reshape(-1).tolist() for p in model.parameters()],
    }


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    out = Path(out_dir)
    if os.environ.get("LRNN_FAIL_PROBE"):
        _fit(out, max_epochs=1)
        return
    result = {"full": _fit(out, max_epochs=3)}
    ckpts = glob.glob(str(out / "ckpt" / "epoch=1-*.ckpt"))  # after the 2nd epoch (written by rank 0)
    assert len(ckpts) == 1, ckpts
    result["resumed"] = _fit(out, max_epochs=3, ckpt_path=ckpts[0])
    result["callback_kwargs"] = CALLBACK_KWARGS
    result["start_k"] = START_K
    result["length"] = LENGTH
    (out / f"rank{result['full']['rank']}.json").write_text(json.dumps(result, default=float))


if __name__ == "__main__":
    main(sys.argv[1])
