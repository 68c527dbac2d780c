"""Optimizers for the engine, and a gate that lets it skip one optimizer step on every stage."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cinemamba.train.config import OptimizerConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: decayed matrices, and undecayed biases, norms and `_no_weight_decay` params."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or getattr(p, "_no_weight_decay", False):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """AdamW (torch), DeepSpeed's CPU Adam (for optimizer offload) or DeepSpeed's fused Adam."""
    groups = param_groups(model, cfg.weight_decay)
    if not groups:
        raise ValueError(f"model {type(model).__name__} has no trainable parameters")
    kwargs = {"lr": cfg.lr, "betas": tuple(cfg.betas), "eps": cfg.eps}
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, **kwargs)
    if cfg.name == "cpu_adam":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        from cinemamba.train.distributed import op_build_notice

        with op_build_notice("cpu_adam", "minutes on a small CPU"):  # JIT-built on first use
            return DeepSpeedCPUAdam(groups, adamw_mode=True, **kwargs)
    if cfg.name == "fused_adam":
        from deepspeed.ops.adam import FusedAdam

        return FusedAdam(groups, adam_w_mode=True, **kwargs)
    raise ValueError(f"unknown optimizer {cfg.name!r}")


class StepGate:
    """Wraps `optimizer.step` so the engine can skip one step without touching DeepSpeed.

    Every ZeRO stage ends its step in the base optimizer's `step()` on the fp32 master weights
    and then clears gradients; skipping only that call leaves weights and moments exactly as
    they were, whatever the stage, offload or precision.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.skip = False
        inner = optimizer.step

        def step(*args: Any, **kwargs: Any) -> Any:
            if self.skip:
                return None
            return inner(*args, **kwargs)

        optimizer.step = step  # type: ignore[method-assign]
