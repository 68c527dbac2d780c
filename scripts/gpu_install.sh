#!/usr/bin/env bash
# Install our five packages (editable) into VENV on top of a machine's own PyTorch, without
# replacing it: the part of scripts/gpu_check.sh that needs no GPU.
#   bash scripts/gpu_install.sh WHEELDIR VENV     (PYTHON=the interpreter that holds torch)
# VENV sees the host interpreter's site-packages (torch, triton, numpy, ...) through a .pth
# file: `venv --system-site-packages` alone is not enough when the host python is itself a
# venv (as on the GPU image, /opt/torch/.venv), whose packages a child venv does not inherit.
# Missing dependencies come from WHEELDIR only (--no-index); a constraints file pins the host's
# torch, torchvision, torchaudio, triton, numpy and NVIDIA libraries at their installed
# versions, so a wheel that wants another torch makes the install fail instead of replacing it.
# GPU_INSTALL_EXTRA (space-separated requirements, e.g. "xformers") adds optional packages.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
WHEELDIR=${1:?usage: gpu_install.sh WHEELDIR VENV}
VENV=${2:?usage: gpu_install.sh WHEELDIR VENV}
PY=${PYTHON:-python3}
[[ -d $WHEELDIR ]] || { echo "gpu_install: wheel folder $WHEELDIR does not exist" >&2; exit 2; }
WHEELDIR=$(cd "$WHEELDIR" && pwd)

host_torch() { "$1" -c 'import torch; print(torch.__version__, torch.__file__)'; }
before=$(host_torch "$PY") || { echo "gpu_install: $PY cannot import torch" >&2; exit 2; }
echo "gpu_install: host $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])'); torch $before"

rm -rf "$VENV"
"$PY" -m venv --system-site-packages --without-pip "$VENV"
VPY=$VENV/bin/python
site=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# The host's site folders go after the venv's own, so what we install shadows, never replaces.
"$PY" -c 'import site, sys
print("\n".join(p for p in site.getsitepackages() + [site.getusersitepackages()] if p in sys.path))' \
  >"$site/_cinemamba_host.pth"

# Pin what must stay the host's own: the CUDA build of torch and everything built against it.
"$PY" - >"$VENV/constraints.txt" <<'PY'
import importlib.metadata as md
import re
keep = {"torch", "torchvision", "torchaudio", "triton", "numpy", "pytorch-triton"}
seen = set()
for dist in md.distributions():
    name = re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower()
    if name in seen:
        continue
    seen.add(name)
    if name in keep or name.startswith(("nvidia-", "cuda-")):
        print(f"{name}=={dist.version}")
PY
echo "gpu_install: pinned $(tr '\n' ' ' <"$VENV/constraints.txt")"

# This script says everything pip needs (no index, these wheels, these pins): a machine's own
# pip configuration (config files, PIP_* variables: extra find-links, constraints) stays out.
export PIP_CONFIG_FILE=/dev/null
while read -r var; do unset "$var"; done < <(compgen -e | grep '^PIP_' | grep -v '^PIP_CONFIG_FILE$')
# pip itself comes from the host through the .pth; --no-build-isolation builds our packages
# with the host's setuptools (no index to fetch one from).
# shellcheck disable=SC2086
"$VPY" -m pip install --no-index --find-links "$WHEELDIR" -c "$VENV/constraints.txt" \
  --no-build-isolation --disable-pip-version-check --no-input \
  -e packages/vae -e packages/backbone -e packages/conditioning -e packages/sampling \
  -e packages/cinemamba ${GPU_INSTALL_EXTRA:-}

after=$(host_torch "$VPY")
if [[ "$after" != "$before" ]]; then
  echo "gpu_install: torch changed: before '$before', after '$after'" >&2
  exit 3
fi
if compgen -G "$site/torch-*.dist-info" >/dev/null; then
  echo "gpu_install: a torch distribution was installed into $site" >&2
  exit 3
fi
# pip check sees the host's packages too; only report problems that involve what we added.
ours=$("$VPY" -m pip list --path "$site" --format freeze --disable-pip-version-check |
  cut -d= -f1 | tr 'A-Z_' 'a-z-')
problems=$("$VPY" -m pip check --disable-pip-version-check 2>&1 || true)
bad=""
for name in $ours; do
  bad+=$(grep -i "^$name \|requires $name[,; ]\|requires $name\$" <<<"$problems" || true)
done
if [[ -n $bad ]]; then
  echo "gpu_install: pip check: $bad" >&2
  exit 3
fi
"$VPY" -c 'import cinemamba, cinemamba_backbone, cinemamba_conditioning, cinemamba_sampling, cinemamba_vae, torch
print("gpu_install: ok; torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available())'
echo "gpu_install: installed into $site: $(tr '\n' ' ' <<<"$ours")"
