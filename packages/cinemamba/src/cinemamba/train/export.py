"""Consolidate a checkpoint from any ZeRO stage into one fp32 safetensors file.

Runs offline in one process without DeepSpeed's process group: the EMA weights are stored
whole already; the trained weights are rebuilt from the per-rank ZeRO partitions with
DeepSpeed's `zero_to_fp32` reader (stage 1-3) or read from the module state (stage 0).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cinemamba.train import checkpoint as ckpt_io


def consolidated_state_dict(
    source: str | Path, model: str | None = None, ema: bool = True
) -> dict[str, torch.Tensor]:
    """Full fp32 weights of one model from a checkpoint or a run directory (its latest)."""
    ckpt = ckpt_io.resolve_checkpoint(source)
    state = ckpt_io.read_trainer_state(ckpt)
    models = state["models"]
    if model is None:
        if len(models) != 1:
            raise ValueError(f"{ckpt} holds several models {models}; name one with model=")
        model = models[0]
    if model not in models:
        raise ValueError(f"{ckpt} has no model {model!r}; it has {models}")
    if ema:
        path = ckpt / "ema" / f"{model}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(
                f"{ckpt} has no EMA for {model!r} (train.ema_decay was 0); use ema=False"
            )
        from safetensors.torch import load_file

        return load_file(str(path))
    ds_dir = ckpt / model
    if state["zero_stage"] == 0:
        files = sorted((ds_dir / ckpt_io.DS_TAG).glob("mp_rank_*_model_states.pt"))
        if not files:
            raise FileNotFoundError(f"no model states under {ds_dir / ckpt_io.DS_TAG}")
        module = torch.load(files[0], map_location="cpu", weights_only=False)["module"]
        return {k: v.float() if v.is_floating_point() else v for k, v in module.items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    full = get_fp32_state_dict_from_zero_checkpoint(str(ds_dir), tag=ckpt_io.DS_TAG)
    return {k: v.contiguous() for k, v in full.items()}


def export_weights(
    source: str | Path, out: str | Path, ema: bool = True, model: str | None = None
) -> Path:
    """Write one model's consolidated fp32 (or EMA) weights to `out` (.safetensors)."""
    from safetensors.torch import save_file

    tensors = consolidated_state_dict(source, model, ema)
    # safetensors refuses aliased storage (tied weights): store independent copies.
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    save_file(tensors, str(tmp))
    os.replace(tmp, out)
    return out
