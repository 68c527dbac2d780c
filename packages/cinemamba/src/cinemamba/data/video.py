"""Video file I/O with PyAV: uint8 `(T, H, W, 3)` <-> mp4 bytes (libx264).

Decoding selects frames (start, count, stride) and seeks to the keyframe before `start`, so a
short clip of a long video costs a few GOPs, not the whole file. Frames can be resized by
libswscale while they are converted to RGB, which is much cheaper than resizing afterwards.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


class VideoDecodeError(ValueError):
    """A video that cannot be opened or decoded (corrupt, empty, no video stream)."""


@dataclass(frozen=True)
class VideoInfo:
    """Container metadata of one video."""

    frames: int
    fps: float
    height: int
    width: int

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.frames / self.fps if self.fps > 0 else 0.0


def encode_video(
    frames: np.ndarray,
    fps: float = 24.0,
    *,
    crf: int = 18,
    preset: str = "veryfast",
    gop: int | None = 32,
) -> bytes:
    """Encode uint8 `(T, H, W, 3)` RGB frames as an H.264 mp4 and return its bytes.

    `gop` is the keyframe interval: smaller means cheaper seeks into long videos, bigger files.
    Odd frame sizes cannot be chroma-subsampled, so they are stored as yuv444p.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if frames.shape[0] == 0:
        raise ValueError("frames is empty: cannot encode a video with 0 frames")
    _, height, width, _ = frames.shape
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p" if height % 2 == 0 and width % 2 == 0 else "yuv444p"
        stream.options = {"crf": str(crf), "preset": preset}
        if gop is not None:
            stream.codec_context.gop_size = gop
        for arr in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buf.getvalue()


def write_video(path: str | Path, frames: np.ndarray, fps: float = 24.0, **kwargs) -> None:
    """Encode frames (see `encode_video`) to `path`, via a temporary name removed on failure."""
    path = Path(path)
    data = encode_video(frames, fps, **kwargs)  # an encoding error leaves nothing on disk
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. a full disk: no half-written file left behind
        raise


def describe_source(source: bytes | str | Path) -> str:
    """How an error names a video: its path, or the size of an in-memory buffer."""
    if isinstance(source, bytes | bytearray | memoryview):
        return f"<{len(source)}-byte video buffer>"
    return repr(str(source))


def _names_source(fn):
    """Prefix a VideoDecodeError raised by `fn(source, ...)` with the name of the input."""

    @functools.wraps(fn)
    def wrapper(source, *args, **kwargs):
        try:
            return fn(source, *args, **kwargs)
        except VideoDecodeError as err:
            raise VideoDecodeError(f"{describe_source(source)}: {err}") from None

    return wrapper


def _open(source: bytes | str | Path) -> av.container.InputContainer:
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise VideoDecodeError("zero-length video")
        source = io.BytesIO(source)
    try:
        container = av.open(source if isinstance(source, io.BytesIO) else str(source))
    except (av.error.FFmpegError, OSError) as err:
        raise VideoDecodeError(f"cannot open video: {err}") from None
    if not container.streams.video:
        container.close()
        raise VideoDecodeError("no video stream")
    return container


def _fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


@_names_source
def probe_video(source: bytes | str | Path, *, count: bool = False) -> VideoInfo:
    """Frame count, fps and size from the container header (decode-counts when `count` or missing)."""
    with _open(source) as container:
        stream = container.streams.video[0]
        frames = stream.frames
        height, width = stream.codec_context.height, stream.codec_context.width
        fps = _fps(stream)
        if count or frames <= 0:
            try:
                frames = sum(1 for _ in container.decode(stream))
            except av.error.FFmpegError as err:
                raise VideoDecodeError(f"cannot decode video: {err}") from None
    if frames <= 0:
        raise VideoDecodeError("video has no frames")
    return VideoInfo(frames=frames, fps=fps, height=height, width=width)


