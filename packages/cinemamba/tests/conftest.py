"""Fixtures shared by the cinemamba package's tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
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


class TinyI3D:
    """A random-init miniature I3D for the FVD wiring tests: the real network's input path
    (`prepare_clips`, here at 32x32) into two seeded 3D convs and a global pool, 8-d features.
    Same call convention as `PortedI3DFeatures` (uint8 `(B, T, H, W, 3)` -> float64 `(B, D)`),
    at a few ms per clip instead of ~1.3 s."""

    identity = "tiny-i3d:seed0"

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv3d(3, 8, 3, stride=2),
            torch.nn.ReLU(),
            torch.nn.Conv3d(8, 8, 3),
            torch.nn.AdaptiveAvgPool3d(1),
            torch.nn.Flatten(),
        ).eval()

    @torch.no_grad()
    def __call__(self, videos) -> np.ndarray:
        from cinemamba.eval.fvd import prepare_clips

        return self.net(prepare_clips(videos, size=32)).double().numpy()


@pytest.fixture
def tiny_i3d(monkeypatch) -> TinyI3D:
    """The tiny I3D, installed as what the demo and the ablation load for FVD."""
    features = TinyI3D()
    for module in ("cinemamba.apps.demo.fvd", "cinemamba.apps.ablate.stages"):
        monkeypatch.setattr(
            f"{module}.optional_features", lambda spec, device="cpu": (features, None)
        )
        monkeypatch.setattr(f"{module}.i3d_available", lambda spec: True)
    return features


class MeanStd:
    """Channel means and the temporal std (population) of channel 0 over a clip: closed forms."""

    identity = "mean-std"

    def __call__(self, videos: np.ndarray) -> np.ndarray:
        x = videos.astype(np.float64)
        return np.concatenate(
            [x.mean(axis=(1, 2, 3)), x[..., 0].std(axis=1).mean(axis=(1, 2))[:, None]], 1
        )


def _video(level: int, swing: int, frames: int) -> np.ndarray:
    """Frames alternating level -/+ swing (channel c adds 5c): every even-length window has
    channel means (level, level+5, level+10) and temporal std `swing`, whatever its offset."""
    t = np.where(np.arange(frames) % 2, swing, -swing)
    v = level + t[:, None, None, None] + np.array([0, 5, 10])[None, None, None, :]
    return np.broadcast_to(v, (frames, 4, 4, 3)).astype(np.uint8).copy()


def _params(seed: int) -> tuple[int, int]:
    return 60 + (seed * 37) % 120, 1 + seed % 7


def _features(params: list[tuple[int, int]]) -> np.ndarray:
    return np.array([[a, a + 5, a + 10, d] for a, d in params], np.float64)


def _frechet(x: np.ndarray, y: np.ndarray) -> float:
    """Textbook Fréchet distance with scipy's sqrtm (an implementation independent of ours)."""
    m1, m2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = np.real(scipy.linalg.sqrtm(s1 @ s2))
    return float((m1 - m2) @ (m1 - m2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.fixture
def fvd_closed_forms():
    """Videos whose FVD_16 clip features have closed forms at any offset, those features, and
    a Fréchet distance by scipy's sqrtm (independent of `cinemamba.eval.fvd`)."""
    from types import SimpleNamespace

    return SimpleNamespace(video=_video, params=_params, features=_features, frechet=_frechet,
                           MeanStd=MeanStd)  # fmt: skip
