"""Memory scenes (issue 21): today's scenes unchanged, captions hide what must be remembered,
and the per-frame ground truth in KEY.json agrees with the rendered pixels (checked in pixels,
with code independent of the renderer)."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from cinemamba.data.synth import (
    COLOUR_WORDS,
    COLOURS,
    SHAPE_WORDS,
    SceneConfig,
    parse_caption,
)
from cinemamba.data.synth_memory import (
    MEMORY_KINDS,
    MemorySpec,
    memory_video,
    parse_memory_caption,
)
from cinemamba.data.synth_video import make_sample, scene_kind

MIXED = {"objects": 1.0, "occlusion": 1.0, "panorama": 1.0, "periodic": 1.0}


def _cfg(**kw) -> SceneConfig:
    base = dict(frames=200, height=32, width=32, background="plain", size_min=0.42,
                size_max=0.5, gaps=(16, 32, 64))  # fmt: skip
    return SceneConfig(**{**base, **kw})


def _digest(video: np.ndarray) -> str:
    return hashlib.sha256(video.tobytes()).hexdigest()


def test_todays_scenes_unchanged_by_the_memory_kinds() -> None:
    """A pure-objects set ignores the memory knobs, and in a mixed set the objects scenes are
    the same videos as in a pure one (the kind is drawn from its own random stream)."""
    plain_cfg = _cfg(frames=24)
    knobs = _cfg(frames=24, gaps=(40,), memory_speed=0.1, pan_distance=2.0, event_frames=3)
    mixed = _cfg(frames=24, kinds=MIXED)
    seen = set()
    for i in range(12):
        video, caption, meta = make_sample(i, "train", 3, plain_cfg)
        again, caption2, meta2 = make_sample(i, "train", 3, knobs)
        assert _digest(video) == _digest(again) and (caption, meta) == (caption2, meta2)
        kind = scene_kind(i, "train", 3, mixed)
        seen.add(kind)
        if kind == "objects":
            v3, c3, _ = make_sample(i, "train", 3, mixed)
            assert _digest(v3) == _digest(video) and c3 == caption
    assert len(seen) >= 3  # the mixed set did draw several kinds
    # The record (shard info, stage hashes) of a pure-objects config has no memory fields.
    assert "gaps" not in plain_cfg.record() and "kinds" not in plain_cfg.record()
    assert mixed.record()["kinds"] == MIXED and tuple(mixed.record()["gaps"]) == (16, 32, 64)


def test_kinds_and_gaps_are_checked() -> None:
    with pytest.raises(ValueError, match="kinds=.*'tunnel'"):
        _cfg(kinds={"tunnel": 1.0})
    with pytest.raises(ValueError, match="kinds="):
        _cfg(kinds={"objects": 0.0})
    with pytest.raises(ValueError, match="gaps="):
        _cfg(gaps=())
    with pytest.raises(ValueError, match="exceed event_frames"):
        memory_video(MemorySpec("periodic", 8, ""), _cfg(event_frames=8), 0)


def test_captions_name_the_gap_not_what_is_remembered() -> None:
    cfg = _cfg(frames=8, kinds={k: 1.0 for k in MEMORY_KINDS})
    words = [w for table in (COLOUR_WORDS, SHAPE_WORDS) for ws in table.values() for w in ws]
    kinds = set()
    for i in range(60):
        _, caption, meta = make_sample(i, "val", 1, cfg)
        spec = parse_memory_caption(caption)
        m = meta["memory"]
        assert spec == MemorySpec(meta["kind"], m["gap"], m["direction"]), caption
        assert spec.gap in cfg.gaps
        kinds.add(spec.kind)
        for w in words:  # no colour or shape word: the text alone cannot say what comes back
            assert not re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", caption), (w, caption)
        with pytest.raises(ValueError, match="no colour"):
            parse_caption(caption)  # and the object scorer refuses it
    assert kinds == set(MEMORY_KINDS)
    assert parse_memory_caption("a red circle moves to the left quickly") is None


def _foreground(video: np.ndarray, grey: float) -> np.ndarray:
    """(T, H, W) pixels that differ from the plain grey background by more than rounding."""
    return (np.abs(video.astype(np.float64) - grey) > 1.0).any(-1)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    out, start = [], None
    for t, on in enumerate(list(mask) + [False]):
        if on and start is None:
            start = t
        elif not on and start is not None:
            out.append((start, t))
            start = None
    return out


@pytest.mark.parametrize("direction", ["left", "right"])
@pytest.mark.parametrize("gap", [16, 50])
def test_occlusion_truth_matches_pixels(direction: str, gap: int) -> None:
    cfg = _cfg(frames=240)
    for seed in range(3):
        video, truth = memory_video(MemorySpec("occlusion", gap, direction), cfg, seed)
        fg = _foreground(video, truth["grey"])
        # visible <=> some pixel shows the object (a sliver of coverage below 1/8 may round away)
        shown = fg.any((1, 2))
        visible = np.array(truth["visible"])
        assert (shown <= visible).all() and (visible & ~shown).sum() <= 2 * len(_runs(visible))
        # Hidden for exactly `gap` frames between two sightings (+-1 for the frame grid).
        runs = _runs(visible)
        hidden = [b2 - a2 for (_, a2), (b2, _) in zip(runs[:-1], runs[1:], strict=True)]
        assert hidden and all(abs(h - gap) <= 1 for h in hidden), hidden
        # Whole-object frames: centroid of the object's pixels at the stated position, and the
        # object's colour there; the same colour in every lap.
        x, y = np.array(truth["x"]), np.array(truth["y"])
        rx = truth["x_reach"]
        whole = visible & (x - rx >= 0) & (x + rx <= cfg.width)
        assert whole.sum() >= 2 * len(runs) - 2
        for t in np.flatnonzero(whole):
            ys, xs = np.nonzero(fg[t])
            assert abs(xs.mean() + 0.5 - x[t]) < 0.6 and abs(ys.mean() + 0.5 - y[t]) < 0.6
            solid = video[t][np.abs(video[t].astype(float) - COLOURS[truth["colour"]]).max(-1) < 2]
            assert len(solid) >= 0.6 * len(xs)  # most object pixels are the pure colour
        # Moving the prompted way at the stated speed.
        step = np.diff(x[whole])[np.diff(np.flatnonzero(whole)) == 1]
        sign = 1 if direction == "right" else -1
        assert np.allclose(step, sign * truth["speed"], atol=1e-2)


@pytest.mark.parametrize("gap", [16, 40, 128])
def test_panorama_truth_matches_pixels(gap: int) -> None:
    cfg = _cfg(frames=300)
    for direction in ("left", "right"):
        video, truth = memory_video(MemorySpec("panorama", gap, direction), cfg, 7)
        # The view of frame t comes back exactly at t + gap ...
        assert np.array_equal(video[gap:], video[:-gap])
        # ... after panning a full frame width away (a triangle wave of the stated offsets).
        off = np.array(truth["offset"])
        assert abs(off).max() == pytest.approx(truth["pan_distance"]) == 32
        assert np.sign(off[off != 0]).tolist() == [1 if direction == "right" else -1] * int(
            (off != 0).sum()
        )
        # Independent re-render of the stated blobs at the stated offsets (float64 loop).
        b = truth["blobs"]
        for t in (0, gap // 4, gap // 2, gap - 1):
            img = np.full((32, 32, 3), truth["grey"])
            xs = off[t] + np.arange(32) + 0.5
            ys = np.arange(32) + 0.5
            for k in range(len(b["x"])):
                a = b["opacity"][k] * np.exp(
                    -((xs[None, :] - b["x"][k]) ** 2 + (ys[:, None] - b["y"][k]) ** 2)
                    / (2 * b["sigma"][k] ** 2)
                )
                img += np.minimum(a, 1)[..., None] * (
                    np.array(COLOURS[b["colour"][k]]) - truth["grey"]
                )
            # Stated values are rounded (offsets 1e-4 px, blobs 1e-3): within 1 grey level.
            assert np.abs(np.clip(img, 0, 255) - video[t]).max() <= 1.0


@pytest.mark.parametrize("gap", [12, 33, 100])
def test_periodic_truth_matches_pixels(gap: int) -> None:
    cfg = _cfg(frames=260, event_frames=5)
    # Real videos (an event at frame 0) and set samples (random phase: may start mid-event).
    scene = _cfg(frames=260, kinds={"periodic": 1.0}, gaps=(gap,), event_frames=5)
    samples = [memory_video(MemorySpec("periodic", gap, ""), cfg, seed) for seed in range(3)]
    samples += [
        (v, m["memory"]) for v, _, m in (make_sample(i, "train", 0, scene) for i in range(8))
    ]
    # Some sample starts mid-event (P = 4/gap each) at the short periods.
    assert any(truth["onsets"][0] < 0 for _, truth in samples) or gap >= 100
    for video, truth in samples:
        fg = _foreground(video, truth["grey"])
        shown = fg.any((1, 2))
        assert shown.tolist() == truth["visible"]
        runs = _runs(shown)
        # An event already on at frame 0 began before it (a negative onset).
        assert [a for a, _ in runs] == [max(o, 0) for o in truth["onsets"]]
        assert all(b - a == 5 for a, b in runs if a > 0 and b < len(video))
        # The same object at the same place every time.
        ys, xs = np.nonzero(fg[runs[0][0]])
        assert abs(xs.mean() + 0.5 - truth["x"]) < 0.6 and abs(ys.mean() + 0.5 - truth["y"]) < 0.6
        for a, _ in runs:
            assert np.array_equal(video[a], video[runs[0][0]])
    # A random scene draws a random phase (first onset anywhere in [0, gap)).
    scene = _cfg(frames=2 * gap, kinds={"periodic": 1.0}, gaps=(gap,), event_frames=5)
    onsets = {make_sample(i, "train", 0, scene)[2]["memory"]["onsets"][0] % gap for i in range(20)}
    assert len(onsets) > 3
