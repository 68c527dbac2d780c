"""Turning generated pixel tensors into images: uint8 frames and a PNG contact sheet.

(mp4 writing lives in `cinemamba.data.video`; model packages never import `cinemamba`.)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image
from torch import Tensor


def to_uint8(video: Tensor) -> np.ndarray:
    """Pixels `(B, 3, T, H, W)` in [-1, 1] -> uint8 `(B, T, H, W, 3)`."""
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"video must be (B, 3, T, H, W), got {tuple(video.shape)}")
    scaled = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(scaled, "b c t h w -> b t h w c").cpu().numpy()


def contact_sheet(
    frames: np.ndarray, *, columns: int = 8, max_frames: int = 32, gap: int = 2
) -> np.ndarray:
    """A grid of up to `max_frames` evenly spaced frames of uint8 `(T, H, W, 3)`, first to last."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(
            f"frames must be a non-empty uint8 (T, H, W, 3) array, got shape {frames.shape}"
        )
    t, h, w, _ = frames.shape
    picks = np.unique(np.linspace(0, t - 1, min(t, max_frames)).round().astype(int))
    cols = min(columns, len(picks))
    rows = -(-len(picks) // cols)
    sheet = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for k, idx in enumerate(picks):
        r, c = divmod(k, cols)
        sheet[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = frames[idx]
    return sheet


def save_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a uint8 `(H, W, 3)` image as PNG via a temporary name, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
