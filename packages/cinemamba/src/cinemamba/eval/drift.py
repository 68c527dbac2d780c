"""Drift along long generated videos: FVD and temporal flicker of each successive segment.

For generated videos N times the training length, quality typically degrades along the video.
The curve long-video papers show is reproduced here:

- **segment FVD**: cut every generated video into successive non-overlapping segments of
  `seg_frames` frames (16: the FVD_16 clip; a trailing partial segment is dropped); segment k's
  features over all generated videos are compared with the **real set's segment
  distribution**: every full segment of every real video, pooled (so real videos of any length
  contribute, and the reference does not depend on k);
- **flicker**: VBench's temporal-flickering statistic without weights: the mean absolute
  difference of consecutive frames within a segment, on [0, 1] pixel values (uint8 / 255),
  averaged over videos (VBench reports `(255 - MAD) / 255`; we report the MAD itself: 0 = a
  still segment, 1 = every pixel swinging between black and white each frame).

The real set's flicker is reported once (pooled over its segments) as the reference level.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cinemamba.eval.fvd import FeatureStats, frechet_distance
from cinemamba.eval.tables import markdown_table

log = logging.getLogger(__name__)


def segments(video: np.ndarray, seg_frames: int = 16) -> list[np.ndarray]:
    """Successive non-overlapping `seg_frames`-frame segments of `(T, H, W, 3)` (partial dropped)."""
    if seg_frames < 2:
        raise ValueError(f"seg_frames must be >= 2, got {seg_frames}")
    return [
        video[s : s + seg_frames] for s in range(0, video.shape[0] - seg_frames + 1, seg_frames)
    ]


def flicker(segment: np.ndarray) -> float:
    """Mean |frame[t+1] - frame[t]| of a uint8 `(T, H, W, 3)` segment, on the [0, 1] scale."""
    if segment.shape[0] < 2:
        raise ValueError(f"flicker needs at least 2 frames, got {segment.shape[0]}")
    x = segment.astype(np.int16)
    return float(np.abs(np.diff(x, axis=0)).mean() / 255.0)


@dataclass
class SegmentReference:
    """The real set's segment distribution: raw features of every full segment, their flicker."""

    feats: np.ndarray  # (N, D) one row per real segment
    flicker: list[float]
    videos: int
    seg_frames: int = 16

    @classmethod
    def from_videos(
        cls, features, real: Iterable[np.ndarray], seg_frames: int = 16
    ) -> SegmentReference:
        """Features and flicker of every full segment of every real video."""
        feats, flick, videos = [], [], 0
        for video in tqdm(real, desc="drift: real segments", unit="video"):
            videos += 1
            for seg in segments(video, seg_frames):
                feats.append(features(seg[None]))
                flick.append(flicker(seg))
        arr = np.concatenate(feats) if feats else np.zeros((0, 0))
        return cls(arr, flick, videos, seg_frames)

    def stats(self) -> FeatureStats:
        """Running statistics of the segment features (one row at a time, as when computed)."""
        out = FeatureStats()
        for row in self.feats:
            out.add(row[None])
        return out


def drift_table(
    features,
    real: Iterable[np.ndarray] | SegmentReference,
    generated: Iterable[np.ndarray],
    seg_frames: int = 16,
) -> dict:
    """Per-segment FVD and flicker of generated videos against the real segment distribution.

    `features` maps uint8 clips `(B, T, H, W, 3)` to `(B, D)` (an FVD extractor); `real` is the
    real videos or their `SegmentReference` (computed once, reused for several models). Returns
    `{"seg_frames", "real": {"segments", "videos", "flicker"}, "rows": [{"segment", "start",
    "end", "videos", "fvd", "flicker"}, ...]}`; `fvd` is None where a side has < 2 clips.
    """
    if not isinstance(real, SegmentReference):
        real = SegmentReference.from_videos(features, real, seg_frames)
    elif real.seg_frames != seg_frames:
        raise ValueError(f"the reference has {real.seg_frames}-frame segments, not {seg_frames}")
    ref = real.stats()
    per_seg: list[FeatureStats] = []
    per_flicker: list[list[float]] = []
    for video in tqdm(generated, desc="drift: generated segments", unit="video"):
        for k, seg in enumerate(segments(video, seg_frames)):
            if k == len(per_seg):
                per_seg.append(FeatureStats())
                per_flicker.append([])
            per_seg[k].add(features(seg[None]))
            per_flicker[k].append(flicker(seg))
    ref_stats = ref.mean_cov() if ref.count >= 2 else None
    if ref_stats is None:
        log.warning("drift: the real set has %d full segments; need 2 for FVD", ref.count)
    rows = []
    for k, stats in enumerate(per_seg):
        value = None
        if ref_stats is not None and stats.count >= 2:
            value = frechet_distance(*ref_stats, *stats.mean_cov())
        rows.append(
            {
                "segment": k,
                "start": k * seg_frames,
                "end": (k + 1) * seg_frames,
                "videos": stats.count,
                "fvd": value,
                "flicker": float(np.mean(per_flicker[k])),
            }
        )
    return {
        "seg_frames": seg_frames,
        "real": {
            "videos": real.videos,
            "segments": ref.count,
            "flicker": float(np.mean(real.flicker)) if real.flicker else None,
        },
        "rows": rows,
    }


def drift_markdown(table: dict) -> str:
    """The drift table as markdown (one row per segment, the real reference on top)."""
    real = table["real"]
    rows = [["real (pooled)", "–", real["segments"], None, real["flicker"]]]
    rows += [
        [r["segment"], f"{r['start']}–{r['end']}", r["videos"], r["fvd"], r["flicker"]]
        for r in table["rows"]
    ]
    head = ["segment", "frames", "clips", f"FVD_{table['seg_frames']} vs real segments", "flicker"]
    return markdown_table(head, rows)


def plot_drift(table: dict, path: str | Path) -> Path:
    """PNG of segment FVD and flicker against the segment's start frame (temporary name, rename)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    rows = table["rows"]
    x = [r["start"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    fvd = [np.nan if r["fvd"] is None else r["fvd"] for r in rows]
    ax.plot(x, fvd, "o-", color="tab:blue", label="FVD vs real segments")
    ax.set_xlabel("segment start frame")
    ax.set_ylabel(f"FVD_{table['seg_frames']}", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(x, [r["flicker"] for r in rows], "s--", color="tab:red", label="flicker")
    if table["real"]["flicker"] is not None:
        ax2.axhline(table["real"]["flicker"], color="tab:red", lw=0.8, ls=":", label="real flicker")
    ax2.set_ylabel("flicker (mean |Δframe|, [0, 1])", color="tab:red")
    n = rows[0]["videos"] if rows else 0
    ax.set_title(
        f"drift over time ({n} generated videos, {table['real']['segments']} real segments)"
    )
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
