"""VAE reconstruction quality over a raw shard set: PSNR, SSIM and LPIPS per frame position.

Each video contributes its first `clip_frames` frames (1 + k * temporal compression); the
report keeps one value per frame position as well as the mean, so error that grows along time
(causal decoding drift, chunk boundaries) is visible. Also the media helpers the VAE task uses
for its periodic reconstructions.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from tqdm import tqdm

from cinemamba.eval.sources import shard_paths
from cinemamba.eval.tables import markdown_table
from cinemamba.latents.clips import ClipConfig, SampleError, decode_clip, to_pixels
from cinemamba.latents.stream import read_tar
from cinemamba_vae import VideoAutoencoder, load_vae
from cinemamba_vae.metrics import frames_psnr, frames_ssim
from cinemamba_vae.perceptual import LPIPSConfig, build_lpips

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- clips and media
def iter_clips(spec: str, clip: ClipConfig, skipped: Counter) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, uint8 frames (T, H, W, 3)) of each sample of a shard set, in order.

    Samples that cannot give a clip are logged and counted in `skipped` by reason.
    """
    rng = np.random.default_rng(0)  # only used by clip.start="random"
    for path in shard_paths(spec):
        for sample in read_tar(str(path)):
            try:
                frames, _, _ = decode_clip(sample, clip, rng)
            except SampleError as err:
                skipped[err.reason] += 1
                log.warning("skipping %s: %s", sample.get("__key__"), err)
                continue
            yield str(sample.get("__key__")), frames


def load_clips(spec: str, clip: ClipConfig, count: int) -> torch.Tensor:
    """The first `count` usable clips of a shard set, stacked: uint8 (N, T, H, W, 3)."""
    skipped: Counter = Counter()
    clips = []
    for _, frames in iter_clips(spec, clip, skipped):
        clips.append(frames)
        if len(clips) == count:
            break
    if not clips:
        raise ValueError(
            f"no usable {clip.frames}-frame clip in {spec!r} (skipped {dict(skipped)})"
        )
    return torch.stack(clips)


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """A (3, T, H, W) clip in [-1, 1] -> uint8 frames (T, H, W, 3)."""
    frames = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(frames, "c t h w -> t h w c").cpu().numpy()


def reconstruction_strip(
    original: np.ndarray, recon: np.ndarray, max_frames: int = 9
) -> np.ndarray:
    """Originals over reconstructions, up to `max_frames` evenly spaced frames: (2H, n*W, 3)."""
    idx = np.unique(np.linspace(0, len(original) - 1, min(max_frames, len(original))).round())
    idx = idx.astype(int)
    top = np.concatenate(list(original[idx]), axis=1)
    bottom = np.concatenate(list(recon[idx]), axis=1)
    return np.concatenate([top, bottom], axis=0)


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_reconstruction(
    vae: VideoAutoencoder,
    shards: str,
    *,
    clip_frames: int = 17,
    size: int = 0,
    max_videos: int = 16,
    lpips_model: torch.nn.Module | None = None,
    chunk_frames: int | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """PSNR / SSIM / LPIPS of `vae` reconstructions of the first clip of each video.

    Returns means, per-frame-position lists (`per_frame`), counts and skipped samples.
    `size` resizes frames to size x size while decoding (0 keeps the stored size).
    """
    s = vae.config.spatial_compression
    vae.latent_shape(clip_frames, s, s)  # a clip length the VAE cannot take fails here, named
    vae = vae.to(device).eval()
    clip = ClipConfig(frames=clip_frames, height=size, width=size, start="first")
    skipped: Counter = Counter()
    rows: dict[str, list[np.ndarray]] = {"psnr": [], "ssim": []}
    if lpips_model is not None:
        rows["lpips"] = []
        lpips_model = lpips_model.to(device)
    clips = iter_clips(shards, clip, skipped)
    for n, (key, frames) in enumerate(tqdm(clips, desc="eval-vae", total=max_videos or None)):
        if max_videos and n >= max_videos:
            break
        video = to_pixels(frames.to(device))[None]  # (1, 3, T, H, W)
        try:
            recon = vae.decode(vae.encode(video, sample=False, chunk_frames=chunk_frames),
                               chunk_frames=chunk_frames)  # fmt: skip
        except ValueError as err:  # e.g. a frame size the VAE cannot take
            skipped["bad_size"] += 1
            log.warning("skipping %s: %s", key, err)
            continue
        rows["psnr"].append(frames_psnr(video, recon)[0].cpu().numpy())
        rows["ssim"].append(frames_ssim(video, recon)[0].cpu().numpy())
        if lpips_model is not None:
            a = rearrange(recon, "b c t h w -> (b t) c h w")
            b = rearrange(video, "b c t h w -> (b t) c h w")
            rows["lpips"].append(lpips_model(a, b).flatten().cpu().numpy())
    if not rows["psnr"]:
        raise ValueError(f"no clip of {shards!r} could be evaluated (skipped {dict(skipped)})")
    report: dict[str, Any] = {"clips": len(rows["psnr"]), "frames": clip_frames}
    per_frame = {}
    for name, values in rows.items():
        stack = np.stack(values)  # (N, T)
        report[name] = float(stack.mean())
        per_frame[name] = [float(v) for v in stack.mean(axis=0)]
    if lpips_model is None:
        report["lpips"] = None
    report["per_frame"] = per_frame
    report["skipped"] = dict(skipped)
    return report


def build_eval_lpips(weights: str | None, random_backbone: bool = False) -> torch.nn.Module | None:
    """LPIPS from a local backbone checkpoint, a random backbone (tests), or None (omitted)."""
    if weights is None and not random_backbone:
        log.warning("no LPIPS backbone weights given: the report omits LPIPS")
        return None
    return build_lpips(LPIPSConfig(backbone_weights=weights, random_backbone=random_backbone))


def evaluate_shards(
    vae_dir: str | Path,
    shards: str,
    *,
    lpips: str | None = None,
    max_videos: int = 16,
    clip_frames: int = 17,
) -> dict[str, Any]:
    """The `cinemamba eval` hook: load a saved VAE and evaluate it on a shard set."""
    vae = load_vae(vae_dir)
    return evaluate_reconstruction(
        vae, shards, clip_frames=clip_frames, max_videos=max_videos,
        lpips_model=build_eval_lpips(lpips),
    )  # fmt: skip


def to_markdown(report: dict[str, Any]) -> str:
    """A short markdown summary: means, then one row per frame position."""
    metrics = [m for m in ("psnr", "ssim", "lpips") if report.get(m) is not None]
    parts = [
        "# VAE reconstruction",
        "",
        f"{report['clips']} clips of {report['frames']} frames"
        + (f"; skipped: {report['skipped']}" if report.get("skipped") else ""),
        "",
        markdown_table(["metric", "mean"], [[m, report[m]] for m in metrics]),
        "",
        "## Per frame position",
        "",
        markdown_table(
            ["frame", *metrics],
            [[t, *[report["per_frame"][m][t] for m in metrics]] for t in range(report["frames"])],
        ),
    ]
    return "\n".join(parts) + "\n"


def write_report(report: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """Write `reconstruction.json` and `reconstruction.md` under `out` (via temporary names)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "reconstruction.json", out / "reconstruction.md"
    for path, text in zip(
        paths, (json.dumps(report, indent=1) + "\n", to_markdown(report)), strict=True
    ):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return paths
