"""`cinemamba.media.save_video`: the mp4 decodes back through PyAV, the sheet carries its
labels, and a failing write leaves no file (neither a half-written one nor a lone mp4)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from cinemamba.media import contact_sheet, save_video


def _video(frames: int = 12, size: int = 32) -> np.ndarray:
    """Grey frames, one flat level per frame: H.264 keeps flat grey nearly exact."""
    levels = np.linspace(40, 200, frames).round().astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (frames, size, size, 3)).copy()


def test_mp4_round_trips_through_pyav(tmp_path: Path) -> None:
    frames = _video()
    saved = save_video(tmp_path / "v.mp4", frames, 8.0, sheet=False)
    assert saved.sheet is None and not (tmp_path / "v.png").exists()
    with av.open(str(saved.mp4)) as container:
        stream = container.streams.video[0]
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        rate = float(stream.average_rate)
    assert decoded.shape == frames.shape and rate == 8.0
    # Lossy codec (crf 18, RGB -> YUV -> RGB): flat grey survives within a few levels.
    error = np.abs(decoded.astype(int) - frames.astype(int))
    assert error.max() <= 3, error.max()


def test_sheet_has_title_and_frame_numbers(tmp_path: Path) -> None:
    frames = _video(frames=40)
    saved = save_video(tmp_path / "v.mp4", frames, 8.0, title="a red circle | rolling", zoom=2,
                       sheet_frames=16, columns=4)  # fmt: skip
    on_disk = np.asarray(Image.open(saved.sheet).convert("RGB"))
    np.testing.assert_array_equal(on_disk, saved.sheet_image)  # PNG is lossless
    big = frames.repeat(2, axis=1).repeat(2, axis=2)
    unlabelled = contact_sheet(big, columns=4, max_frames=16)
    labelled = contact_sheet(big, columns=4, max_frames=16, title="a red circle | rolling",
                             frame_numbers=True)  # fmt: skip
    np.testing.assert_array_equal(on_disk, labelled)
    # 16 frames of 64 px in 4 columns with 2 px gaps; the labels add rows above and below.
    assert on_disk.shape[1] == unlabelled.shape[1] == 4 * 64 + 3 * 2
    assert on_disk.shape[0] > unlabelled.shape[0] == 4 * 64 + 3 * 2
    # The title is a banner of text (dark pixels) above the frame-numbered grid.
    numbered = contact_sheet(big, columns=4, max_frames=16, frame_numbers=True)
    banner = on_disk.shape[0] - numbered.shape[0]
    assert banner > 0 and (on_disk[:banner] < 128).any()
    np.testing.assert_array_equal(on_disk[banner:], numbered)


def test_bad_frames_write_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        save_video(tmp_path / "v.mp4", _video().astype(np.float32), 8.0)
    with pytest.raises(ValueError, match=r"\.mp4"):
        save_video(tmp_path / "v.avi", _video(), 8.0)
    assert list(tmp_path.iterdir()) == []


def test_failing_sheet_write_removes_its_mp4(tmp_path: Path, monkeypatch) -> None:
    def full_disk(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG half")  # part of the file, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        save_video(tmp_path / "v.mp4", _video(), 8.0, title="x")
    assert list(tmp_path.iterdir()) == []


def test_failing_mp4_write_leaves_no_temporary(tmp_path: Path, monkeypatch) -> None:
    def full_disk(self, data):
        with open(self, "wb") as fh:
            fh.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(OSError, match="No space"):
        save_video(tmp_path / "v.mp4", _video(), 8.0)
    assert list(tmp_path.iterdir()) == []
