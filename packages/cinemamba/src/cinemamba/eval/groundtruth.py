"""Ground-truth scores of a video against its prompt with a classical detector (no network).

The objects of each frame come from the classical detector of `cinemamba.eval.detector`
(colour segmentation, connected components on the torus, blur-invariant shape moments).

Scores, per video (each in [0, 1]; a frame without the object counts as a miss):

- `colour_accuracy`: frames whose dominant (largest) objects have the prompted colours;
- `shape_accuracy`: frames whose largest object of the prompted colour has the prompted shape;
- `motion_accuracy`: windows of k frames whose displacement of that object agrees with the
  prompted motion (direction within 30 deg for linear motions, after unwrapping torus jumps;
  near zero for `stay`; moving without wrap-around for `bounce`; turning consistently for
  `circle`), k chosen so the prompted speed covers >= 2 pixels;
- `speed_accuracy`: windows whose measured speed is on the prompted side of the geometric mean
  of the slow and quick speeds (moving prompts only);
- `identity_persistence`: frames where the prompted object is present and unique: exactly one
  object of the prompted colour (no vanishing, splitting or duplication), and it has the
  prompted shape (the issue's definition); `identity_colour` counts colour only;
- `drift`: mean of `drift_detail` = relative change of colour (mean RGB distance / palette
  chroma), size (area ratio - 1) and speed (in units of the prompted speed) between the first
  and the last quarter of the video.

A score that is undefined (too few frames, object never seen in a quarter) is None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cinemamba.data.synth import (
    COLOUR_NAMES,
    DIRECTIONS,
    SPEED_FRACTION,
    ObjectSpec,
    parse_caption,
)
from cinemamba.eval.detector import _PALETTE_NORM2, Blob, _check_frames, _unwrap, detect

DIRECTION_TOLERANCE = math.radians(30)  # 8 directions are 45 deg apart
WINDOW_PIXELS = 2.0  # motion windows span this many pixels at the prompted speed


# --------------------------------------------------------------------------------- scoring


def _fraction(ok: np.ndarray) -> float | None:
    return float(np.mean(ok)) if len(ok) else None


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else None


def motion_window(speed: str | None, height: int, width: int, frames: int) -> int:
    """Frames per motion window: the prompted speed (slow for `stay`) covers WINDOW_PIXELS."""
    v = SPEED_FRACTION[speed or "slowly"] * min(height, width)
    return int(max(1, min(frames - 1, math.ceil(WINDOW_PIXELS / v))))


@dataclass
class _Track:
    """Per-frame centroid, mass and colour of one prompted object (NaN where absent)."""

    x: np.ndarray
    y: np.ndarray
    mass: np.ndarray
    rgb: np.ndarray  # (T, 3)


def _track(blobs: list[list[Blob]], colour: str) -> _Track:
    t = len(blobs)
    x, y, mass, rgb = (
        np.full(t, np.nan),
        np.full(t, np.nan),
        np.full(t, np.nan),
        np.full((t, 3), np.nan),
    )
    for f, frame in enumerate(blobs):
        b = next((b for b in frame if b.colour == colour), None)
        if b is not None:
            x[f], y[f], mass[f], rgb[f] = b.x, b.y, b.mass, b.rgb
    return _Track(x, y, mass, rgb)


def _displacements(tr: _Track, k: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Window displacements `(N, 2)` (torus-unwrapped) and whether a window saw a wrap jump."""
    dx = _unwrap(tr.x[k:] - tr.x[:-k], w)
    dy = _unwrap(tr.y[k:] - tr.y[:-k], h)
    # A step longer than half the frame is a wrap-around (or a teleport).
    jump = (np.abs(np.diff(tr.x)) > w / 2) | (np.abs(np.diff(tr.y)) > h / 2)  # (T-1,)
    c = np.concatenate([[0], np.cumsum(jump)])
    wrapped = (c[k:] - c[:-k]) > 0
    return np.stack([dx, dy], 1), wrapped


def motion_scores(tr: _Track, spec: ObjectSpec, h: int, w: int) -> dict[str, float | None]:
    """Motion and speed accuracy of one tracked object against its prompted motion."""
    t = len(tr.x)
    if t < 2:
        return {"motion_accuracy": None, "speed_accuracy": None}
    k = motion_window(spec.speed, h, w, t)
    side = min(h, w)
    floor = 0.5 * SPEED_FRACTION["slowly"] * side * k  # half the slow speed
    d, wrapped = _displacements(tr, k, h, w)
    norm = np.hypot(d[:, 0], d[:, 1])  # NaN where the object is missing at either end
    moving = norm >= floor
    if spec.motion == "stay":
        ok = norm < floor
    elif spec.motion in DIRECTIONS:
        u = np.asarray(DIRECTIONS[spec.motion])
        cos = (d @ u) / np.maximum(norm, 1e-9)
        ok = moving & (cos >= math.cos(DIRECTION_TOLERANCE))
    elif spec.motion == "bounce":
        ok = moving & ~wrapped
    elif spec.motion == "circle":
        ok = _circle_ok(tr, spec, h, w)
    else:
        raise ValueError(f"unknown motion {spec.motion!r} in prompt")
    ok = np.asarray(ok, bool)  # NaN comparisons are False: a missing object is a miss
    speed_acc = None
    if spec.speed is not None:
        cut = math.sqrt(SPEED_FRACTION["slowly"] * SPEED_FRACTION["quickly"]) * side * k
        quick = norm > cut
        speed_acc = _fraction(np.where(np.isnan(norm), False, quick == (spec.speed == "quickly")))
    return {"motion_accuracy": _fraction(ok), "speed_accuracy": speed_acc}


