"""lightning_rnn.data."""

__all__: list[str] = []
