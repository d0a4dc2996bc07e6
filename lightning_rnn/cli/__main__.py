"""``python -m lightning_rnn.cli``: the ``lightning-rnn`` command."""

from lightning_rnn.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
