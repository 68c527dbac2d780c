# Sourced by the entry scripts: run on CPU-friendly defaults and never reach a model hub.
export HF_HUB_OFFLINE=1
export DS_ACCELERATOR=${DS_ACCELERATOR:-$(.venv/bin/python -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}
# DeepSpeed compiles its CPU comm op once; keep the build inside the venv so later runs reuse it.
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.venv/torch_extensions}
