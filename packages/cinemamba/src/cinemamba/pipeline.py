"""Building a `VideoPipeline` from a sampling config (`SampleConfig`: separate VAE, backbone,
text encoder and process) or from a saved pipeline directory, checked against the overrides.

`cinemamba sample` and the generation benchmark both build their pipelines here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from cinemamba.config import ConfigError
from cinemamba_backbone import BackboneConfig, VideoDiT
from cinemamba_conditioning import TextEncoderConfig, build_text_encoder
from cinemamba_sampling import (
    PipelineConfig,
    ProcessConfig,
    SamplingDefaults,
    TrainingClip,
    VideoPipeline,
    build_process,
    read_pipeline_json,
)
from cinemamba_vae import VideoAutoencoder, load_vae, vae_preset


@dataclass
class SampleConfig:
    """A sampling config: where the models come from, the process, and generation defaults.

    `vae` / `backbone` are directories written by `save_pretrained`. With `random_init: true`
    and no directory, the `*_preset` architectures are built with random weights (smoke tests
    of the whole path; the videos are noise).
    """

    vae: str = ""
    backbone: str = ""
    random_init: bool = False
    init_seed: int = 0
    vae_preset: str = "tiny"
    backbone_preset: str = "tiny"
    backbone_mixer: str = "bimamba"
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    frames: int = 17
    height: int = 64
    width: int = 64
    steps: int = 30
    guidance: float = 5.0
    seed: int = 0
    mode: str = "oneshot"
    negative_prompt: str = ""
    fps: float = 8.0
    device: str = "auto"
    kernels: str = "auto"


def device_of(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; any other name as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_pipeline(cfg: SampleConfig) -> VideoPipeline:
    """The VAE, backbone, text encoder and process named by `cfg`, composed."""
    if not cfg.random_init and not (cfg.vae and cfg.backbone):
        raise ConfigError(
            "sample config needs `vae` and `backbone` (save_pretrained directories), or random_init: true for a random-weight smoke test"
        )
    device = device_of(cfg.device)
    text = build_text_encoder(cfg.text_encoder).to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        if cfg.vae:
            vae = load_vae(cfg.vae)
        else:
            vae = VideoAutoencoder(vae_preset(cfg.vae_preset))
        if cfg.backbone:
            backbone = VideoDiT.from_pretrained(cfg.backbone, kernels=cfg.kernels)
        else:
            arch = BackboneConfig.from_preset(
                cfg.backbone_preset,
                in_channels=vae.config.latent_channels,
                text_dim=text.dim,
                mixer=cfg.backbone_mixer,
            )
            backbone = VideoDiT(arch, kernels=cfg.kernels)
    if backbone.config.text_dim != text.dim:
        raise ConfigError(
            f"backbone text_dim={backbone.config.text_dim} but the text encoder {cfg.text_encoder.model!r} has width {text.dim}"
        )
    return VideoPipeline(
        vae.to(device), backbone.to(device), text, build_process(cfg.process), cfg.pipeline
    )


def saved_defaults(directory: str | Path) -> SampleConfig:
    """A SampleConfig whose fields are the saved pipeline's: text encoder, process, solver
    settings, steps, guidance, and the training clip's pixel size."""
    meta = read_pipeline_json(directory)
    defaults = SamplingDefaults(**meta["defaults"])
    cfg = SampleConfig(
        text_encoder=TextEncoderConfig(**meta["text_encoder"]["config"]),
        process=ProcessConfig(**meta["process"]),
        pipeline=PipelineConfig(**meta["pipeline"]),
        steps=defaults.steps,
        guidance=defaults.guidance,
    )
    clip = TrainingClip(**meta["training_clip"])
    if clip.latent_frames:
        vae = load_vae(Path(directory) / meta["vae"]["path"]).config
        cfg.frames = 1 + vae.temporal_compression * (clip.latent_frames - 1)
        cfg.height = clip.latent_height * vae.spatial_compression
        cfg.width = clip.latent_width * vae.spatial_compression
    return cfg


def load_saved_pipeline(directory: str | Path, cfg: SampleConfig) -> VideoPipeline:
    """The saved pipeline with `cfg`'s process and solver settings (checked on load)."""
    saved = saved_defaults(directory)
    if cfg.vae or cfg.backbone or cfg.random_init:
        raise ConfigError(
            f"{str(directory)!r} is a saved pipeline with its own VAE and backbone; drop the "
            "vae / backbone / random_init overrides"
        )
    if cfg.text_encoder != saved.text_encoder:
        raise ConfigError(
            f"the pipeline {str(directory)!r} was trained with text encoder "
            f"{saved.text_encoder} but the overrides ask for {cfg.text_encoder}"
        )
    return VideoPipeline.from_pretrained(
        directory, process=cfg.process, config=cfg.pipeline, device=device_of(cfg.device),
        kernels=cfg.kernels,
    )  # fmt: skip
