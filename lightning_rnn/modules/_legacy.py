"""Checkpoints of lightning-rnn 0.1.0, whose modules took the recurrent encoder's settings as flat keywords."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: the 0.1.0 constructor keywords that now live in ``encoder=RNNConfig(...)``
FLAT_ENCODER_KEYS = (
    "hidden_size", "num_layers", "cell", "bidirectional", "input_dropout", "layer_dropout", "output_dropout",
    "recurrent_dropout", "recurrent_dropout_mode", "zoneout",
)


def check_encoder_hparams(module: str, checkpoint: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose hyper-parameters hold the encoder as 0.1.0's flat keys.

    ``load_from_checkpoint`` passes only the keys the constructor accepts, so such a checkpoint would build the
    module with the *default* encoder (its dropout settings silently lost, or a size-mismatch error on the
    weights): this raises first, with the conversion.
    """
    hparams = checkpoint.get("hyper_parameters") or {}
    flat = [k for k in FLAT_ENCODER_KEYS if k in hparams]
    if flat and "encoder" not in hparams:
        raise ValueError(
            f"Expected the checkpoint's hyper-parameters to hold {module}'s recurrent stack under 'encoder' (an "
            f"RNNConfig dict), got the flat keys {flat} of lightning-rnn 0.1.0: loading would build the default "
            "encoder. Convert the file once: ckpt = torch.load(path, weights_only=True); hp = "
            "ckpt['hyper_parameters']; hp['encoder'] = {k: hp.pop(k) for k in " + repr(flat) + "}; "
            "torch.save(ckpt, path)"
        )
