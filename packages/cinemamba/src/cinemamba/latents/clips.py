"""Clip selection from raw video samples, shared by on-the-fly training and latent export.

Both paths call `decode_clip` with the same `ClipConfig`, so a latent exported with
`start="first"` is exactly what on-the-fly training encodes with `start="first"`. Whole-video
export (`start="whole"`) reads the same sample with `decode_whole`, chunk by chunk.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from einops import rearrange

from cinemamba.data.video import (
    VideoDecodeError,
    VideoInfo,
    decode_video,
    iter_video,
    probe_video,
)
from cinemamba_sampling import to_uint8
from cinemamba_vae import VideoAutoencoder

log = logging.getLogger(__name__)

CLIP_STARTS = ("random", "first")  # a clip of `frames` frames (training from raw shards)
EXPORT_STARTS = ("whole", "first")  # latent export: every frame of the video, or the first clip
CLIP_CROPS = ("none", "center", "random")

# `crop: none` resizes straight to the clip size: past this relative change of a video's aspect
# ratio (a 210x160 video squashed to a square is 31 %, 16:9 to a square 78 %), the sample is
# counted under "aspect_squashed" and the first one per process is logged (issue 15).
SQUASH_TOLERANCE = 0.05
_squash_logged = False


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
    fps: when > 0, a target frame rate: the stride of each video is round(its fps / fps)
        (at least 1), so sources of mixed frame rates give clips of one rate.
    height / width: output size (0 keeps the stored size).
    crop: "none" resizes straight to height x width; "center" / "random" resize the short
        side to fit (aspect kept) and crop the rest (random: seeded per sample position).
    start: "random" (uniform over valid starts, seeded per sample position) or "first";
        latent export also takes "whole": every frame of the video (`frames` is then unused;
        the longest prefix of 1 + k * frame step frames is kept).
    """

    frames: int = 17
    stride: int = 1
    fps: float = 0.0
    height: int = 0
    width: int = 0
    crop: str = "none"
    start: str = "random"

    def validate(self, starts: tuple[str, ...] = CLIP_STARTS) -> None:
        """Raise ValueError naming the bad field (`starts`: the valid `start` values)."""
        if self.frames < 1 or self.stride < 1:
            raise ValueError(
                f"clip frames and stride must be >= 1, got {self.frames}, {self.stride}"
            )
        if self.fps < 0:
            raise ValueError(f"clip fps must be >= 0 (0: use stride), got {self.fps}")
        if self.crop not in CLIP_CROPS:
            raise ValueError(f"clip crop must be one of {CLIP_CROPS}, got {self.crop!r}")
        if self.start not in starts:
            raise ValueError(f"clip start must be one of {starts}, got {self.start!r}")
        if (self.height == 0) != (self.width == 0) or self.height < 0 or self.width < 0:
            raise ValueError(
                f"clip height and width must both be 0 (stored size) or both positive, got "
                f"{self.height}x{self.width}"
            )


# Declared values outside these bounds are not believed at all (a 2.5e10-frame video is a
# broken writer, not a long video); inside them they must still agree with the header.
PLAUSIBLE = {"frames": 10_000_000, "fps": 10_000.0, "height": 65_536, "width": 65_536}
METADATA_FIELDS = ("frames", "fps", "height", "width")


# Clip settings chosen per video from its header (e.g. its bucket's size); may raise SampleError.
ClipChoice = Callable[[VideoInfo, ClipConfig], ClipConfig]


def decode_caption(data: bytes, key: Any) -> str:
    """A caption as text; bytes that are not UTF-8 are a counted skip, never trained on as
    replacement characters (issue 14)."""
    try:
        caption = bytes(data).decode("utf-8").strip()
    except UnicodeDecodeError as err:
        raise SampleError(
            "bad_caption_encoding", f"sample {key!r}: caption is not UTF-8 ({err})"
        ) from None
    if not caption:
        raise SampleError("no_caption", f"sample {key!r} has no caption")
    return caption


