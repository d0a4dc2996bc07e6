"""lightning_rnn.functional."""

__all__: list[str] = []
