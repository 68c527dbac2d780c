"""The embedded data set, part 3: memory scenes, where content must be kept across a gap.

Today's scenes (`synth.sample_scene`) can be predicted from their last few frames. These three
kinds cannot (issue 21; the seed paper's GQN-Mazes / MineRL argument):

- `occlusion`: one object moves left or right at constant speed, leaves the frame and is hidden
  for exactly `gap` frames, then re-enters on the opposite side where constant-velocity motion
  on a circle of circumference `W + 2r + v * gap` puts it (r: the shape's reach, v: speed),
  with the same colour and shape. The caption names the direction and the gap, not the object.
- `panorama`: the view pans across a procedural panorama (coloured blobs on a grey, wider than
  the frame) by `pan_distance` frame widths and back, a triangle wave of period `gap`: frame
  `t + gap` shows exactly the view of frame `t`, after views of other regions in between. The
  caption names the direction and the period, not the content.
- `periodic`: an object (random colour, shape and fixed place) appears for `event_frames`
  frames every `gap` frames, from a random phase. The caption names the period only.

Each is a pure function of (seed, split, index), with per-frame ground truth in `KEY.json`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from cinemamba.data.shapes import _POLYGONS, _REACH, shape_inside
from cinemamba.data.synth import COLOUR_NAMES, COLOURS, SHAPES, SPLITS, SceneConfig, scene_meta

MEMORY_KINDS: tuple[str, ...] = ("occlusion", "panorama", "periodic")
PAN_BLOBS_PER_PIXEL = 1 / 6  # blobs per panorama column: every view holds several
_GREY = (80.0, 150.0)  # the plain background's grey range (as synth_video's "plain")

_TEMPLATES = {
    "occlusion": "an object moves to the {direction}, leaves the frame and comes back after "
    "{gap} frames",
    "panorama": "the view pans to the {direction} and back every {gap} frames",
    "periodic": "an object appears every {gap} frames",
}
_PATTERNS = {
    kind: re.compile(
        "^"
        + re.escape(text)
        .replace(re.escape("{direction}"), "(?P<direction>left|right)")
        .replace(re.escape("{gap}"), r"(?P<gap>\d+)")
        + "$"
    )
    for kind, text in _TEMPLATES.items()
}


@dataclass(frozen=True)
class MemorySpec:
    """What a memory caption says: the scene kind, its gap (or period) and direction."""

    kind: str
    gap: int  # hidden frames (occlusion), revisit period (panorama), event period (periodic)
    direction: str = ""  # "left" / "right" (occlusion, panorama); "" for periodic


def memory_caption(spec: MemorySpec) -> str:
    """The caption of a memory scene: direction and gap only, never colour, shape or content."""
    return _TEMPLATES[spec.kind].format(direction=spec.direction, gap=spec.gap)


def parse_memory_caption(text: str) -> MemorySpec | None:
    """Invert `memory_caption`; None when `text` is not a memory caption."""
    clean = " ".join(text.lower().strip().rstrip(".").split())
    for kind, pattern in _PATTERNS.items():
        m = pattern.match(clean)
        if m:
            spec = m.groupdict()
            return MemorySpec(kind, int(spec["gap"]), spec.get("direction") or "")
    return None


def check_memory_spec(spec: MemorySpec, cfg: SceneConfig) -> None:
    """Raise ValueError naming the field when a memory scene cannot be rendered as asked."""
    if spec.kind not in MEMORY_KINDS:
        raise ValueError(f"memory kind {spec.kind!r}: choose one of {', '.join(MEMORY_KINDS)}")
    if spec.gap < 1:
        raise ValueError(f"memory gap must be >= 1 frame, got {spec.gap}")
    if spec.kind == "periodic" and spec.gap <= cfg.event_frames:
        raise ValueError(
            f"periodic gap {spec.gap} must exceed event_frames={cfg.event_frames} (events overlap)"
        )
    if spec.kind in ("occlusion", "panorama") and spec.direction not in ("left", "right"):
        raise ValueError(f"{spec.kind} direction must be 'left' or 'right', got {spec.direction!r}")


# ------------------------------------------------------------------------------- rendering


def reach(shape: str, size: float) -> float:
    """Distance from a shape's centre to its farthest point, in pixels."""
    return size / 2 * _REACH[shape]


