"""Clip selection from raw video samples, shared by on-the-fly training and latent export.

Both paths call `decode_clip` with the same `ClipConfig`, so a latent exported with
`start="first"` is exactly what on-the-fly training encodes with `start="first"`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from einops import rearrange

from cinemamba.data.video import VideoDecodeError, decode_video, probe_video

CLIP_STARTS = ("random", "first")


class SampleError(ValueError):
    """A raw sample that cannot be used; `reason` is the counter it is logged under."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class ClipConfig:
    """Which frames of a raw video make a training clip.

    frames: pixel frames per clip; the VAE needs 1 + k * temporal_compression.
    stride: take every `stride`-th frame (a lower frame rate).
    height / width: resize while decoding (0 keeps the stored size).
    start: "random" (uniform over valid starts, seeded per sample position) or "first".
    """

    frames: int = 17
    stride: int = 1
    height: int = 0
    width: int = 0
    start: str = "random"

    def validate(self) -> None:
        """Raise ValueError naming the bad field."""
        if self.frames < 1 or self.stride < 1:
            raise ValueError(
                f"clip frames and stride must be >= 1, got {self.frames}, {self.stride}"
            )
        if self.start not in CLIP_STARTS:
            raise ValueError(f"clip start must be one of {CLIP_STARTS}, got {self.start!r}")
        if (self.height == 0) != (self.width == 0) or self.height < 0 or self.width < 0:
            raise ValueError(
                f"clip height and width must both be 0 (stored size) or both positive, got "
                f"{self.height}x{self.width}"
            )


def to_pixels(frames: torch.Tensor) -> torch.Tensor:
    """uint8 `(..., T, H, W, 3)` -> float `(..., 3, T, H, W)` in [-1, 1] (on frames' device).

    Training keeps clips uint8 until they reach the device (4x less to move, and no bf16
    rounding of pixel values), then converts with this same function as the export.
    """
    video = frames.float() / 127.5 - 1.0
    return rearrange(video, "... t h w c -> ... c t h w")


def decode_clip(
    sample: dict[str, Any], clip: ClipConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, str, dict[str, Any]]:
    """(uint8 frames `(T, H, W, 3)`, caption, metadata) of one raw WebDataset sample.

    Raises SampleError (reason "no_video", "no_caption", "undecodable", "too_short").
    """
    key = sample.get("__key__")
    data = sample.get("mp4")
    if data is None:
        raise SampleError("no_video", f"sample {key!r} has no .mp4")
    caption = sample.get("txt", b"").decode("utf-8", errors="replace").strip()
    if not caption:
        raise SampleError("no_caption", f"sample {key!r} has no caption")
    try:
        meta = json.loads(sample["json"]) if "json" in sample else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = {}
    try:
        total = int(meta.get("frames") or 0) or probe_video(bytes(data)).frames
    except VideoDecodeError as err:
        raise SampleError("undecodable", f"sample {key!r}: {err}") from None
    span = (clip.frames - 1) * clip.stride + 1
    if total < span:
        raise SampleError("too_short", f"sample {key!r} has {total} frames; the clip needs {span}")
    start = 0 if clip.start == "first" else int(rng.integers(total - span + 1))
    size = (clip.height, clip.width) if clip.height else None
    try:
        frames = decode_video(bytes(data), start, clip.frames, clip.stride, size=size)
    except VideoDecodeError as err:
        raise SampleError("undecodable", f"sample {key!r}: {err}") from None
    if len(frames) < clip.frames:
        raise SampleError(
            "too_short", f"sample {key!r} decoded {len(frames)} of {clip.frames} frames"
        )
    info = {"start": start, "stride": clip.stride, "frames": clip.frames}
    return torch.from_numpy(frames), caption, {"clip": info, "source": meta}
