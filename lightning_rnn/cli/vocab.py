"""The vocabulary inside checkpoints: the data module's own ``state_dict`` (Lightning saves it under the data
module's class name), or — for a data module whose state does not carry it — :class:`VocabInCheckpoint`."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_rnn.data.vocab import Vocab

__all__ = ["VOCAB_KEY", "VocabInCheckpoint", "vocab_from_checkpoint", "vocab_of"]

#: Key of the vocabulary (``Vocab.to_dict()``) written by :class:`VocabInCheckpoint`.
VOCAB_KEY = "lightning_rnn_vocab"


def vocab_of(datamodule: Any) -> Any:
    """The data module's vocabulary (building it if the data module builds it lazily), or None."""
    vocab = getattr(datamodule, "vocab", None)
    if vocab is None and callable(getattr(datamodule, "build_vocab", None)):
        vocab = datamodule.build_vocab()
    return vocab


def _state_has_vocab(datamodule: Any) -> bool:
    state_dict = getattr(datamodule, "state_dict", None)
    try:
        state = state_dict() if callable(state_dict) else None
    except Exception:  # a data module whose state needs setup first: let the callback store the vocabulary
        return False
    return isinstance(state, dict) and isinstance(state.get("vocab"), dict)


class VocabInCheckpoint(Callback):
    """Stores the data module's vocabulary in every checkpoint (key ``"lightning_rnn_vocab"``) when the data
    module's own ``state_dict`` does not (the shipped text data modules' does).

    The CLI adds it when needed; add it to a ``Trainer`` of your own scripts if your data module has a
    :class:`~lightning_rnn.data.Vocab` ``vocab`` but no ``state_dict`` carrying it, for ``lightning-rnn generate``.
    """

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        vocab = vocab_of(datamodule) if datamodule is not None else None
        if isinstance(vocab, Vocab) and not _state_has_vocab(datamodule):
            checkpoint[VOCAB_KEY] = vocab.to_dict()

    @staticmethod
    def needed(datamodule: Any) -> bool:
        """Whether a data module's vocabulary would be missing from checkpoints without this callback."""
        return isinstance(vocab_of(datamodule), Vocab) and not _state_has_vocab(datamodule)


def vocab_from_checkpoint(checkpoint: dict[str, Any]) -> Vocab | None:
    """The vocabulary a checkpoint carries (a data module's state, or :data:`VOCAB_KEY`), or None."""
    for value in checkpoint.values():
        if isinstance(value, dict) and isinstance(value.get("vocab"), dict) and "kind" in value["vocab"]:
            return Vocab.from_dict(value["vocab"])
    saved = checkpoint.get(VOCAB_KEY)
    if isinstance(saved, dict):
        return Vocab.from_dict(saved.get("state", saved))  # older checkpoints: {"class_path", "state"}
    return None
