"""The embedded data set, part 2: render scenes to uint8 video and write them as shards.

Shapes are star-shaped polygons (or a disc) drawn with 2x2 supersampled anti-aliasing on a
torus, so an object crossing an edge re-enters on the other side whole. Backgrounds are
tileable low-saturation textures (smooth noise, checkerboard, stripes) or a plain grey, which
may scroll. Everything is a pure function of (seed, split, index).
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np

from cinemamba.data.shapes import _REACH, shape_inside
from cinemamba.data.shards import sample_to_tar_entries, write_shards
from cinemamba.data.synth import (
    COLOURS,
    HELDOUT_PAIRS,
    SPLITS,
    SceneConfig,
    SceneObject,
    make_caption,
    sample_scene,
    scene_meta,
)
from cinemamba.data.synth_memory import make_memory_sample
from cinemamba.data.video import encode_video


def _coverage(obj: SceneObject, height: int, width: int):
    """Per-frame anti-aliased coverage of an object in a wrapped window: (alpha, rows, cols)."""
    half = obj.size / 2
    m = int(math.ceil(2 * half * _REACH[obj.spec.shape])) + 3
    off = np.arange(m) - m // 2  # (m,)
    cx0, cy0 = np.floor(obj.x).astype(np.int64), np.floor(obj.y).astype(np.int64)  # (T,)
    cols = cx0[:, None] + off  # (T, m)
    rows = cy0[:, None] + off
    alpha = np.zeros((len(obj.x), m, m), np.float32)
    for sy in (0.25, 0.75):  # 2x2 supersampling
        for sx in (0.25, 0.75):
            u = (cols + sx - obj.x[:, None])[:, None, :] / half  # (T, 1, m)
            v = (rows + sy - obj.y[:, None])[:, :, None] / half  # (T, m, 1)
            u, v = np.broadcast_arrays(u, v)
            alpha += shape_inside(obj.spec.shape, u, v)
    return alpha / 4, np.mod(rows, height), np.mod(cols, width)


def make_background(cfg: SceneConfig, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A tileable (H, W, 3) float32 background and its description (kind, tint, motion)."""
    h, w = cfg.height, cfg.width
    kinds = ["plain"] if cfg.background == "plain" else ["noise", "checker", "stripes"]
    kind = kinds[rng.integers(len(kinds))]
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == "plain":
        grey = np.full((h, w), rng.uniform(80, 150))
    elif kind == "noise":
        # Low-passed white noise in the Fourier domain is periodic, so it tiles when scrolled.
        f = np.fft.fft2(rng.standard_normal((h, w)))
        fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
        sigma = rng.uniform(0.04, 0.12)
        g = np.real(np.fft.ifft2(f * np.exp(-(fx**2 + fy**2) / (2 * sigma**2))))
        grey = 115 + 28 * g / (g.std() + 1e-8)
    elif kind == "checker":
        cell = int(rng.integers(4, 13))
        grey = np.where((yy // cell + xx // cell) % 2 == 0, 95.0, 140.0)
    else:
        period = float(rng.uniform(6, 16))
        grey = 117 + 22 * np.sin(2 * np.pi * (xx + yy) / period)
    tint = rng.uniform(-8, 8, size=3)
    bg = np.clip(grey[..., None] + tint, 40, 200).astype(np.float32)
    moving = kind != "plain" and rng.random() < cfg.background_motion_prob
    speed = rng.uniform(0.15, 0.5) * min(h, w) / 64 if moving else 0.0
    angle = rng.uniform(0, 2 * math.pi)
    desc = {
        "kind": kind,
        "tint": np.round(tint, 2).tolist(),
        "velocity": [round(speed * math.cos(angle), 4), round(speed * math.sin(angle), 4)],
    }
    return bg, desc


def render_scene(
    objects: list[SceneObject], cfg: SceneConfig, rng: np.random.Generator
) -> tuple[np.ndarray, dict]:
    """Render uint8 (T, H, W, 3) frames of a scene and return them with the background info."""
    h, w, n = cfg.height, cfg.width, cfg.frames
    bg, desc = make_background(cfg, rng)
    vx, vy = desc["velocity"]
    video = np.empty((n, h, w, 3), np.uint8)
    covers = [_coverage(o, h, w) for o in objects]
    chunk = max(1, (1 << 22) // (h * w))  # bound the float working set (~50 MB)
    for t0 in range(0, n, chunk):
        ts = np.arange(t0, min(n, t0 + chunk))
        frames = np.empty((len(ts), h, w, 3), np.float32)
        for i, t in enumerate(ts):
            frames[i] = np.roll(bg, (round(vy * t), round(vx * t)), axis=(0, 1))
        for obj, (alpha, rows, cols) in zip(objects, covers, strict=True):
            rgb = np.asarray(COLOURS[obj.spec.colour], np.float32)
            a = alpha[ts][..., None]  # (t, m, m, 1)
            idx = (np.arange(len(ts))[:, None, None], rows[ts][:, :, None], cols[ts][:, None, :])
            frames[idx] = frames[idx] * (1 - a) + a * rgb
        video[ts] = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
    return video, desc


def make_sample(
    index: int, split: str, seed: int, cfg: SceneConfig
) -> tuple[np.ndarray, str, dict]:
    """Frames, caption and KEY.json metadata (with per-frame ground truth) of one scene."""
    kind = scene_kind(index, split, seed, cfg)
    if kind != "objects":
        return make_memory_sample(kind, index, split, seed, cfg)
    objects = sample_scene(index, split, seed, cfg)
    rng = np.random.default_rng([seed, SPLITS.index(split), index, 1])
    caption = make_caption([o.spec for o in objects], rng, cfg.caption_synonyms)
    video, background = render_scene(objects, cfg, rng)
    meta = {
        **scene_meta(cfg, split, seed, index, caption),
        "heldout": any((o.spec.colour, o.spec.shape) in HELDOUT_PAIRS for o in objects),
        "background": background,
        "objects": [o.ground_truth() for o in objects],
    }
    return video, caption, meta


def scene_kind(index: int, split: str, seed: int, cfg: SceneConfig) -> str:
    """The kind of scene `index` of a split, drawn from `cfg.kinds` by its own random stream,
    so the scenes of each kind do not depend on the other kinds' probabilities."""
    names = [k for k, p in cfg.kinds.items() if p > 0]
    if len(names) == 1:
        return names[0]
    p = np.array([cfg.kinds[k] for k in names], np.float64)
    rng = np.random.default_rng([seed, SPLITS.index(split), index, 2])
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def synth_key(split: str, index: int) -> str:
    """The sample key of scene `index` of a split."""
    return f"synth_{split}_{index:07d}"


def _tar_sample(index: int, split: str, seed: int, cfg: SceneConfig) -> dict:
    video, caption, meta = make_sample(index, split, seed, cfg)
    data = encode_video(video, cfg.fps, crf=cfg.crf)
    return sample_to_tar_entries(synth_key(split, index), data, caption, meta)


def write_synth(
    out_dir: str | Path,
    split: str,
    count: int,
    cfg: SceneConfig,
    *,
    seed: int = 0,
    samples_per_shard: int = 256,
    workers: int = 1,
) -> list[Path]:
    """Write `count` scenes of a split as shards `SPLIT-000000.tar, ...` (skips complete shards)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    groups = [
        list(range(s, min(count, s + samples_per_shard)))
        for s in range(0, count, samples_per_shard)
    ]
    return write_shards(
        out_dir,
        split,
        groups,
        partial(_tar_sample, split=split, seed=seed, cfg=cfg),
        keys=[[synth_key(split, i) for i in g] for g in groups],
        info={"source": "synth", "seed": seed, "count": count, "config": cfg.record()},
        workers=workers,
        desc=f"synth {split}",
    )
