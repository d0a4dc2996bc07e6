"""Exit and W&B plumbing of the ``lightning-rnn`` command: one-line user errors, exit status 2."""

from __future__ import annotations

import os
import sys

__all__ = ["CLIError", "PROG", "TRACEBACK_ENV", "exit_with", "finish_wandb", "one_line"]

PROG = "lightning-rnn"
#: set this environment variable to see the full traceback instead of the one-line error
TRACEBACK_ENV = "LIGHTNING_RNN_TRACEBACK"


class CLIError(SystemExit):
    """A user error: printed as one line ``lightning-rnn: error: <message>``, exit status 2."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def one_line(err: BaseException) -> str:
    """The first line of the innermost ValueError/TypeError/OSError message that ``err`` wraps."""
    while err.__cause__ is not None and isinstance(err.__cause__, ValueError | TypeError | OSError):
        err = err.__cause__  # jsonargparse wraps errors of link functions / class instantiation
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def finish_wandb(exit_code: int | None = None) -> None:
    """Close a W&B run the command opened, so its offline directory is complete (summary written)."""
    if "wandb" not in sys.modules:
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)


def exit_with(message: str, err: BaseException) -> None:
    """Print ``lightning-rnn: error: <message>`` and exit with status 2 (or re-raise ``err`` when
    ``LIGHTNING_RNN_TRACEBACK`` is set)."""
    if os.environ.get(TRACEBACK_ENV):
        raise err
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    finish_wandb(exit_code=2)
    raise SystemExit(2)
