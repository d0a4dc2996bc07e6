"""What this machine's CPU kernels can do, for tests whose model choice depends on it."""

from __future__ import annotations

import functools

import torch


@functools.cache
def cpu_bf16_lstm_supported() -> bool:
    """Whether ``nn.LSTM`` runs under ``torch.autocast("cpu", torch.bfloat16)`` here.

    oneDNN has no bf16 LSTM primitive on CPUs without AVX-512 (BF16) support: the forward raises "could not
    create a primitive descriptor for the LSTM forward propagation primitive". Tests of bf16 clipping then
    use models built from ``nn.Linear`` instead (bf16 matmuls exist everywhere), so on such machines the
    bf16 LSTM path itself is not exercised.
    """
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = torch.nn.LSTM(2, 2, batch_first=True)(torch.randn(1, 3, 2, requires_grad=True))
            out.float().sum().backward()
    except RuntimeError:
        return False
    return True
