"""Fréchet Video Distance: I3D features of real and generated clips, and their Fréchet distance.

The I3D network is the TorchScript file StyleGAN-V distributes (`i3d_torchscript.pt`, a port
of the TF-Hub Kinetics-400 I3D used by the original FVD). Nothing is downloaded: its path comes
from the config, and a missing file is an error naming the path.

Calling convention (StyleGAN-V `src/metrics/metric_utils.py` + `frechet_video_distance.py`):
the detector takes a uint8 tensor `(B, 3, T, H, W)` with values in [0, 255] and is called as
`detector(videos, rescale=True, resize=True, return_features=True)`; `rescale=True` maps
[0, 255] to [-1, 1] inside the network, `resize=True` resizes frames to 224x224, and
`return_features=True` returns the 400-d logits before the softmax, `(B, 400)`.

The Fréchet distance between N(mu1, S1) and N(mu2, S2) is
`|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`. The last trace is computed as the sum
of square roots of the eigenvalues of the symmetric PSD matrix `S1^(1/2) S2 S1^(1/2)` (same
spectrum as `S1 S2`), in float64: exact for rank-deficient covariances (fewer clips than
feature dimensions), where `scipy.linalg.sqrtm(S1 @ S2)` can return complex noise.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from tqdm import tqdm

log = logging.getLogger(__name__)

DETECTOR_KWARGS = {"rescale": True, "resize": True, "return_features": True}
FVD_CLIP_FRAMES = 16  # the standard FVD clip length (FVD_16)


def load_i3d(path: str | Path, device: torch.device | str = "cpu") -> torch.jit.ScriptModule:
    """Load the I3D TorchScript file at `path` (eval mode) onto `device`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"I3D TorchScript file {str(path)!r} does not exist; FVD needs StyleGAN-V's "
            "i3d_torchscript.pt saved locally (set `fvd.i3d` in the eval config to its path)"
        )
    try:
        detector = torch.jit.load(str(path), map_location=torch.device(device))
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{str(path)!r} is not a TorchScript module: {err}") from None
    return detector.eval()


class I3DFeatures:
    """Features of uint8 videos from a StyleGAN-V-convention TorchScript detector."""

    def __init__(self, detector: torch.nn.Module, device: torch.device | str = "cpu") -> None:
        self.detector = detector
        self.device = torch.device(device)

    @classmethod
    def from_file(cls, path: str | Path, device: torch.device | str = "cpu") -> I3DFeatures:
        """Load the detector from a TorchScript file (see `load_i3d`)."""
        return cls(load_i3d(path, device), device)

    @torch.no_grad()
    def __call__(self, videos: np.ndarray | torch.Tensor) -> np.ndarray:
        """Features `(B, D)` in float64 of uint8 videos `(B, T, H, W, 3)` (the file I/O layout)."""
        videos = torch.as_tensor(videos)
        if videos.dtype != torch.uint8 or videos.ndim != 5 or videos.shape[-1] != 3:
            raise ValueError(
                f"videos must be uint8 (B, T, H, W, 3), got {videos.dtype} {tuple(videos.shape)}"
            )
        x = rearrange(videos, "b t h w c -> b c t h w").contiguous().to(self.device)
        feats = self.detector(x, **DETECTOR_KWARGS)
        if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or feats.shape[0] != x.shape[0]:
            shape = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats)
            raise ValueError(f"the I3D detector must return (B, D) features, got {shape}")
        return feats.double().cpu().numpy()


