"""`cinemamba data inspect`: what a shard set holds, what is wrong with it, and how it looks.

Reads every sample once: counts samples and bad samples by reason (the loader's reasons, and
`duplicate_key` for a key seen before), collects frames / duration / size / caption-length
statistics from each video's own header (declared `KEY.json` values that disagree are counted
as `metadata_mismatch` or `implausible_metadata`, never averaged in), and draws a PNG contact sheet of the
first few good clips (evenly spaced frames, one row per clip, caption underneath).
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cinemamba import media
from cinemamba.data.loader import expand_urls
from cinemamba.data.video import VideoDecodeError, decode_video, probe_video
from cinemamba.latents.clips import check_metadata, describe_mismatch
from cinemamba.latents.stream import TruncatedTarError, read_tar

log = logging.getLogger(__name__)


@dataclass
class ShardStats:
    """Per-sample values of a shard set, and bad samples by reason."""

    samples: int = 0
    frames: list[int] = field(default_factory=list)
    duration: list[float] = field(default_factory=list)
    size: list[str] = field(default_factory=list)  # "HxW"
    bytes: list[int] = field(default_factory=list)
    caption_words: list[int] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    warnings: Counter = field(default_factory=Counter)  # good samples with lying KEY.json

    def summary(self) -> dict:
        """JSON-ready summary: counts, min/mean/max per quantity, histograms."""

        def stats(xs):
            a = np.asarray(xs, np.float64)
            if a.size == 0:
                return None
            return {"min": float(a.min()), "mean": float(a.mean()), "max": float(a.max())}

        return {
            "samples": self.samples,
            "good": len(self.frames),
            "skipped": dict(self.skipped),
            "warnings": dict(self.warnings),
            "frames": stats(self.frames),
            "duration_s": stats(self.duration),
            "video_bytes": stats(self.bytes),
            "caption_words": stats(self.caption_words),
            "sizes": dict(Counter(self.size).most_common()),
            "frames_histogram": histogram(self.frames),
            "duration_histogram": histogram(self.duration),
        }


def histogram(values: list[float], bins: int = 8) -> list[dict]:
    """Equal-width bins as [{"lo", "hi", "count"}] (one bin when all values are equal)."""
    if not values:
        return []
    a = np.asarray(values, np.float64)
    counts, edges = np.histogram(a, bins=bins if a.min() < a.max() else 1)
    return [
        {"lo": round(float(lo), 3), "hi": round(float(hi), 3), "count": int(c)}
        for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True)
    ]


def _samples(url: str, stats: ShardStats) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) of one shard; a truncated or unreadable shard is counted once
    (`read_tar` checks member sizes and the end-of-archive blocks)."""
    key = None
    try:
        for sample in read_tar(url):
            key = sample["__key__"]
            yield key, {k: v for k, v in sample.items() if not k.startswith("__")}
    except (tarfile.TarError, EOFError, OSError) as err:
        reason = "truncated_tar" if isinstance(err, TruncatedTarError) else "unreadable_shard"
        log.warning("shard %s: %s after key %r: %s", url, reason, key, err)
        stats.skipped[reason] += 1


def _bad(stats: ShardStats, reason: str, key: str, url: str, detail: str) -> None:
    stats.skipped[reason] += 1
    log.warning("bad sample %s in %s (%s): %s", key, url, reason, detail)


