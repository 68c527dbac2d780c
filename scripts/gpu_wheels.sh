#!/usr/bin/env bash
# Fetch (here, with PyPI) the wheels a bare GPU machine needs to run scripts/gpu_check.sh:
# our packages' dependencies that a CUDA PyTorch image lacks, for CPython 3.12 on
# manylinux x86_64. torch, triton, numpy and the rest of the image are NOT fetched: the
# check installs around them. xformers (100+ MB) is left out: its layout test then skips.
#   bash scripts/gpu_wheels.sh .whl        # .whl/ is git-ignored; about 45 MB
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
WHEELDIR=${1:?usage: gpu_wheels.sh WHEELDIR}
PY=${PYTHON:-.venv/bin/python}
[[ -x $PY ]] || PY=python3
mkdir -p "$WHEELDIR"
# One version of each package: pip refuses a find-links folder offering two for one pin.
rm -f "$WHEELDIR"/*.whl
TARGET=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
  --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# Versions are the ones the project's own venv runs its tests with (pip list in .venv).
BINARY=(
  av==18.1.0                                     # video I/O (bundles FFmpeg: ~36 MB)
  webdataset==1.0.2 braceexpand==0.1.7           # shards
  omegaconf==2.4.0                               # configs (antlr4 runtime: sdist, built below)
  open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4   # text encoder
  lpips==0.1.4                                   # VAE perceptual loss
  hjson==3.1.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0
  typing-inspection==0.4.5 typing_extensions==4.16.0  # DeepSpeed's config parsing
  timm==1.0.31                                   # open_clip needs timm >= 1.0.17
)
"$PY" -m pip download -q --no-deps --only-binary=:all: "${TARGET[@]}" -d "$WHEELDIR" "${BINARY[@]}"
# DeepSpeed and the antlr4 runtime publish only sdists. DeepSpeed's ops are JIT-built at run
# time, so with DS_BUILD_OPS=0 its wheel is pure Python and builds here for any platform.
SRC=$(mktemp -d)
trap 'rm -rf "$SRC"' EXIT
"$PY" -m pip download -q --no-deps --no-binary=:all: -d "$SRC" deepspeed==0.19.8 \
  antlr4-python3-runtime==4.9.3
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELDIR" "$SRC"/*
ls -la "$WHEELDIR"
du -sh "$WHEELDIR"
