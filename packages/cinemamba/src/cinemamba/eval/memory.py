"""Ground-truth scores of the memory scenes (`cinemamba.data.synth_memory`, issue 21).

Every score reads only the video's pixels and its caption (direction, gap or period), never
the renderer's hidden state, so a generated video and a real one are scored the same way. The
object is found with the ground-truth detector's colour segmentation (`groundtruth.detect`);
the panorama is compared pixel to pixel.

- **occlusion** (`reid`, `reid_colour`, `reid_shape`, `position_accuracy`, `position_error`):
  the *reference* is the first run of frames in which the object is seen whole (colour, shape,
  height, and where it is). Constant-velocity physics at the scenes' speed v (a data-set
  constant, `SceneConfig.memory_speed`) with the caption's direction and gap puts return k on
  the reference track shifted by k laps, `lap = W + w_obj + v * gap` pixels (w_obj: the object's
  measured width). Each return whose whole-object frames lie inside the video is
  tested (a video long enough for one, whose reference comes too late for any, scores 0):
  `reid` = the object left the view since its last sighting and is there again (in at least
  half of those frames) with the reference's
  colour and shape; `position_accuracy` = there within `POSITION_TOLERANCE` of the frame size
  on average; `position_error` = that mean distance in pixels (returns where it is seen).
  Chance, for an object of random colour and shape at the right place: 1/6 (colour), 1/4
  (shape), 1/24 (both).
- **panorama** (`revisit`): the view of frame t comes back at frame t + gap. With e(t) the mean
  absolute pixel difference between frames t + gap and t, and a(t) the mean difference between
  frame t and the views in between (16 frames evenly spaced in (t, t + gap)), `revisit =
  clip(1 - sum e / sum a, 0, 1)`: 1 when the revisited view is the first one, 0 when it is no
  closer to it than the views of other regions are. A video that hardly changes (mean a below
  `STATIC_LEVEL` grey levels) has shown nothing to remember and scores 0.
- **periodic** (`period_kept`, `event_kept`): events are runs of frames with the object. From
  the first event's onset, an event is expected every `gap` frames (those that fit whole).
  `period_kept` = matched / (expected + spurious), an expected event matched by an onset within
  `max(2, event_frames / 2)` frames, spurious = later events that match none; `event_kept` =
  expected events matched with the first event's colour and shape, within
  `POSITION_TOLERANCE` of its place.

`memory` is the headline of each kind: `reid`, `revisit`, `event_kept`. A video in which no
reference can be found (no object seen whole, no event) scores 0 with `reference: False`; a video
too short to hold one gap gives None. Real videos score 1 (the tests check it); the ceiling a
model can reach is a real video through the VAE (`memory_ceiling`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import cache

import numpy as np

from cinemamba.data.synth import SceneConfig
from cinemamba.data.synth_memory import MemorySpec, memory_video, parse_memory_caption, x_reach
from cinemamba.eval.detector import CORE_ALPHA, _check_frames, colour_maps, detect
from cinemamba.latents.clips import vae_roundtrip

POSITION_TOLERANCE = 0.1  # of min(height, width): a return / event "at the right place"
STATIC_LEVEL = 2.0  # grey levels: a panorama video changing less than this shows nothing
SPREAD_SAMPLES = 16  # in-between views a(t) is averaged over
BRIDGE = 2  # frames: a detection dropout this short inside a sighting is not a gap
FULL_AREA = 0.85  # a frame shows the object whole at this share of its run's largest area
HEADLINE = {"occlusion": "reid", "panorama": "revisit", "periodic": "event_kept"}
# Chance of the identity scores for a random object at the right time and place (closed form).
CHANCE = {"reid_colour": 1 / 6, "reid_shape": 1 / 4, "reid": 1 / 24}


@dataclass
class _Seen:
    """The largest object of every frame (NaN / "" where none)."""

    area: np.ndarray  # (T,) core pixels
    x: np.ndarray
    y: np.ndarray
    colour: list[str]
    shape: list[str]
    width: np.ndarray  # (T,) columns the core spans


def _seen(frames: np.ndarray) -> _Seen:
    t = len(frames)
    blobs = detect(frames)
    area, x, y, width = (np.full(t, np.nan) for _ in range(4))
    area[:] = 0.0
    colour, shape = [""] * t, [""] * t
    _, alpha = colour_maps(frames)
    cols = (alpha >= CORE_ALPHA).any(1)  # (T, W): columns holding object pixels
    for f, found in enumerate(blobs):
        if found:
            b = found[0]
            area[f], x[f], y[f], colour[f], shape[f] = b.area, b.x, b.y, b.colour, b.shape
            width[f] = cols[f].sum()
    return _Seen(area, x, y, colour, shape, width)


@cache
def _unit_area(shape: str) -> float:
    """Area of a shape of size 2 (half-size 1), from a fine rendering."""
    from cinemamba.data.shapes import shape_inside

    n = 400
    u = (np.arange(n) + 0.5) / n * 3 - 1.5  # [-1.5, 1.5): every shape's reach is below 1.3
    inside = shape_inside(shape, *np.meshgrid(u, u))
    return float(inside.mean() * 9)


def _runs(mask: np.ndarray, bridge: int = 0) -> list[tuple[int, int]]:
    """[start, end) of each run of True; runs apart by at most `bridge` frames are one (a
    decoded object can drop out for a frame: that is not a gap)."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    runs = [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]
    merged: list[tuple[int, int]] = []
    for a, b in runs:
        if merged and a - merged[-1][1] <= bridge:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged


def _mode(values: list[str]) -> str:
    values = [v for v in values if v]
    return Counter(values).most_common(1)[0][0] if values else ""


def _fraction(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


# ------------------------------------------------------------------------------- occlusion


def occlusion_scores(frames: np.ndarray, spec: MemorySpec, speed: float) -> dict:
    """Re-identification after the gap (see the module doc); `speed` = the scenes' object
    speed in pixels per frame (`SceneConfig.memory_speed` times the frame size)."""
    frames = _check_frames(frames)
    n, h, w, _ = frames.shape
    seen = _seen(frames)
    present = seen.area >= max(3.0, 0.002 * h * w)
    # Whole-object frames, per run: another object (a forgetful model's) may be larger.
    full = np.zeros(n, bool)
    runs = _runs(present, BRIDGE)
    for a, b in runs:
        full[a:b] = seen.area[a:b] >= FULL_AREA * seen.area[a:b].max()
    empty = {"reid": 0.0, "reid_colour": 0.0, "reid_shape": 0.0, "position_accuracy": 0.0,
             "position_error": None, "returns": 0, "reference": False}  # fmt: skip
    ref = next(((a, b) for a, b in runs if full[a:b].sum() >= 3), None)
    if ref is None:
        return empty
    idx = np.arange(ref[0], ref[1])[full[ref[0] : ref[1]]]
    colour = _mode([seen.colour[i] for i in idx])
    shape = _mode([seen.shape[i] for i in idx])
    y_ref = float(np.mean(seen.y[idx]))
    width = float(np.median(seen.width[idx]))
    if shape:
        # Sub-pixel width: the shape's size from its area (core pixels are an unbiased area
        # estimate), then its horizontal reach; whole columns would be off by up to a pixel
        # per lap.
        half = math.sqrt(float(np.median(seen.area[idx])) / _unit_area(shape))
        width = 2 * x_reach(shape, 2 * half)
    # Physics at the scenes' speed (a data-set constant), anchored on the reference: a speed
    # fitted on a dozen frames would be extrapolated over laps. Only frames clear of the edges
    # anchor it (an object touching an edge is cut, which biases its centroid).
    clear = idx[(seen.x[idx] - width / 2 >= 1) & (seen.x[idx] + width / 2 <= w - 1)]
    idx = clear if len(clear) else idx
    slope = (1.0 if spec.direction == "right" else -1.0) * speed
    icpt = float(np.mean(seen.x[idx] - slope * idx))
    lap = w + width + speed * spec.gap
    t = np.arange(n, dtype=np.float64)
    half = width / 2
    rows = []
    since = ref[1]  # end of the last sighting the next return must be separated from
    for k in range(1, n):
        pred = icpt + slope * t - np.sign(slope) * k * lap  # (T,) where return k's centre should be
        inside = (pred >= half) & (pred <= w - half)
        if not inside.any() or (pred * np.sign(slope) > w - half).all():
            break  # this return (and every later one) starts after the video ends
        where = np.flatnonzero(inside)
        if where[0] == 0 or where[-1] == n - 1:
            continue  # cut by the video's start or end: not a whole return
        there = where[present[where]]
        # Re-identified *after a gap*: the object must have been out of view in between (an
        # object that never leaves is not remembered, it is just still there).
        left = bool((~present[since : where[0]]).any())
        since = max(since, int(where[-1]) + 1)
        row = {"present": left and len(there) >= len(where) / 2}
        row["colour"] = row["present"] and _mode([seen.colour[i] for i in there]) == colour
        row["shape"] = row["present"] and _mode([seen.shape[i] for i in there]) == shape
        if len(there):
            err = np.hypot(seen.x[there] - pred[there], seen.y[there] - y_ref)
            row["error"] = float(np.mean(err))
        rows.append(row)
    if not rows:
        # A video too short for one whole lap says nothing (None); one long enough whose object
        # is first seen whole too late for a return shows nothing it could have kept: a miss.
        first_return_end = (w + width + speed * spec.gap + w) / speed
        if n < first_return_end:
            return {**empty, "reid": None, "reid_colour": None, "reid_shape": None,
                    "position_accuracy": None, "reference": True}  # fmt: skip
        return {**empty, "reference": True, "late_reference": True}
    tol = POSITION_TOLERANCE * min(h, w)
    return {
        "reid": _fraction([r["colour"] and r["shape"] for r in rows]),
        "reid_colour": _fraction([r["colour"] for r in rows]),
        "reid_shape": _fraction([r["shape"] for r in rows]),
        "position_accuracy": _fraction(
            [r["present"] and r.get("error", math.inf) <= tol for r in rows]
        ),  # fmt: skip
        "position_error": _fraction([r["error"] for r in rows if r["present"] and "error" in r]),
        "returns": len(rows),
        "reference": True,
    }


# -------------------------------------------------------------------------------- panorama


def panorama_scores(frames: np.ndarray, spec: MemorySpec) -> dict:
    """Revisit consistency: frame t + gap against frame t, normalised by the views between."""
    frames = _check_frames(frames).astype(np.float32)
    n, g = len(frames), spec.gap
    if n <= g:
        return {"revisit": None, "revisit_error": None, "revisit_spread": None, "pairs": 0}
    errors, spreads = [], []
    offsets = np.unique(np.linspace(1, g - 1, SPREAD_SAMPLES).round().astype(int)) if g > 1 else []
    for t in range(n - g):
        errors.append(np.abs(frames[t + g] - frames[t]).mean())
        spreads.append(np.mean([np.abs(frames[t + s] - frames[t]).mean() for s in offsets])
                       if len(offsets) else 0.0)  # fmt: skip
    e, a = float(np.mean(errors)), float(np.mean(spreads))
    revisit = 0.0 if a < STATIC_LEVEL else float(np.clip(1 - e / a, 0, 1))
    return {"revisit": revisit, "revisit_error": e, "revisit_spread": a, "pairs": n - g}


# -------------------------------------------------------------------------------- periodic


def periodic_scores(frames: np.ndarray, spec: MemorySpec, event_frames: int) -> dict:
    """Period kept, and the same event each time (see the module doc)."""
    frames = _check_frames(frames)
    n, h, w, _ = frames.shape
    seen = _seen(frames)
    present = seen.area >= max(3.0, 0.002 * h * w)
    # Bridging dropouts must not merge two real events: they are gap - event_frames apart.
    events = _runs(present, min(BRIDGE, spec.gap - event_frames - 1))
    if not events:
        return {"period_kept": 0.0, "event_kept": 0.0, "events": 0, "expected": 0,
                "reference": False}  # fmt: skip
    first = events[0]

    def identity(a: int, b: int) -> tuple[str, str, float, float]:
        sel = np.arange(a, b)
        big = sel[seen.area[sel] >= FULL_AREA * seen.area[sel].max()]
        return (_mode([seen.colour[i] for i in big]), _mode([seen.shape[i] for i in big]),
                float(np.mean(seen.x[big])), float(np.mean(seen.y[big])))  # fmt: skip

    ref = identity(*first)
    tol_t = max(2, event_frames // 2)
    tol_px = POSITION_TOLERANCE * min(h, w)
    expected = [first[0] + k * spec.gap for k in range(1, n)
                if first[0] + k * spec.gap + event_frames <= n]  # fmt: skip
    if not expected:
        return {"period_kept": None, "event_kept": None, "events": len(events), "expected": 0,
                "reference": True}  # fmt: skip
    # Events starting too late to be whole are neither expected nor spurious.
    later = [e for e in events[1:] if e[0] + event_frames <= n]
    used: set[int] = set()
    matched, kept = 0, 0
    for onset in expected:
        hit = next((j for j, (a, _) in enumerate(later) if j not in used
                    and abs(a - onset) <= tol_t), None)  # fmt: skip
        if hit is None:
            continue
        used.add(hit)
        matched += 1
        c, s, x, y = identity(*later[hit])
        kept += c == ref[0] and s == ref[1] and math.hypot(x - ref[2], y - ref[3]) <= tol_px
    spurious = len(later) - len(used)
    return {
        "period_kept": matched / (len(expected) + spurious),
        "event_kept": kept / len(expected),
        "events": len(events),
        "expected": len(expected),
        "reference": True,
    }


# ---------------------------------------------------------------------------------- entry


def is_memory_prompt(prompt: str) -> bool:
    """Whether a prompt is a memory-scene caption (scored here, not by `groundtruth`)."""
    return parse_memory_caption(prompt) is not None


def memory_scores(frames: np.ndarray, prompt: str, cfg: SceneConfig) -> dict:
    """The scores of a video against a memory caption, with `memory` = the kind's headline.

    `cfg` gives the scenes' nominal speed and event length (the captions do not state them).
    Raises ValueError for a prompt that is not a memory caption.
    """
    spec = parse_memory_caption(prompt)
    if spec is None:
        raise ValueError(f"not a memory-scene caption: {prompt!r}")
    if spec.kind == "occlusion":
        # The speed is a fraction of the frame: the video's own size, whatever cfg's.
        side = min(np.shape(frames)[1:3]) if np.ndim(frames) == 4 else 0
        out = occlusion_scores(frames, spec, cfg.memory_speed * side)
    elif spec.kind == "panorama":
        out = panorama_scores(frames, spec)
    else:
        out = periodic_scores(frames, spec, cfg.event_frames)
    return {"kind": spec.kind, "gap": spec.gap, "memory": out[HEADLINE[spec.kind]], **out}


def memory_ceiling(prompt: str, cfg: SceneConfig, seed: int, vae=None, chunk: int = 8) -> dict:
    """Scores of the real video of a memory prompt, and of it through `vae` when given (the
    ceiling a generator reaches: the VAE round trip is what a perfect backbone could show)."""
    spec = parse_memory_caption(prompt)
    if spec is None:
        raise ValueError(f"not a memory-scene caption: {prompt!r}")
    video, _ = memory_video(spec, cfg, seed)
    out = {"real": memory_scores(video, prompt, cfg)}
    if vae is not None:
        out["vae"] = memory_scores(vae_roundtrip(vae, video, chunk), prompt, cfg)
    return out


def segment_cuts(video: np.ndarray, spec: MemorySpec, event_frames: int) -> list[int]:
    """Frames where a memory video can be cut between two sightings of what is remembered:
    the middle of each hidden stretch (occlusion), every `gap` frames (panorama: frame t and
    t + gap then lie in different segments), midway between events (periodic)."""
    n = len(video)
    if spec.kind == "panorama":
        return list(range(spec.gap, n, spec.gap))
    if spec.kind == "periodic":
        first = _runs(_seen(video).area > 0)
        start = first[0][0] if first else 0
        return [c for c in range(start + (spec.gap + event_frames) // 2, n, spec.gap) if c > 0]
    shown = _seen(video).area > 0
    runs = _runs(shown)
    return [(b + a2) // 2 for (_, b), (a2, _) in zip(runs[:-1], runs[1:], strict=True)]


def shuffle_segments(videos: list[np.ndarray], cuts: list[int]) -> np.ndarray:
    """One video whose segments between `cuts` come from `videos` in turn (segment i from
    video i mod len): every revisit then meets another video's content."""
    bounds = [0, *cuts, len(videos[0])]
    parts = [videos[i % len(videos)][a:b] for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:],
                                                                          strict=True))]  # fmt: skip
    return np.concatenate(parts)


def memory_chance(prompt: str, cfg: SceneConfig, samples: int = 12, seed: int = 1000) -> dict:
    """Chance level of a memory prompt's scores, computed by shuffling across videos: real
    videos of the caption whose segments between sightings come each from another real video
    of it (`shuffle_segments`), the right timing with the remembered content forgotten. Means
    over `samples` such videos (video k starts the rotation at pool video k)."""
    spec = parse_memory_caption(prompt)
    if spec is None:
        raise ValueError(f"not a memory-scene caption: {prompt!r}")
    pool_size = cfg.frames // spec.gap + 2  # more videos than segments: no segment repeats one
    pool = [memory_video(spec, cfg, seed + k)[0] for k in range(max(pool_size, samples))]
    rows = []
    for k in range(samples):
        order = pool[k:] + pool[:k]
        cuts = segment_cuts(order[0], spec, cfg.event_frames)
        rows.append(memory_scores(shuffle_segments(order, cuts), prompt, cfg))
    out: dict = {"kind": spec.kind, "gap": spec.gap, "samples": samples}
    for key, value in rows[0].items():
        if key in ("kind", "gap") or isinstance(value, bool):
            continue
        vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))
                and not isinstance(r.get(key), bool)]  # fmt: skip
        out[key] = float(np.mean(vals)) if vals else None
    if spec.kind == "periodic":
        # The segments keep every event on time; the timing's own chance: the frames of a real
        # video in random order (as many event frames, at no period).
        rng = np.random.default_rng(seed)
        timing = [memory_scores(v[rng.permutation(len(v))], prompt, cfg)["period_kept"]
                  for v in pool[:samples]]  # fmt: skip
        out["period_kept"] = float(np.mean([p for p in timing if p is not None]))
    return out
