#!/usr/bin/env bash
# The main job on the embedded default data. Extra arguments go to `cinemamba demo`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
source scripts/env.sh
exec .venv/bin/cinemamba demo "$@"
