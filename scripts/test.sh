#!/usr/bin/env bash
# Installs lightning-rnn with its test dependencies (CPU torch first) and runs the test suite.
# Usage: bash scripts/test.sh [extra pytest args]
#   bash scripts/test.sh              # the fast default selection (tests marked slow are left out)
#   bash scripts/test.sh -m slow      # only the slow tests (subprocess, DDP, whole-CLI runs)
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
export WANDB_MODE=offline WANDB_SILENT=true
python -m pytest lightning_rnn tests "$@"
