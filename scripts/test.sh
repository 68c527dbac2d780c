#!/usr/bin/env bash
# The whole test suite: set up if needed, lint, then pytest (slow tests excluded; pass -m slow for them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
source scripts/env.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
