"""Learning-rate schedule: linear warmup, then cosine decay (or constant), as a pure function.

The engine sets the LR from the global step before every optimizer step instead of keeping a
scheduler object, so resuming needs nothing but the step, and a phase skipped at some steps
(a GAN discriminator that starts late) stays on the same clock as the others.
"""

from __future__ import annotations

import math

from cinemamba.train.config import OptimizerConfig


def lr_at(opt: OptimizerConfig, step: int, total_steps: int) -> float:
    """The learning rate for optimizer step `step` (0-based) of `total_steps`."""
    if opt.warmup_steps > 0 and step < opt.warmup_steps:
        return opt.lr * (step + 1) / opt.warmup_steps
    if opt.schedule == "constant":
        return opt.lr
    decay_steps = max(1, total_steps - opt.warmup_steps)
    progress = min(1.0, (step - opt.warmup_steps) / decay_steps)
    floor = opt.lr * opt.min_lr_ratio
    return floor + (opt.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
