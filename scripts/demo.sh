#!/usr/bin/env bash
# The main demo: installs lightning-rnn (CPU torch first) and trains a character-level LSTM language model
# on the Python standard library's source with truncated BPTT, step-tied dropout, the diagnostics callbacks
# and adaptive gradient clipping, logging to W&B offline under ./runs. At the end it prints the validation
# bits per character, a generated sample and where the run, checkpoint and plots are.
#
# Usage: bash scripts/demo.sh [extra lightning-rnn options]
#   bash scripts/demo.sh --trainer.max_steps=30                     # 30-second smoke run
#   bash scripts/demo.sh --data.init_args.source=path/to/text.txt   # your own text (file or directory)
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
python -m pip install --quiet --disable-pip-version-check -e .
export WANDB_MODE="${WANDB_MODE:-offline}" WANDB_SILENT="${WANDB_SILENT:-true}"
lightning-rnn fit --config examples/char_lm.yaml "$@"
echo
echo "Sample more text:  lightning-rnn generate --ckpt <best checkpoint above> --prompt 'def ' --max_new_tokens 300"
echo "Upload the run:    wandb sync runs/wandb/offline-run-*   (or set WANDB_MODE=online before training)"
