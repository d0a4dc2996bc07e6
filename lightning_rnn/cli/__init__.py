"""The ``lightning-rnn`` command: Lightning's ``LightningCLI`` over the shipped modules, plus ``generate``.

Usage::

    lightning-rnn fit --config examples/char_lm.yaml                       # the main demo
    lightning-rnn fit --config examples/classify_code.yaml                 # RNNClassifier, stdlib snippets
    lightning-rnn fit --config examples/tagger_delay.yaml                  # RNNTagger + TBPTT, bit streams
    lightning-rnn fit --config examples/seq2seq_reverse.yaml               # Seq2SeqAttention, reversal
    lightning-rnn fit --config examples/char_lm.yaml --trainer.max_steps=30 --model.init_args.encoder.hidden_size=512
    lightning-rnn fit --config examples/char_lm.yaml --ckpt_path runs/checkpoints/last.ckpt    # resume exactly
    lightning-rnn validate --config examples/char_lm.yaml --ckpt_path runs/checkpoints/best.ckpt
    lightning-rnn generate --ckpt runs/checkpoints/best.ckpt --prompt "def " --max_new_tokens 200

The package, one concept per file:

- :mod:`~lightning_rnn.cli.parser`: :class:`LightningRNNCLI` (``fit | validate | test | predict``);
- :mod:`~lightning_rnn.cli.links`: which model arguments the data module fills in (:data:`DATA_LINKS`);
- :mod:`~lightning_rnn.cli.report`: the text printed after ``fit``;
- :mod:`~lightning_rnn.cli.generate`: ``lightning-rnn generate``;
- :mod:`~lightning_rnn.cli.vocab`: the vocabulary inside checkpoints;
- :mod:`~lightning_rnn.cli.sources`: early checks of ``--data.source``;
- :mod:`~lightning_rnn.cli.moved_options`: the hint for 0.1.0's flat encoder options;
- :mod:`~lightning_rnn.cli.errors`: one-line errors (``lightning-rnn: error: ...``, exit status 2; set
  ``LIGHTNING_RNN_TRACEBACK=1`` for the traceback) and closing the W&B run.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException

import lightning_rnn  # noqa: F401  (registers the shipped modules for `--model NAME`)
import lightning_rnn.callbacks  # noqa: F401
import lightning_rnn.data  # noqa: F401
from lightning_rnn.checkpoint_io import CheckpointError
from lightning_rnn.cli.errors import PROG, CLIError, exit_with, finish_wandb, one_line
from lightning_rnn.cli.generate import generate_main
from lightning_rnn.cli.links import DATA_LINKS
from lightning_rnn.cli.moved_options import moved_encoder_options
from lightning_rnn.cli.parser import LightningRNNCLI
from lightning_rnn.cli.report import fit_report
from lightning_rnn.cli.vocab import VOCAB_KEY, VocabInCheckpoint

__all__ = ["DATA_LINKS", "VOCAB_KEY", "CLIError", "LightningRNNCLI", "VocabInCheckpoint", "cli_main", "fit_report",
           "generate_main", "main"]


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``lightning-rnn`` (``[project.scripts]``). ``args`` defaults to ``sys.argv[1:]``.

    Exits with status 2 and a one-line message on a user error. Use :func:`cli_main` to get the
    :class:`LightningRNNCLI` object back (tests, notebooks).
    """
    try:
        cli_main(args)
    finally:
        finish_wandb()


def cli_main(args: Sequence[str] | None = None) -> Any:
    """Like :func:`main`, but returns the :class:`LightningRNNCLI` (or the text, for ``generate``)."""
    argv = list(sys.argv[1:] if args is None else args)
    try:
        if argv and argv[0] == "generate":
            return generate_main(argv[1:])
        return LightningRNNCLI(args=argv)
    except CLIError as err:
        exit_with(err.message, err)
    except SystemExit as err:  # the parser's own error (usage printed): hint at options moved under `encoder`
        moved = moved_encoder_options(argv) if err.code == 2 else []
        if moved:
            print(f"{PROG}: hint: the recurrent stack's settings moved under `encoder` (an RNNConfig): "
                  f"{', '.join(moved)} -> --model.init_args.encoder.<name>, or an `encoder:` block in the config",
                  file=sys.stderr)
        raise
    except CheckpointError as err:
        exit_with(str(err), err)
    except (ValueError, TypeError, FileNotFoundError, UnicodeDecodeError, OSError, MisconfigurationException) as err:
        # The library's argument checks raise ValueError/TypeError "Expected X, got Y": a user error.
        exit_with(one_line(err), err)
    except RuntimeError as err:
        if "state_dict" in str(err) or "size mismatch" in str(err):
            exit_with(f"the checkpoint does not match the model ({one_line(err)}): use the config the checkpoint "
                      "was trained with (or no --ckpt_path)", err)
        raise