def inspect_shards(
    spec: str, *, contact_clips: int = 6, contact_frames: int = 8
) -> tuple[ShardStats, list[tuple[np.ndarray, str]]]:
    """Statistics of every sample of `spec`, and up to `contact_clips` (frames, caption) rows."""
    stats = ShardStats()
    rows: list[tuple[np.ndarray, str]] = []
    seen: set[str] = set()
    for url in tqdm(expand_urls(spec), desc="inspect", unit="shard"):
        for key, fields in _samples(url, stats):
            stats.samples += 1
            if key in seen:
                _bad(stats, "duplicate_key", key, url, "key seen before (export keeps the first)")
                continue
            seen.add(key)
            video = fields.get("mp4")
            try:
                caption = fields.get("txt", b"").decode("utf-8").strip()
            except UnicodeDecodeError as err:
                _bad(stats, "bad_caption_encoding", key, url, f"caption is not UTF-8: {err}")
                continue
            if video is None:
                _bad(stats, "no_video", key, url, f"fields {sorted(fields)}")
                continue
            if not video:
                _bad(stats, "empty_video", key, url, "zero-length video")
                continue
            if not caption:
                _bad(stats, "no_caption", key, url, "no caption")
                continue
            try:
                meta = json.loads(fields["json"]) if "json" in fields else {}
                info = probe_video(video)
                first = decode_video(video, 0, 1)  # the header alone does not prove it decodes
            except (ValueError, VideoDecodeError) as err:
                _bad(stats, "undecodable", key, url, str(err))
                continue
            if not isinstance(meta, dict):
                meta = {}
            problem = check_metadata(meta, info)
            if problem is not None:  # counted; statistics use the video's own header
                stats.warnings[problem] += 1
                log.warning("sample %s in %s: %s (%s)", key, url, problem,
                            describe_mismatch(meta, info))  # fmt: skip
            frames, fps = info.frames, info.fps
            stats.frames.append(frames)
            stats.duration.append(frames / fps if fps > 0 else 0.0)
            stats.size.append(f"{first.shape[1]}x{first.shape[2]}")
            stats.bytes.append(len(video))
            stats.caption_words.append(len(caption.split()))
            if len(rows) < contact_clips:
                idx = np.linspace(0, frames - 1, contact_frames).round().astype(int)
                picked = [decode_video(video, int(i), 1)[0] for i in idx]
                rows.append((np.stack(picked), caption))
    return stats, rows


def contact_sheet(rows: list[tuple[np.ndarray, str]], path: str | Path, scale: int = 2) -> Path:
    """Write rows of frames (each `(N, H, W, 3)` uint8), each under its caption, as one PNG.

    Each row is the shared labelled sheet (`cinemamba.media.contact_sheet`) of its frames,
    enlarged `scale` times; rows of different widths are padded with white.
    """
    if not rows:
        raise ValueError("no clips to draw: every sample was bad or the shard set is empty")
    gap = 4
    sheets = []
    for frames, caption in rows:
        big = frames.repeat(scale, axis=1).repeat(scale, axis=2)
        sheets.append(
            media.contact_sheet(big, columns=len(big), max_frames=len(big), title=caption)
        )
    width = max(s.shape[1] for s in sheets)
    height = sum(s.shape[0] for s in sheets) + gap * (len(sheets) - 1)
    sheet = np.full((height, width, 3), 255, dtype=np.uint8)
    top = 0
    for row in sheets:
        sheet[top : top + row.shape[0], : row.shape[1]] = row
        top += row.shape[0] + gap
    return media.save_png(path, sheet)


def format_report(summary: dict) -> str:
    """Human-readable report with text histograms."""
    lines = [f"samples: {summary['samples']} ({summary['good']} good)"]
    skipped = summary["skipped"]
    lines.append(
        "bad samples: " + (", ".join(f"{k}={v}" for k, v in sorted(skipped.items())) or "none")
    )
    warned = summary.get("warnings") or {}
    if warned:
        lines.append(
            "metadata warnings (samples kept, header values used): "
            + ", ".join(f"{k}={v}" for k, v in sorted(warned.items()))
        )
    for name in ("frames", "duration_s", "video_bytes", "caption_words"):
        s = summary[name]
        if s:
            lines.append(f"{name}: min {s['min']:.4g}  mean {s['mean']:.4g}  max {s['max']:.4g}")
    lines.append("sizes: " + ", ".join(f"{k} ({v})" for k, v in summary["sizes"].items()))
    for name in ("frames_histogram", "duration_histogram"):
        bins = summary[name]
        if not bins:
            continue
        lines.append(name.replace("_", " ") + ":")
        top = max(b["count"] for b in bins) or 1
        for b in bins:
            bar = "#" * round(40 * b["count"] / top)
            lines.append(f"  [{b['lo']:>9.4g}, {b['hi']:>9.4g}] {b['count']:>6} {bar}")
    return "\n".join(lines)
