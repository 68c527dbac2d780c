"""Turning generated pixel tensors into images: uint8 frames and a PNG contact sheet.

These are the project's only contact sheet and PNG writer; `cinemamba.media.save_video` pairs
them with the mp4 (mp4 writing lives in `cinemamba.data.video`: model packages never import
`cinemamba`).
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor


def to_uint8(video: Tensor) -> np.ndarray:
    """Pixels `(B, 3, T, H, W)` in [-1, 1] -> uint8 `(B, T, H, W, 3)`."""
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"video must be (B, 3, T, H, W), got {tuple(video.shape)}")
    scaled = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(scaled, "b c t h w -> b t h w c").cpu().numpy()


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()  # Pillow's bundled font: no file to find on any machine


def _text_height(font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> int:
    left, top, right, bottom = font.getbbox("Ag0")
    return int(bottom) + 2


def contact_sheet(
    frames: np.ndarray,
    *,
    columns: int = 8,
    max_frames: int = 32,
    gap: int = 2,
    title: str | None = None,
    frame_numbers: bool = False,
) -> np.ndarray:
    """A grid of up to `max_frames` evenly spaced frames of uint8 `(T, H, W, 3)`, first to last.

    `title` (e.g. prompt, mode, step) is written above the grid, wrapped to its width;
    `frame_numbers` writes each frame's index (0-based, in the video) under it. Frames are
    never drawn over: labels get their own white space.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(
            f"frames must be a non-empty uint8 (T, H, W, 3) array, got shape {frames.shape}"
        )
    t, h, w, _ = frames.shape
    picks = np.unique(np.linspace(0, t - 1, min(t, max_frames)).round().astype(int))
    cols = min(columns, len(picks))
    rows = -(-len(picks) // cols)
    font = _font()
    line = _text_height(font)
    cell_h = h + (line if frame_numbers else 0)
    sheet = np.full((rows * (cell_h + gap) - gap, cols * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for k, idx in enumerate(picks):
        r, c = divmod(k, cols)
        sheet[r * (cell_h + gap) : r * (cell_h + gap) + h, c * (w + gap) : c * (w + gap) + w] = (
            frames[idx]
        )
    if not frame_numbers and not title:
        return sheet
    image = Image.fromarray(sheet)
    if frame_numbers:
        draw = ImageDraw.Draw(image)
        for k, idx in enumerate(picks):
            r, c = divmod(k, cols)
            draw.text((c * (w + gap), r * (cell_h + gap) + h), str(idx), fill=(0, 0, 0), font=font)
    if title:
        # Wrap by the font's mean letter width; a word longer than the sheet is broken.
        per_line = max(
            1, int(image.width / max(font.getlength("abcdefghijklmnopqrstuvwxyz") / 26, 1))
        )
        lines = textwrap.wrap(title, per_line, break_long_words=True) or [title]
        banner = Image.new("RGB", (image.width, len(lines) * line + gap), (255, 255, 255))
        draw = ImageDraw.Draw(banner)
        for n, text in enumerate(lines):
            draw.text((0, n * line), text, fill=(0, 0, 0), font=font)
        full = Image.new("RGB", (image.width, banner.height + image.height), (255, 255, 255))
        full.paste(banner, (0, 0))
        full.paste(image, (0, banner.height))
        image = full
    return np.asarray(image, dtype=np.uint8).copy()


def save_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a uint8 `(H, W, 3)` image as PNG via a temporary name (removed on failure), then
    rename: the path holds a whole PNG or nothing new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        Image.fromarray(image).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