def x_reach(shape: str, size: float) -> float:
    """Half the horizontal extent of a shape, in pixels (its polygon's widest vertex)."""
    if shape not in _POLYGONS:
        return size / 2  # the disc
    angles, radii = _POLYGONS[shape]
    return size / 2 * float(np.max(np.abs(radii * np.cos(angles))))


def object_alpha(shape: str, size: float, x: np.ndarray, y: np.ndarray, h: int, w: int):
    """Anti-aliased coverage `(T, H, W)` of a shape centred at (x[t], y[t]), clipped by the frame.

    Unlike `synth_video._coverage` nothing wraps around: an object past an edge is out of view.
    """
    half = size / 2
    alpha = np.zeros((len(x), h, w), np.float32)
    chunk = max(1, (1 << 20) // (h * w))  # bound the float64 working set (~50 MB)
    for t0 in range(0, len(x), chunk):
        xs, ys = x[t0 : t0 + chunk], y[t0 : t0 + chunk]
        for sy in (0.25, 0.75):  # 2x2 supersampling, as synth_video
            for sx in (0.25, 0.75):
                u = (np.arange(w)[None, None, :] + sx - xs[:, None, None]) / half  # (t, 1, W)
                v = (np.arange(h)[None, :, None] + sy - ys[:, None, None]) / half  # (t, H, 1)
                alpha[t0 : t0 + chunk] += shape_inside(shape, *np.broadcast_arrays(u, v))
    return alpha / 4


def _paint(grey: float, rgb: tuple[int, int, int], alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    frames = grey * (1 - a) + a * np.asarray(rgb, np.float32)
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def _object(rng: np.random.Generator, cfg: SceneConfig) -> tuple[str, str, float]:
    colour = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    size = rng.uniform(cfg.size_min, cfg.size_max) * min(cfg.height, cfg.width)
    return colour, shape, size


def occlusion_scene(spec: MemorySpec, cfg: SceneConfig, rng: np.random.Generator,
                    phase: float | None = None) -> tuple[np.ndarray, dict]:  # fmt: skip
    """Frames and ground truth of an object hidden off-frame for `spec.gap` frames per lap.

    `phase` (a fraction of a lap) fixes where the lap starts: 0 = the object just outside its
    entry edge (about to come into view); None draws it.
    """
    h, w, n = cfg.height, cfg.width, cfg.frames
    colour, shape, size = _object(rng, cfg)
    r, rx = reach(shape, size), x_reach(shape, size)
    v = cfg.memory_speed * min(h, w)
    # Circumference: the shape shows while its centre is in (-rx, w + rx), so a lap hides it
    # for exactly `gap` frames.
    lap = w + 2 * rx + v * spec.gap
    y = rng.uniform(r, h - r) if h > 2 * r else h / 2
    start = (rng.uniform(0, 1) if phase is None else phase) * lap
    t = np.arange(n, dtype=np.float64)
    x = np.mod(start + v * t, lap) - rx  # moving right, in [-rx, lap - rx)
    if spec.direction == "left":
        x = w - x  # mirrored: enters on the right
    ys = np.full(n, y)
    grey = rng.uniform(*_GREY)
    video = _paint(grey, COLOURS[colour], object_alpha(shape, size, x, ys, h, w))
    visible = (x > -rx) & (x < w + rx)
    truth = {
        **_object_truth(colour, shape, size),
        "x_reach": round(float(rx), 4),
        "speed": round(float(v), 6),
        "lap": round(float(lap), 4),
        "grey": round(float(grey), 2),
        "x": np.round(x, 2).tolist(),  # centre; outside [0, w) while hidden
        "y": np.round(ys, 2).tolist(),
        "visible": visible.tolist(),
    }
    return video, truth


def _triangle(t: np.ndarray, period: int) -> np.ndarray:
    """0 -> 1 -> 0 over each `period` frames; exact on integers (frame t + period == frame t)."""
    k = np.mod(t, period).astype(np.float64)
    return 1 - np.abs(2 * k / period - 1)


def panorama_scene(spec: MemorySpec, cfg: SceneConfig, rng: np.random.Generator,
                   phase: int | None = None) -> tuple[np.ndarray, dict]:  # fmt: skip
    """Frames and ground truth of a view panning `pan_distance` widths away and back.

    The panorama is evaluated analytically at every view (no resampling), so equal offsets give
    bit-identical frames. `phase` (frames into the period) None draws it.
    """
    h, w, n = cfg.height, cfg.width, cfg.frames
    dist = cfg.pan_distance * w
    grey = rng.uniform(*_GREY)
    side = min(h, w)
    # Blobs over every column a view can show: [-dist, w + dist) for either direction.
    lo, hi = -dist - 0.2 * w, w + dist + 0.2 * w
    count = max(4, int(round((hi - lo) * h / side * PAN_BLOBS_PER_PIXEL)))
    cx = rng.uniform(lo, hi, count)
    cy = rng.uniform(0, h, count)
    sigma = rng.uniform(0.08, 0.16, count) * side
    colours = rng.integers(len(COLOUR_NAMES), size=count)
    opacity = rng.uniform(0.5, 0.9, count)
    start = int(rng.integers(spec.gap)) if phase is None else int(phase)
    t = np.arange(n)
    sign = 1.0 if spec.direction == "right" else -1.0
    offset = sign * dist * _triangle(t + start, spec.gap)  # (T,) world x of the view's left edge
    xs = offset[:, None] + np.arange(w)[None, :] + 0.5  # (T, W)
    ys = np.arange(h) + 0.5  # (H,)
    frames = np.full((n, h, w, 3), grey, np.float32)
    chunk = max(1, (1 << 22) // (h * w * count))
    for t0 in range(0, n, chunk):
        dx = xs[t0 : t0 + chunk, None, :, None] - cx  # (t, 1, W, K)
        dy = ys[None, :, None, None] - cy  # (1, H, 1, K)
        a = opacity * np.exp(-(dx**2 + dy**2) / (2 * sigma**2))  # (t, H, W, K)
        rgb = np.array([COLOURS[COLOUR_NAMES[c]] for c in colours], np.float32) - grey  # (K, 3)
        frames[t0 : t0 + chunk] += np.minimum(a, 1).astype(np.float32) @ rgb
    video = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
    truth = {
        "grey": round(float(grey), 2),
        "pan_distance": round(float(dist), 4),
        "offset": np.round(offset, 4).tolist(),  # the view's left edge in panorama pixels
        "blobs": {
            "x": np.round(cx, 3).tolist(),
            "y": np.round(cy, 3).tolist(),
            "sigma": np.round(sigma, 3).tolist(),
            "colour": [COLOUR_NAMES[c] for c in colours],
            "opacity": np.round(opacity, 3).tolist(),
        },
    }
    return video, truth


def periodic_scene(spec: MemorySpec, cfg: SceneConfig, rng: np.random.Generator,
                   phase: int | None = None) -> tuple[np.ndarray, dict]:  # fmt: skip
    """Frames and ground truth of an object shown for `event_frames` frames every `gap` frames.

    `phase` is the first onset (None draws one in [0, gap)).
    """
    h, w, n = cfg.height, cfg.width, cfg.frames
    colour, shape, size = _object(rng, cfg)
    r = reach(shape, size)
    x = rng.uniform(r, w - r) if w > 2 * r else w / 2
    y = rng.uniform(r, h - r) if h > 2 * r else h / 2
    start = int(rng.integers(spec.gap)) if phase is None else int(phase)
    t = np.arange(n)
    on = np.mod(t - start, spec.gap) < cfg.event_frames
    grey = rng.uniform(*_GREY)
    one = object_alpha(shape, size, np.array([x]), np.array([y]), h, w)[0]
    video = _paint(grey, COLOURS[colour], on[:, None, None] * one[None])
    onsets = [int(s) for s in range(start % spec.gap, n, spec.gap)]
    # A lap that began before frame 0 and is still on at frame 0 is an event too (truncated).
    if start % spec.gap != 0 and on[0]:
        onsets.insert(0, int(start % spec.gap - spec.gap))
    truth = {
        **_object_truth(colour, shape, size),
        "grey": round(float(grey), 2),
        "x": round(float(x), 2),
        "y": round(float(y), 2),
        "event_frames": cfg.event_frames,
        "onsets": onsets,  # first frame of each event (negative: began before frame 0)
        "visible": on.tolist(),
    }
    return video, truth


_RENDER = {"occlusion": occlusion_scene, "panorama": panorama_scene, "periodic": periodic_scene}


def render_memory(spec: MemorySpec, cfg: SceneConfig, rng: np.random.Generator,
                  phase: float | None = None) -> tuple[np.ndarray, dict]:  # fmt: skip
    """uint8 `(T, H, W, 3)` frames and ground truth of a memory scene (see the module doc)."""
    check_memory_spec(spec, cfg)
    return _RENDER[spec.kind](spec, cfg, rng, phase)


def sample_memory_spec(kind: str, rng: np.random.Generator, cfg: SceneConfig) -> MemorySpec:
    """A memory scene's caption-level spec: its gap from `cfg.gaps`, a random direction."""
    gaps = [g for g in cfg.gaps if kind != "periodic" or g > cfg.event_frames]
    if not gaps:
        raise ValueError(f"no gap in {list(cfg.gaps)} exceeds event_frames={cfg.event_frames}")
    gap = int(gaps[rng.integers(len(gaps))])
    direction = ("left", "right")[rng.integers(2)] if kind != "periodic" else ""
    return MemorySpec(kind, gap, direction)


def _object_truth(colour: str, shape: str, size: float) -> dict:
    """The ground-truth fields of the one object of an occlusion or periodic scene."""
    return {
        "colour": colour,
        "colour_id": COLOUR_NAMES.index(colour),
        "rgb": list(COLOURS[colour]),
        "shape": shape,
        "shape_id": SHAPES.index(shape),
        "size": round(float(size), 2),
    }


def make_memory_sample(kind: str, index: int, split: str, seed: int,
                       cfg: SceneConfig) -> tuple[np.ndarray, str, dict]:  # fmt: skip
    """Frames, caption and KEY.json metadata of memory scene `index` of a split."""
    rng = np.random.default_rng([seed, SPLITS.index(split), index, 10 + MEMORY_KINDS.index(kind)])
    spec = sample_memory_spec(kind, rng, cfg)
    video, truth = render_memory(spec, cfg, rng)
    caption = memory_caption(spec)
    meta = {
        **scene_meta(cfg, split, seed, index, caption),
        "kind": kind,
        "memory": {"kind": kind, "gap": spec.gap, "direction": spec.direction, **truth},
    }
    return video, caption, meta


def memory_video(spec: MemorySpec, cfg: SceneConfig, seed: int) -> tuple[np.ndarray, dict]:
    """A real video of what a memory caption asks for, starting where the memory is testable.

    Occlusion starts with the object entering (so its first lap is whole), panorama at the
    near end, periodic with an event at frame 0: every gap the video holds is a full one.
    """
    rng = np.random.default_rng([seed, 99, MEMORY_KINDS.index(spec.kind)])
    phase = {"occlusion": 0.0, "panorama": 0, "periodic": 0}[spec.kind]
    return render_memory(spec, cfg, rng, phase)