def _circle_ok(tr: _Track, spec: ObjectSpec, h: int, w: int) -> np.ndarray:
    """Windows where the direction of motion turns, in the video's dominant sense."""
    t = len(tr.x)
    # Two consecutive chords of a circle: a longer window makes the turn angle measurable.
    k = max(1, min(2 * motion_window(spec.speed, h, w, t), (t - 1) // 2))
    if 2 * k > t - 1:
        return np.zeros(max(t - 1, 0), bool)
    d, wrapped = _displacements(tr, k, h, w)
    d1, d2 = d[:-k], d[k:]
    turn = np.arctan2(d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0], (d1 * d2).sum(1))
    sense = np.sign(np.nansum(turn)) or 1.0
    # Expected turn for a circle of radius ~0.23 of the frame: v k / r; accept a third of it.
    v = SPEED_FRACTION[spec.speed or "slowly"] * min(h, w)
    min_turn = v * k / (0.23 * min(h, w)) / 3
    floor = 0.5 * SPEED_FRACTION["slowly"] * min(h, w) * k  # half the slow speed
    moving = (np.hypot(*d1.T) >= floor) & (np.hypot(*d2.T) >= floor)
    return moving & ~wrapped[:-k] & ~wrapped[k:] & (turn * sense >= min_turn)


def _quarter_speed(tr: _Track, a: int, b: int, k: int, h: int, w: int) -> float | None:
    """Mean window speed (pixels per frame) of the object within frames [a, b)."""
    k = min(k, b - a - 1)
    if k < 1:
        return None
    sub = _Track(tr.x[a:b], tr.y[a:b], tr.mass[a:b], tr.rgb[a:b])
    d, _ = _displacements(sub, k, h, w)
    speed = np.hypot(d[:, 0], d[:, 1]) / k
    speed = speed[~np.isnan(speed)]
    return float(speed.mean()) if len(speed) else None


def drift_scores(tr: _Track, spec: ObjectSpec, h: int, w: int) -> dict[str, float | None]:
    """Relative change of colour, size and speed between the first and last quarter."""
    t = len(tr.x)
    out: dict[str, float | None] = {"colour": None, "size": None, "speed": None}
    if t < 4:
        return out
    q = np.linspace(0, t, 5).round().astype(int)
    first, last = slice(q[0], q[1]), slice(q[3], q[4])
    rgb1, rgb4 = tr.rgb[first], tr.rgb[last]
    if np.isnan(rgb1[:, 0]).all() or np.isnan(rgb4[:, 0]).all():
        return out  # the object is missing from a whole quarter: drift is undefined
    palette = math.sqrt(_PALETTE_NORM2[COLOUR_NAMES.index(spec.colour)])
    out["colour"] = float(np.linalg.norm(np.nanmean(rgb4, 0) - np.nanmean(rgb1, 0)) / palette)
    out["size"] = float(abs(np.nanmean(tr.mass[last]) / np.nanmean(tr.mass[first]) - 1))
    k = motion_window(spec.speed, h, w, t)
    s1 = _quarter_speed(tr, q[0], q[1], k, h, w)
    s4 = _quarter_speed(tr, q[3], q[4], k, h, w)
    if s1 is not None and s4 is not None:
        unit = SPEED_FRACTION[spec.speed or "slowly"] * min(h, w)
        out["speed"] = abs(s4 - s1) / unit
    return out


def score_detections(blobs: list[list[Blob]], prompt: str, height: int, width: int) -> dict:
    """Scores of per-frame detections (see `detect`) against a prompt; see the module doc."""
    specs = parse_caption(prompt)
    wanted = sorted(s.colour for s in specs)
    colour_ok = np.array([sorted(b.colour for b in f[: len(specs)]) == wanted for f in blobs])
    per_object = []
    for spec in specs:
        first = [next((b for b in f if b.colour == spec.colour), None) for f in blobs]
        count = np.array([sum(b.colour == spec.colour for b in f) for f in blobs])
        shape_ok = np.array([b is not None and b.shape == spec.shape for b in first])
        tr = _track(blobs, spec.colour)
        row = {
            "shape_accuracy": _fraction(shape_ok),
            "identity_persistence": _fraction((count == 1) & shape_ok),
            "identity_colour": _fraction(count == 1),
            "presence": _fraction(count >= 1),
            **motion_scores(tr, spec, height, width),
        }
        row["drift_detail"] = drift_scores(tr, spec, height, width)
        per_object.append(row)
    keys = ("shape_accuracy", "motion_accuracy", "speed_accuracy", "identity_persistence",
            "identity_colour", "presence")  # fmt: skip
    scores: dict = {"colour_accuracy": _fraction(colour_ok)}
    scores.update({k: _mean([r[k] for r in per_object]) for k in keys})
    detail = {
        k: _mean([r["drift_detail"][k] for r in per_object]) for k in ("colour", "size", "speed")
    }
    scores["drift"] = _mean(list(detail.values()))
    scores["drift_detail"] = detail
    scores["frames"] = len(blobs)
    if len(specs) > 1:
        scores["objects"] = {f"o{i + 1}": r for i, r in enumerate(per_object)}
    return scores


def score_video(frames: np.ndarray, prompt: str) -> dict:
    """Ground-truth scores of uint8 `(T, H, W, 3)` frames against `prompt` (see module doc).

    Raises ValueError for frames of the wrong type or a prompt `parse_caption` cannot read.
    """
    frames = _check_frames(frames)
    parse_caption(prompt)  # fail on an unscorable prompt before detecting anything
    return score_detections(detect(frames), prompt, frames.shape[1], frames.shape[2])
