"""LoRA adapters on a `VideoDiT`, through peft (issue 17).

`add_lora` wraps the backbone in a `peft.PeftModel` with low-rank adapters on the linear layers
named in `LoraSettings.targets` (names inside a block: attention qkv/out, cross-attention, MLP,
Mamba in/out projections) and freezes everything else. An adapter directory is peft's own
`save_pretrained` output plus `cinemamba_base.json`, which names the base weights it was
trained on (a hash of the state dict), so `load_lora` refuses to put it on another backbone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

BASE_FILE = "cinemamba_base.json"

# Linear layers inside a VideoDiT block that LoRA may adapt. The adaLN modulation is left out:
# it is zero-initialised and tiny, and adapting it changes every layer's scale at once.
LORA_TARGETS = (
    "attn.qkv", "attn.proj", "cross_attn.q", "cross_attn.kv", "cross_attn.proj", "mlp.0",
    "mlp.2", "temporal.in_proj", "temporal.out_proj", "temporal.qkv", "temporal.proj",
)  # fmt: skip


@dataclass
class LoraSettings:
    """LoRA fine-tuning of the backbone; `rank: 0` trains every weight instead.

    alpha: the LoRA scale numerator (scale = alpha / rank); 0 means alpha = rank (scale 1).
    targets: linear layer names inside a block (see `LORA_TARGETS`); a name that no block of
        this backbone has (e.g. `temporal.qkv` with a Mamba mixer) is skipped and logged.
    """

    rank: int = 0
    alpha: float = 0.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))


def weights_hash(model: nn.Module) -> str:
    """sha256 (16 hex) of a module's state dict: names, dtypes, shapes and bytes, in order."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        value = value.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"sha256-{digest.hexdigest()[:16]}"


def block_linear_names(model: nn.Module) -> list[str]:
    """Names of the linear layers inside a block (`blocks.<i>.` stripped), sorted."""
    names = {
        re.sub(r"^blocks\.\d+\.", "", n)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and re.match(r"blocks\.\d+\.", n)
    }
    return sorted(names)


def add_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """`model` wrapped in a peft LoRA model; only the adapter weights require gradients."""
    import peft

    if settings.rank < 1:
        raise ValueError(f"lora.rank must be >= 1 to add adapters, got {settings.rank}")
    valid = block_linear_names(model)
    used = [t for t in settings.targets if t in valid]
    unknown = [t for t in settings.targets if t not in valid]
    if not used:
        raise ValueError(
            f"lora.targets {list(settings.targets)} name no linear layer of this backbone's "
            f"blocks; valid: {', '.join(valid)}"
        )
    if unknown:
        log.info("LoRA targets absent from this backbone (skipped): %s", ", ".join(unknown))
    config = peft.LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha or settings.rank,
        lora_dropout=settings.dropout,
        # One regex so only block layers match (t_embedder.mlp.0 would match a plain suffix).
        target_modules=r"blocks\.\d+\.(" + "|".join(re.escape(t) for t in used) + ")",
    )
    return peft.get_peft_model(model, config)


def save_lora(model: nn.Module, directory: str | Path, base: str) -> Path:
    """Write the adapter (peft `save_pretrained`) and the base identity `base` into
    `directory`, via a `.partial` sibling renamed into place."""
    directory = Path(directory)
    if directory.exists() and not (directory / BASE_FILE).is_file() and any(directory.iterdir()):
        raise FileExistsError(
            f"{str(directory)!r} exists and is not a LoRA adapter; choose another directory"
        )
    tmp = directory.with_name(directory.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(str(tmp))
        (tmp / BASE_FILE).write_text(json.dumps({"base_weights": base}, indent=2) + "\n")
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_lora(model: nn.Module, directory: str | Path, *, merge: bool = True) -> nn.Module:
    """Put the adapter in `directory` on `model` (the base it was trained on, checked);
    merged into the weights (a plain VideoDiT) or kept as a peft model."""
    import peft

    directory = Path(directory)
    record = directory / BASE_FILE
    if not record.is_file():
        raise FileNotFoundError(f"{record} not found: {str(directory)!r} is not a LoRA adapter")
    want = json.loads(record.read_text())["base_weights"]
    have = weights_hash(model)
    if have != want:
        raise ValueError(
            f"the LoRA adapter {str(directory)!r} was trained on base weights {want} but this "
            f"backbone is {have}; load it onto the pipeline it was fine-tuned from"
        )
    wrapped = peft.PeftModel.from_pretrained(model, str(directory))
    return wrapped.merge_and_unload() if merge else wrapped
