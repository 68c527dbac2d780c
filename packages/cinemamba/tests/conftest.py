"""Fixtures shared by the cinemamba package's tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from cinemamba.data.synth import SceneConfig
from cinemamba.data.synth_video import write_synth
from cinemamba.latents import ClipConfig, ExportConfig, export_latents
from cinemamba_conditioning import TextEncoderConfig
from cinemamba_vae import VideoAutoencoder, vae_preset


def _latent_set(root: Path, videos: int, frames: int, size: int, stats: bool) -> dict[str, Path]:
    """`videos` raw synth videos (2 per shard) under root/raw, a seeded tiny VAE under root/vae
    (with made-up latent statistics when `stats`, else zero mean / unit std) and the latents of
    the videos' first 9 frames it exports under root/lat."""
    write_synth(root / "raw", "train", videos, SceneConfig(frames=frames, height=size, width=size),
                samples_per_shard=2)  # fmt: skip
    torch.manual_seed(0)
    vae = VideoAutoencoder(vae_preset("tiny"))
    if stats:
        vae.set_latent_stats(torch.linspace(-0.1, 0.1, 8), torch.linspace(0.5, 1.5, 8))
    else:
        vae.set_latent_stats(torch.zeros(8), torch.ones(8))
    vae.save_pretrained(root / "vae")
    export_latents(ExportConfig(
        input=str(root / "raw"), output=str(root / "lat"), vae=str(root / "vae"),
        text_encoder=TextEncoderConfig(random_init_seed=0), clip=ClipConfig(frames=9, start="first"),
        progress=False,
    ))  # fmt: skip
    return {"root": root, "raw": root / "raw", "vae": root / "vae", "lat": root / "lat"}


@pytest.fixture(scope="session")
def make_latent_set() -> Callable[..., dict[str, Path]]:
    """A factory: make_latent_set(root, videos=4, frames=12, size=32, stats=True) -> paths."""

    def make(
        root: Path, videos: int = 4, frames: int = 12, size: int = 32, stats: bool = True
    ) -> dict[str, Path]:
        return _latent_set(root, videos, frames, size, stats)

    return make