def _selected_frames(
    source: bytes | str | Path,
    start: int,
    last: int | None,
    stride: int,
    size: tuple[int, int] | None,
) -> Iterator[np.ndarray]:
    """Frames `start, start+stride, ...` up to index `last` (None: the end) as uint8
    `(H, W, 3)`, one at a time; seeks to the keyframe at or before `start`."""
    with _open(source) as container:
        stream = container.streams.video[0]
        fps = _fps(stream)
        tb = stream.time_base
        t0 = stream.start_time or 0
        if fps <= 0 or tb is None:
            raise VideoDecodeError("video has no usable frame rate or time base")
        convert = {"format": "rgb24"}
        if size is not None:
            convert.update(height=size[0], width=size[1], interpolation="AREA")
        try:
            if start > 0:
                # Seek to the keyframe at or before `start`; decoding resumes from there.
                container.seek(t0 + int(start / fps / tb), stream=stream, backward=True)
            index = -1
            for frame in container.decode(stream):
                if frame.pts is not None:
                    index = round(float((frame.pts - t0) * tb) * fps)
                else:  # no timestamps: count frames (only valid without a seek)
                    index += 1
                if index < start or (index - start) % stride:
                    continue
                if last is not None and index > last:
                    break
                yield frame.to_ndarray(**convert)
        except av.error.FFmpegError as err:
            raise VideoDecodeError(f"cannot decode video: {err}") from None


@_names_source
def decode_video(
    source: bytes | str | Path,
    start: int = 0,
    count: int | None = None,
    stride: int = 1,
    *,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode frames `start, start+stride, ...` (`count` of them, or to the end) as uint8 (T, H, W, 3).

    Seeks to the keyframe at or before `start` instead of decoding from the beginning.
    `size=(height, width)` resizes during colour conversion (libswscale, area filter).
    Returns fewer than `count` frames when the video ends first; raises `VideoDecodeError`
    when the data cannot be decoded or no frame is selected.
    """
    if start < 0 or stride < 1 or (count is not None and count < 1):
        raise ValueError(f"bad frame selection start={start} count={count} stride={stride}")
    last = None if count is None else start + (count - 1) * stride
    out = list(_selected_frames(source, start, last, stride, size))
    if not out:
        raise VideoDecodeError(f"no frames selected (start={start}, stride={stride})")
    return np.stack(out)


def iter_video(
    source: bytes | str | Path,
    *,
    chunk: int,
    count: int | None = None,
    stride: int = 1,
    size: tuple[int, int] | None = None,
) -> Iterator[np.ndarray]:
    """Frames `0, stride, ...` (`count` of them, or to the end) as uint8 chunks
    `(<= chunk, H, W, 3)`, decoded front to back: memory holds one chunk, whatever the
    video's length (whole-video latent export). Errors name the input, as `decode_video`'s.
    """
    if chunk < 1 or stride < 1 or (count is not None and count < 1):
        raise ValueError(f"bad frame selection chunk={chunk} count={count} stride={stride}")
    last = None if count is None else (count - 1) * stride
    buf: list[np.ndarray] = []
    try:
        for frame in _selected_frames(source, 0, last, stride, size):
            buf.append(frame)
            if len(buf) == chunk:
                yield np.stack(buf)
                buf = []
    except VideoDecodeError as err:
        raise VideoDecodeError(f"{describe_source(source)}: {err}") from None
    if buf:
        yield np.stack(buf)


@_names_source
def transcode_video(source: str | Path, *, crf: int = 18, preset: str = "veryfast") -> bytes:
    """Re-encode any video PyAV can read as H.264 mp4 bytes, streaming frame by frame."""
    with _open(source) as src:
        stream = src.streams.video[0]
        fps = _fps(stream) or 24.0
        buf = io.BytesIO()
        with av.open(buf, mode="w", format="mp4") as dst:
            out = dst.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            out.width, out.height = stream.codec_context.width, stream.codec_context.height
            out.pix_fmt = "yuv420p" if out.width % 2 == 0 and out.height % 2 == 0 else "yuv444p"
            out.options = {"crf": str(crf), "preset": preset}
            try:
                for frame in src.decode(stream):
                    rgb = frame.reformat(format="rgb24")
                    dst.mux(
                        out.encode(av.VideoFrame.from_ndarray(rgb.to_ndarray(), format="rgb24"))
                    )
            except av.error.FFmpegError as err:
                raise VideoDecodeError(f"cannot decode video: {err}") from None
            dst.mux(out.encode(None))
    return buf.getvalue()
