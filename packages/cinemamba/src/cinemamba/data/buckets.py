"""Aspect-ratio and length buckets: every micro-batch holds clips of one (height, width, frames).

Real sets mix 16:9, 4:3, portrait and square videos of many lengths (issue 15). Squashing them
all to one size distorts them; buckets keep each video near its own shape instead:

- **Buckets** are listed (`buckets: [[height, width, frames], ...]`) or generated from aspect
  ratios, a pixel area and frame counts. Each has a batch size: given, or the largest that keeps
  `batch x tokens(bucket) <= tokens` (tokens: latent frames x latent height x latent width /
  patch^2 as the VAE and backbone define them), so every micro-batch costs about the same.
- **Assignment**: a video goes to the bucket of nearest aspect ratio (|log(w/h) difference|),
  then the longest clip its length allows, then the nearest area. A video too short for every
  bucket (or unreadable) has no bucket: it is counted and logged when the index is built.
- **Schedule**: micro-batch `b` of rank `r` draws its bucket from a generator seeded by
  (seed, r, b // BLOCK); bucket k holds its own resampled stream (`SampleStream` over only its
  samples), and the batch takes the next `batch_size(k)` positions of it. How many positions
  earlier batches took is a sum over the schedule (no reading), so micro-batch `b` is a pure
  function of (seed, rank, b): resuming at `b` opens one shard per bucket and skips ahead.
- **Probabilities**: "data" draws bucket k with probability proportional to
  samples(k) / batch_size(k), so every sample is seen equally often whatever its bucket;
  "uniform" draws buckets equally; "weights" takes one weight per bucket.

The index (which sample of which shard falls in which bucket) is built by reading every shard
once and probing each video's header; nothing is decoded.

This module holds the buckets and the assignment; the index is `cinemamba.data.bucket_index`,
the schedule and the micro-batches `cinemamba.data.bucket_batches`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cinemamba.data.bucket_config import FITS, SAMPLINGS, BucketConfig
from cinemamba.data.video import VideoInfo
from cinemamba.latents.clips import ClipChoice, ClipConfig, SampleError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bucket:
    """One clip shape and its micro-batch size."""

    height: int
    width: int
    frames: int
    batch_size: int
    tokens: int  # per sample

    @property
    def shape(self) -> tuple[int, int, int]:
        """(height, width, frames)."""
        return self.height, self.width, self.frames


LatentShape = Callable[[int, int, int], tuple[int, int, int]]


def config_latent_shape(config: Mapping[str, Any]) -> LatentShape:
    """`latent_shape(frames, height, width)` of a VAE from its recorded config (ours, or a
    diffusers adapter's with its `frame_step`), without loading it: what `VideoAutoencoder`
    and the adapters compute."""
    st, s = int(config["temporal_compression"]), int(config["spatial_compression"])
    step = int(config.get("frame_step", st))

    def shape(frames: int, height: int, width: int) -> tuple[int, int, int]:
        if frames < 1 or (frames - 1) % step or height % s or width % s:
            raise ValueError(f"this VAE needs 1 + {step}*k frames and sizes divisible by {s}")
        return 1 + (frames - 1) // st, height // s, width // s

    return shape


def build_buckets(cfg: BucketConfig, latent_shape: LatentShape, patch: int = 1) -> list[Bucket]:
    """The buckets of `cfg` with their batch sizes; `latent_shape(frames, height, width)` is the
    VAE's (it raises for a shape the VAE cannot take), `patch` the backbone's patch size.

    Raises ValueError naming the bad setting.
    """
    if cfg.sampling not in SAMPLINGS:
        raise ValueError(f"buckets.sampling must be one of {SAMPLINGS}, got {cfg.sampling!r}")
    if cfg.fit not in FITS:
        raise ValueError(f"buckets.fit must be one of {FITS}, got {cfg.fit!r}")
    if cfg.tokens < 0:
        raise ValueError(f"buckets.tokens must be >= 0, got {cfg.tokens}")
    if cfg.buckets and (cfg.aspects or cfg.area or cfg.frames):
        raise ValueError("give buckets.buckets or buckets.aspects/area/frames, not both")
    specs = [list(b) for b in cfg.buckets] if cfg.buckets else _generated(cfg, latent_shape, patch)
    out: list[Bucket] = []
    for spec in specs:
        if len(spec) not in (3, 4) or any(int(v) < 1 for v in spec):
            raise ValueError(
                f"buckets entry {spec} must be [height, width, frames] or [height, width, "
                "frames, batch_size] of positive integers"
            )
        height, width, frames = (int(v) for v in spec[:3])
        try:
            t, h, w = latent_shape(frames, height, width)
        except ValueError as err:
            raise ValueError(f"bucket {height}x{width}x{frames}: {err}") from None
        if h % patch or w % patch:
            raise ValueError(
                f"bucket {height}x{width}x{frames}: latent size {h}x{w} is not divisible by the "
                f"backbone's patch_size={patch}"
            )
        tokens = t * (h // patch) * (w // patch)
        if len(spec) == 4:
            batch = int(spec[3])
        elif not cfg.tokens:
            raise ValueError(
                f"bucket {height}x{width}x{frames} gives no batch size: set buckets.tokens "
                "(the token budget per micro-batch) or a 4th entry"
            )
        elif tokens > cfg.tokens:
            raise ValueError(
                f"bucket {height}x{width}x{frames} has {tokens} tokens per sample, over "
                f"buckets.tokens={cfg.tokens}: raise the budget or drop the bucket"
            )
        else:
            batch = cfg.tokens // tokens  # largest batch within the budget: memory never over
        out.append(Bucket(height, width, frames, batch, tokens))
    shapes = [b.shape for b in out]
    if len(set(shapes)) != len(shapes):
        raise ValueError(f"buckets list a shape twice: {sorted(shapes)}")
    if cfg.sampling == "weights" and (
        len(cfg.weights) != len(out) or any(w < 0 for w in cfg.weights) or sum(cfg.weights) <= 0
    ):
        raise ValueError(
            f"buckets.sampling=weights needs one weight >= 0 per bucket ({len(out)}), not all "
            f"zero; got {list(cfg.weights)}"
        )
    return out


def _generated(cfg: BucketConfig, latent_shape: LatentShape, patch: int) -> list[list[int]]:
    """[height, width, frames] per (aspect, frames): height x width about `area`, both multiples
    of the pixel size of one token (the VAE's spatial compression x patch)."""
    if cfg.area < 1 or not cfg.frames or any(a <= 0 for a in cfg.aspects):
        raise ValueError(
            "generated buckets need buckets.aspects (width / height, > 0), buckets.area (pixels "
            f"per frame) and buckets.frames; got {list(cfg.aspects)}, {cfg.area}, "
            f"{list(cfg.frames)}"
        )
    _, h1, _ = latent_shape(cfg.frames[0], 1 << 12, 1 << 12)
    step = ((1 << 12) // h1) * patch  # pixels per token side
    out = []
    for aspect in cfg.aspects:
        height = max(step, round(math.sqrt(cfg.area / aspect) / step) * step)
        width = max(step, round(math.sqrt(cfg.area * aspect) / step) * step)
        out += [[height, width, f] for f in cfg.frames]
    return out


def assign_bucket(buckets: Sequence[Bucket], height: int, width: int, frames: int) -> int | None:
    """Index of the bucket for a `height` x `width` video of `frames` usable frames (at the
    clip's stride): nearest aspect ratio, then the longest clip that fits, then the nearest
    area; None when no bucket's clip fits."""
    best, best_key = None, None
    for i, b in enumerate(buckets):
        if b.frames > frames:
            continue
        # rounded: buckets generated for one aspect ratio differ by their rounding to the
        # token grid, and must still count as the same ratio
        aspect = round(abs(math.log((b.width / b.height) / (width / height))), 2)
        area = abs(math.log((b.height * b.width) / (height * width)))
        key = (aspect, -b.frames, area)
        if best_key is None or key < best_key:
            best, best_key = i, key
    return best


def bucket_clip(bucket: Bucket, clip: ClipConfig, fit: str) -> ClipConfig:
    """The clip config that cuts a video to `bucket`'s shape (stride, fps and start of `clip`)."""
    crop = "none" if fit == "resize" else fit
    return ClipConfig(
        frames=bucket.frames, stride=clip.stride, fps=clip.fps, height=bucket.height,
        width=bucket.width, crop=crop, start=clip.start,
    )  # fmt: skip


def usable_frames(frames: int, fps: float, clip: ClipConfig) -> int:
    """Frames a video of `frames` at `fps` gives at the clip's stride (or target fps)."""
    stride = clip.stride
    if clip.fps > 0 and fps > 0:
        stride = max(1, round(fps / clip.fps))
    return (frames - 1) // stride + 1 if frames > 0 else 0


def export_fit(cfg: BucketConfig, latent_shape: LatentShape, patch: int) -> ClipChoice:
    """The per-video clip choice of latent export with buckets: each video is cut to the
    height x width of its bucket (`assign_bucket`: nearest aspect ratio, then the longest
    window it fills, then the nearest area; `cfg.fit` crops or resizes), so the latent set
    holds exactly the latent sizes the training buckets take. `patch` is the backbone's patch
    size: generated sizes are rounded to its token grid as training rounds them (and `tokens`
    counts its tokens). Batch sizes do not matter here (a missing `tokens` is not an error).
    A video no bucket takes raises SampleError("no_bucket"), a counted skip."""
    budget = replace(cfg, tokens=cfg.tokens or 2**62) if cfg.buckets or cfg.aspects else cfg
    buckets = build_buckets(budget, latent_shape, patch)

    def choose(info: VideoInfo, clip: ClipConfig) -> ClipConfig:
        frames = usable_frames(info.frames, info.fps, clip)
        k = assign_bucket(buckets, info.height, info.width, frames)
        if k is None:
            raise SampleError(
                "no_bucket",
                f"{info.width}x{info.height} video of {frames} usable frames: no bucket's "
                f"window fits (buckets {[b.shape for b in buckets]})",
            )
        return bucket_clip(buckets[k], clip, cfg.fit)

    return choose