def check_metadata(meta: dict[str, Any], info: VideoInfo) -> str | None:
    """Why declared `meta` (KEY.json) cannot be trusted against the video header `info`:
    "implausible_metadata" (not a positive number within `PLAUSIBLE`), "metadata_mismatch"
    (differs from the header), or None (absent or agreeing)."""
    mismatch = False
    for name in METADATA_FIELDS:
        if name not in meta or meta[name] is None:
            continue
        value = meta[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "implausible_metadata"
        if not (0 < value <= PLAUSIBLE[name]):  # also rejects NaN
            return "implausible_metadata"
        true = getattr(info, name)
        if name == "fps":
            mismatch |= abs(value - true) > 1e-3 * true
        else:
            mismatch |= value != true
    return "metadata_mismatch" if mismatch else None


def describe_mismatch(meta: dict[str, Any], info: VideoInfo) -> str:
    """'declared frames=999, video has 12; ...' for a log line."""
    return "; ".join(
        f"declared {n}={meta[n]!r}, video has {getattr(info, n)}"
        for n in METADATA_FIELDS
        if n in meta and meta[n] != getattr(info, n)
    )


def to_pixels(frames: torch.Tensor) -> torch.Tensor:
    """uint8 `(..., T, H, W, 3)` -> float `(..., 3, T, H, W)` in [-1, 1] (on frames' device).

    Training keeps clips uint8 until they reach the device (4x less to move, and no bf16
    rounding of pixel values), then converts with this same function as the export.
    """
    video = frames.float().div_(127.5).sub_(1.0)  # in place: one float allocation, not three
    return rearrange(video, "... t h w c -> ... c t h w")


@torch.no_grad()
def vae_roundtrip(vae: VideoAutoencoder, frames: np.ndarray, chunk: int) -> np.ndarray:
    """uint8 frames encoded and decoded by the VAE: what a perfect backbone could at best show."""
    video = to_pixels(torch.from_numpy(frames))[None]  # (1, 3, T, H, W)
    latents = vae.encode(video, sample=False, chunk_frames=chunk * vae.config.temporal_compression)
    return to_uint8(vae.decode(latents, chunk_frames=chunk))[0]


def _read_sample(sample: dict[str, Any]) -> tuple[bytes, str, dict[str, Any], VideoInfo, list]:
    """(video bytes, caption, declared metadata, header info, warnings) of a raw sample."""
    key = sample.get("__key__")
    data = sample.get("mp4")
    if data is None:
        raise SampleError("no_video", f"sample {key!r} has no .mp4")
    caption = decode_caption(sample.get("txt", b""), key)
    try:
        meta = json.loads(sample["json"]) if "json" in sample else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = {}
    if not isinstance(meta, dict):
        meta = {}
    try:
        # The video's own header, not KEY.json, decides what is decoded: a JSON that claims
        # 999 frames must not turn a good video into an "undecodable" one (issue 14).
        info = probe_video(bytes(data))
    except VideoDecodeError as err:
        raise SampleError("undecodable", f"sample {key!r}: {err}") from None
    warnings = []
    problem = check_metadata(meta, info)
    if problem is not None:
        warnings.append(problem)
        log.warning("sample %r: %s (%s); using the video's own header", key, problem,
                    describe_mismatch(meta, info))  # fmt: skip
    return bytes(data), caption, meta, info, warnings


def _stride(clip: ClipConfig, info: VideoInfo) -> int:
    """Frame stride of this video: `clip.stride`, or the one that reaches `clip.fps`."""
    if clip.fps > 0 and info.fps > 0:
        return max(1, round(info.fps / clip.fps))
    return clip.stride


def decode_clip(
    sample: dict[str, Any],
    clip: ClipConfig,
    rng: np.random.Generator,
    fit: ClipChoice | None = None,
) -> tuple[torch.Tensor, str, dict[str, Any]]:
    """(uint8 frames `(T, H, W, 3)`, caption, metadata) of one raw WebDataset sample.

    `fit(info, clip)`, if given, picks the clip settings from the video's header (a bucket's
    size: `cinemamba.data.buckets.export_fit`); it raises SampleError to leave a video out.

    Raises SampleError (reason "no_video", "no_caption", "bad_caption_encoding",
    "undecodable", "too_short"). Declared metadata (KEY.json) that disagrees with the video's
    header is reported in `meta["warnings"]` ("metadata_mismatch", "implausible_metadata").
    """
    key = sample.get("__key__")
    data, caption, meta, info, warnings = _read_sample(sample)
    if fit is not None:
        clip = fit(info, clip)
    stride = _stride(clip, info)
    span = (clip.frames - 1) * stride + 1
    if info.frames < span:
        raise SampleError(
            "too_short", f"sample {key!r} has {info.frames} frames; the clip needs {span}"
        )
    start = 0 if clip.start == "first" else int(rng.integers(info.frames - span + 1))
    change = squash_change(clip, info.height, info.width)
    if change > SQUASH_TOLERANCE:
        warnings.append("aspect_squashed")
        _log_squash_once(key, info, clip, change)
    size, box = _resize_and_crop(clip, info.height, info.width, rng)
    try:
        frames = decode_video(data, start, clip.frames, stride, size=size)
    except VideoDecodeError as err:
        raise SampleError("undecodable", f"sample {key!r}: {err}") from None
    if len(frames) < clip.frames:
        raise SampleError(
            "too_short", f"sample {key!r} decoded {len(frames)} of {clip.frames} frames"
        )
    if box is not None:
        top, left = box
        frames = frames[:, top : top + clip.height, left : left + clip.width]
    clip_info = {"start": start, "stride": stride, "frames": clip.frames}
    out_meta: dict[str, Any] = {"clip": clip_info, "source": meta}
    if warnings:
        out_meta["warnings"] = warnings  # callers count these; the sample is still used
    return torch.from_numpy(np.ascontiguousarray(frames)), caption, out_meta


def squash_change(clip: ClipConfig, height: int, width: int) -> float:
    """Relative change of a height x width video's aspect ratio under `clip` (0 unless
    `crop: none` resizes it to another shape): max(r, 1/r) - 1 of the two ratios' quotient."""
    if not clip.height or clip.crop != "none" or not height or not width:
        return 0.0
    ratio = (clip.width / clip.height) / (width / height)
    return max(ratio, 1 / ratio) - 1


def _log_squash_once(key: Any, info: VideoInfo, clip: ClipConfig, change: float) -> None:
    global _squash_logged
    if _squash_logged:
        return
    _squash_logged = True  # one line per process; every such sample is counted
    log.warning(
        "sample %r: crop 'none' squashes %dx%d video to %dx%d (aspect ratio changed by %.0f%%); "
        "further squashed samples are only counted ('aspect_squashed'). Set crop to 'center' or "
        "'random', or use buckets (docs/data.md)",
        key, info.height, info.width, clip.height, clip.width, 100 * change,
    )  # fmt: skip


@dataclass
class WholeVideo:
    """A raw sample opened for whole-video export: its frames come as uint8 chunks."""

    chunks: Iterator[torch.Tensor]  # uint8 (k, H, W, 3), in order; SampleError if undecodable
    caption: str
    meta: dict[str, Any]  # "clip" (start, stride, frames planned), "source", "warnings"
    frames: int  # frames planned from the header: 1 + frame_step * k, at most the video's
    fps: float  # frame rate of the selected frames (the video's over the stride)
    source_frames: int  # frames in the video (its header)


def decode_whole(
    sample: dict[str, Any],
    clip: ClipConfig,
    rng: np.random.Generator,
    *,
    frame_step: int,
    chunk: int,
    fit: ClipChoice | None = None,
) -> WholeVideo:
    """Every `stride`-th frame of a raw sample, resized / cropped as `decode_clip` does, as
    chunks of `chunk` frames (one chunk in memory at a time). The longest prefix of
    `1 + frame_step * k` frames is kept (the VAE's frame rule; at most frame_step - 1 frames
    are left off the end). Raises SampleError as `decode_clip` does, also while iterating;
    `fit` as in `decode_clip` (its clip's `frames` is unused here)."""
    key = sample.get("__key__")
    data, caption, meta, info, warnings = _read_sample(sample)
    if fit is not None:
        clip = fit(info, clip)
    stride = _stride(clip, info)
    selected = (info.frames - 1) // stride + 1
    frames = 1 + frame_step * ((selected - 1) // frame_step)
    size, box = _resize_and_crop(clip, info.height, info.width, rng)
    change = squash_change(clip, info.height, info.width)
    if change > SQUASH_TOLERANCE:
        warnings.append("aspect_squashed")
        _log_squash_once(key, info, clip, change)

    def chunks() -> Iterator[torch.Tensor]:
        try:
            for part in iter_video(data, chunk=chunk, count=frames, stride=stride, size=size):
                if box is not None:
                    top, left = box
                    part = part[:, top : top + clip.height, left : left + clip.width]
                yield torch.from_numpy(np.ascontiguousarray(part))
        except VideoDecodeError as err:
            raise SampleError("undecodable", f"sample {key!r}: {err}") from None

    out_meta: dict[str, Any] = {"clip": {"start": 0, "stride": stride, "frames": frames},
                                "source": meta}  # fmt: skip
    if warnings:
        out_meta["warnings"] = warnings
    fps = info.fps / stride if info.fps > 0 else 0.0
    return WholeVideo(chunks(), caption, out_meta, frames, fps, info.frames)


def _resize_and_crop(
    clip: ClipConfig, height: int, width: int, rng: np.random.Generator
) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """(decode size, crop corner) that turn a height x width video into the clip's size."""
    if not clip.height:
        return None, None
    if clip.crop == "none":
        return (clip.height, clip.width), None
    scale = max(clip.height / height, clip.width / width)  # cover the target, keep aspect
    h, w = max(clip.height, round(height * scale)), max(clip.width, round(width * scale))
    if clip.crop == "center":
        return (h, w), ((h - clip.height) // 2, (w - clip.width) // 2)
    return (h, w), (int(rng.integers(h - clip.height + 1)), int(rng.integers(w - clip.width + 1)))
