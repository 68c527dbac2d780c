"""Videos written for people to look at: the mp4 and its labelled PNG contact sheet, together.

Every writer of generated or sampled videos (`cinemamba sample`, the backbone trainer's
periodic samples, the demo, the ablation) calls `save_video`. The contact sheet and the PNG
writer are the sampling package's (`cinemamba_sampling.contact_sheet` / `save_png`: the model
packages cannot import `cinemamba`, so the one implementation lives there); the mp4 encoder is
`cinemamba.data.video.write_video`. Each file is written under a temporary name and renamed,
and a sheet that cannot be written takes its mp4 with it: an mp4 and its sheet are on disk
together or not at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from cinemamba.data.video import write_video
from cinemamba_sampling import contact_sheet, save_png

__all__ = ["SavedVideo", "contact_sheet", "save_png", "save_video"]


class SavedVideo(NamedTuple):
    """What `save_video` wrote: the mp4, and the sheet's path and pixels (None without one)."""

    mp4: Path
    sheet: Path | None
    sheet_image: np.ndarray | None


def save_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    *,
    title: str | None = None,
    sheet: bool = True,
    sheet_frames: int = 32,
    columns: int = 8,
    zoom: int = 1,
) -> SavedVideo:
    """Write uint8 `(T, H, W, 3)` frames to `path` (.mp4) and, with `sheet`, a contact sheet
    beside it (same stem, .png): up to `sheet_frames` frames evenly spaced over the whole video,
    `title` (prompt, mode, step, ...) above and each frame's number under it, every frame
    enlarged `zoom` times (nearest neighbour) so that small videos stay readable."""
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"save_video writes .mp4 files, got {str(path)!r}")
    if zoom < 1:
        raise ValueError(f"zoom must be >= 1, got {zoom}")
    image = None
    if sheet:
        # Drawn before anything is written: bad frames fail here with nothing on disk.
        big = frames.repeat(zoom, axis=1).repeat(zoom, axis=2) if zoom > 1 else frames
        image = contact_sheet(
            big, columns=columns, max_frames=sheet_frames, title=title, frame_numbers=True
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, frames, fps=fps)
    if image is None:
        return SavedVideo(path, None, None)
    sheet_path = path.with_suffix(".png")
    try:
        save_png(sheet_path, image)
    except BaseException:
        path.unlink(missing_ok=True)  # no mp4 without its sheet
        raise
    return SavedVideo(path, sheet_path, image)
