import os
import sys

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _seed_and_finish_wandb():
    torch.manual_seed(0)
    yield
    # A W&B run left open by one test would be reused by the next WandbLogger (its files land elsewhere).
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
