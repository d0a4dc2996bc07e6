"""lightning_rnn.callbacks."""

__all__: list[str] = []
