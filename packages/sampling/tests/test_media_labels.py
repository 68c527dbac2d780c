"""Contact sheets say what they show (issue 18): a title (prompt, mode, step) above the grid and
each frame's index in the video under it, without drawing over any frame."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cinemamba_sampling import contact_sheet

FONT = ImageFont.load_default()


def _frames(t: int, h: int = 24, w: int = 30) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def _rendered(text: str, width: int, height: int) -> np.ndarray:
    """`text` in black on white as Pillow draws it at the top left of a (height, width) band."""
    band = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(band).text((0, 0), text, fill=(0, 0, 0), font=FONT)
    return np.asarray(band)


def test_frame_numbers_are_the_shown_frames_indices_and_frames_are_intact():
    t, h, w, gap = 265, 24, 30, 2
    frames = _frames(t, h, w)
    sheet = contact_sheet(frames, columns=8, max_frames=32, gap=gap, frame_numbers=True)
    # 32 frames evenly spaced from the first to the last: index k * 264 / 31, rounded.
    expected = [int(np.floor(k * (t - 1) / 31 + 0.5)) for k in range(32)]
    assert expected[:3] == [0, 9, 17] and expected[-1] == 264
    label_h = (sheet.shape[0] + gap) // 4 - gap - h  # 4 rows of (frame + label) and gaps
    assert label_h >= 8
    for k, idx in enumerate(expected):
        r, c = divmod(k, 8)
        y, x = r * (h + label_h + gap), c * (w + gap)
        np.testing.assert_array_equal(sheet[y : y + h, x : x + w], frames[idx])
        label = sheet[y + h : y + h + label_h, x : x + w]
        np.testing.assert_array_equal(label, _rendered(str(idx), w, label_h))


def test_title_sits_above_the_unlabelled_grid_and_wraps_to_its_width():
    frames = _frames(10)
    plain = contact_sheet(frames, columns=4, max_frames=8)
    short = contact_sheet(frames, columns=4, max_frames=8, title="a red circle | oneshot")
    banner = short.shape[0] - plain.shape[0]
    assert banner > 0 and short.shape[1] == plain.shape[1]
    np.testing.assert_array_equal(short[banner:], plain)  # the frames are untouched
    assert (short[:banner] < 128).any()  # there is text in the banner
    long_title = "a yellow circle moves down quickly | rolling | 265 frames | step 3000 " * 3
    tall = contact_sheet(frames, columns=4, max_frames=8, title=long_title)
    assert tall.shape[0] - plain.shape[0] > 3 * banner  # wrapped over several lines
    np.testing.assert_array_equal(tall[tall.shape[0] - plain.shape[0] :], plain)


def test_no_labels_leaves_the_plain_grid():
    frames = _frames(5)
    sheet = contact_sheet(frames, columns=8, gap=2)
    assert sheet.shape == (24, 5 * 30 + 4 * 2, 3)
    assert set(np.unique(sheet[:, 30:32])) == {255}  # only gaps between frames
