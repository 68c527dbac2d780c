# `source scripts/env.sh` (from any directory, after scripts/setup.sh): puts this repository's
# .venv/bin first on PATH (cinemamba, python, torchrun, deepspeed) and sets the defaults every
# documented command assumes: run on CPU when there is no GPU, never reach a model hub.
# The entry scripts (demo.sh, test.sh) source it too.
_cinemamba_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -x $_cinemamba_root/.venv/bin/python ]]; then
  case ":$PATH:" in
    *":$_cinemamba_root/.venv/bin:"*) ;;
    *) export PATH="$_cinemamba_root/.venv/bin:$PATH" ;;
  esac
  export VIRTUAL_ENV=$_cinemamba_root/.venv
fi
command -v cinemamba >/dev/null || echo "scripts/env.sh: no cinemamba on PATH; run scripts/setup.sh first" >&2
export HF_HUB_OFFLINE=1
export DS_ACCELERATOR=${DS_ACCELERATOR:-$(python3 -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")' 2>/dev/null || echo cpu)}
# DeepSpeed compiles its CPU comm op once; keep the build inside the venv so later runs reuse it.
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$_cinemamba_root/.venv/torch_extensions}
unset _cinemamba_root
