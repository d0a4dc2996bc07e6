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


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """What `lightning-rnn` sees in the CLI tests: a plain argv, W&B offline and silent, one-line errors."""
    monkeypatch.setattr(sys, "argv", ["lightning-rnn"])
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("LIGHTNING_RNN_TRACEBACK", raising=False)