@dataclass
class FeatureStats:
    """Running mean and covariance of feature vectors, accumulated in float64."""

    count: int = 0
    total: np.ndarray | None = None  # (D,) sum of features
    outer: np.ndarray | None = None  # (D, D) sum of outer products

    def add(self, feats: np.ndarray) -> None:
        """Accumulate a batch `(N, D)` of features."""
        x = np.asarray(feats, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"features must be (N, D), got shape {x.shape}")
        if self.total is None:
            self.total = np.zeros(x.shape[1])
            self.outer = np.zeros((x.shape[1], x.shape[1]))
        if x.shape[1] != self.total.shape[0]:
            raise ValueError(f"feature width changed from {self.total.shape[0]} to {x.shape[1]}")
        self.count += x.shape[0]
        self.total += x.sum(0)
        self.outer += x.T @ x

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean `(D,)` and unbiased covariance `(D, D)` (needs at least 2 feature vectors)."""
        if self.count < 2:
            raise ValueError(f"need at least 2 clips for a covariance, got {self.count}")
        mu = self.total / self.count
        cov = (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)
        return mu, (cov + cov.T) / 2


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues -> 0)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Fréchet distance between two Gaussians, in float64 (see the module docstring)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(
            f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}"
        )
    root1 = _sqrt_psd(s1)
    eig = np.linalg.eigvalsh(root1 @ s2 @ root1)  # spectrum of S1 S2, real and >= 0 up to noise
    tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def fvd_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FVD between two feature sets `(N, D)` and `(M, D)`."""
    a, b = FeatureStats(), FeatureStats()
    a.add(real)
    b.add(fake)
    return frechet_distance(*a.mean_cov(), *b.mean_cov())


def clip_views(video: np.ndarray, clip_frames: int | None) -> np.ndarray | None:
    """The clip FVD sees of one uint8 video `(T, H, W, 3)`: its first `clip_frames` frames,
    or the whole video when `clip_frames` is None; None when the video is too short."""
    if clip_frames is None:
        return video
    if video.shape[0] < clip_frames:
        return None
    return video[:clip_frames]


class FVDAccumulator:
    """Streams videos of one set (real or generated) into feature statistics per clip length."""

    def __init__(self, features: I3DFeatures, lengths: dict[str, int | None]) -> None:
        self.features = features
        self.lengths = lengths  # name -> clip frames (None = full length), e.g. {"fvd16": 16}
        self.stats = {name: FeatureStats() for name in lengths}
        self.too_short = dict.fromkeys(lengths, 0)

    def add(self, video: np.ndarray) -> None:
        """Add one uint8 video `(T, H, W, 3)` (one clip per length name)."""
        for name, frames in self.lengths.items():
            clip = clip_views(video, frames)
            if clip is None:
                self.too_short[name] += 1
                continue
            self.stats[name].add(self.features(clip[None]))


def fvd_between(
    features: I3DFeatures,
    real: Iterable[np.ndarray],
    fake: Iterable[np.ndarray],
    lengths: dict[str, int | None] | None = None,
) -> dict[str, dict]:
    """FVD per clip length between two streams of uint8 videos `(T, H, W, 3)`.

    Returns `{name: {"fvd": float | None, "real_clips": n, "fake_clips": m, "too_short": k}}`;
    `fvd` is None (with a warning) when either side has fewer than 2 clips of that length.
    """
    lengths = lengths or {"fvd16": FVD_CLIP_FRAMES, "fvd_full": None}
    sides = {"real": FVDAccumulator(features, lengths), "fake": FVDAccumulator(features, lengths)}
    for side, videos in (("real", real), ("fake", fake)):
        for video in tqdm(videos, desc=f"I3D features ({side})", unit="video"):
            sides[side].add(video)
    out: dict[str, dict] = {}
    for name in lengths:
        r, f = sides["real"].stats[name], sides["fake"].stats[name]
        value = None
        if r.count >= 2 and f.count >= 2:
            value = frechet_distance(*r.mean_cov(), *f.mean_cov())
        else:
            log.warning(
                "%s: too few clips (real %d, generated %d); need 2 each", name, r.count, f.count
            )
        out[name] = {
            "fvd": value,
            "real_clips": r.count,
            "fake_clips": f.count,
            "too_short": sides["real"].too_short[name] + sides["fake"].too_short[name],
        }
    return out
