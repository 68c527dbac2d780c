"""The embedded data set, part 1: vocabularies, scene sampling, trajectories and captions.

A scene is one or two coloured shapes moving over a background for `frames` frames. Every
attribute a caption states (colour, shape, motion, speed) is fixed for the whole video, so
long-range coherence can be checked against the per-frame ground truth stored in `KEY.json`.
Linear motions live on a torus (an object leaving on the left re-enters on the right), so a
"moves to the left" video can last any number of frames with constant speed and size.
Rendering and shard writing are in `cinemamba.data.synth_video`; the memory scene kinds
(`SceneConfig.kinds`: an object hidden for a gap, a revisited panorama, a periodic event) are in
`cinemamba.data.synth_memory`.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

import numpy as np

# ------------------------------------------------------------------------------ vocabularies

# Saturated, well separated colours (the backgrounds are low-saturation greys), so a tiny model
# can learn them and a classical detector can segment them.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 190, 50),
    "blue": (40, 70, 230),
    "yellow": (240, 220, 30),
    "magenta": (210, 40, 210),
    "cyan": (30, 210, 220),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
MOTIONS: tuple[str, ...] = (
    "left", "right", "up", "down", "up-left", "up-right", "down-left", "down-right",
    "bounce", "circle", "stay",
)  # fmt: skip
SPEEDS: tuple[str, ...] = ("slowly", "quickly")
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

# Unit displacement per frame for the linear motions (image coordinates: y grows downwards).
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-left": (-math.sqrt(0.5), -math.sqrt(0.5)),
    "up-right": (math.sqrt(0.5), -math.sqrt(0.5)),
    "down-left": (-math.sqrt(0.5), math.sqrt(0.5)),
    "down-right": (math.sqrt(0.5), math.sqrt(0.5)),
}
# Speed in pixels per frame, as a fraction of min(height, width).
SPEED_FRACTION: dict[str, float] = {"slowly": 0.006, "quickly": 0.02}

# Colour x shape pairs that appear only in the validation split (one shape per colour, each
# shape held out for one or two colours), so generalisation to new combinations is measurable.
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    (c, SHAPES[(i + 1) % len(SHAPES)]) for i, c in enumerate(COLOUR_NAMES)
)

# ------------------------------------------------------------------------ caption templates

COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "green": ("green", "emerald", "lime"),
    "blue": ("blue", "azure", "cobalt"),
    "yellow": ("yellow", "golden", "lemon"),
    "magenta": ("magenta", "purple", "violet"),
    "cyan": ("cyan", "turquoise", "teal"),
}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "ball"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "wedge", "three-sided shape"),
    "star": ("star", "five-pointed star", "starlet"),
}
_VERBS = (("moves", "moving"), ("drifts", "drifting"), ("slides", "sliding"), ("glides", "gliding"))
_DIRECTION_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("to the left", "left", "leftward"),
    "right": ("to the right", "right", "rightward"),
    "up": ("up", "upward", "towards the top"),
    "down": ("down", "downward", "towards the bottom"),
    "up-left": ("up and to the left", "diagonally up-left", "towards the top left"),
    "up-right": ("up and to the right", "diagonally up-right", "towards the top right"),
    "down-left": ("down and to the left", "diagonally down-left", "towards the bottom left"),
    "down-right": ("down and to the right", "diagonally down-right", "towards the bottom right"),
}
# Motions that are not a direction have whole phrases (present tense, -ing form).
_MOTION_PHRASES: dict[str, tuple[tuple[str, str], ...]] = {
    "bounce": (
        ("bounces off the walls", "bouncing off the walls"),
        ("bounces around", "bouncing around"),
        ("ricochets around the frame", "ricocheting around the frame"),
    ),
    "circle": (
        ("moves in a loop", "moving in a loop"),
        ("orbits the centre", "orbiting the centre"),
        ("goes round and round", "going round and round"),
    ),
    "stay": (
        ("stays still", "staying still"),
        ("stays in place", "staying in place"),
        ("rests motionless", "resting motionless"),
    ),
}
SPEED_WORDS: dict[str, tuple[str, ...]] = {
    "slowly": ("slowly", "gently", "at a slow pace"),
    "quickly": ("quickly", "fast", "rapidly", "at a fast pace"),
}
_JOIN = " while "  # joins two object clauses; no phrase above contains it


@dataclass(frozen=True)
class ObjectSpec:
    """What a caption says about one object (speed is None for `stay`)."""

    colour: str
    shape: str
    motion: str
    speed: str | None


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption_clause(obj: ObjectSpec, rng: np.random.Generator, synonyms: bool = True) -> str:
    """One object's clause, with a random template and random synonyms.

    `synonyms=False` keeps the first word of each list and one template ("a red circle moves
    to the left quickly"), drawing the same random numbers, so the videos do not change.
    """

    def pick(words: tuple[str, ...]) -> str:
        word = str(rng.choice(words))  # drawn either way: the draws after it stay the same
        return word if synonyms else words[0]

    colour = pick(COLOUR_WORDS[obj.colour])
    shape = pick(SHAPE_WORDS[obj.shape])
    ing = bool(rng.integers(2)) and synonyms
    if obj.motion in _MOTION_PHRASES:
        phrases = _MOTION_PHRASES[obj.motion]
        k = int(rng.integers(len(phrases)))
        motion = phrases[k if synonyms else 0][int(ing)]
    else:
        k = int(rng.integers(len(_VERBS)))
        verb = _VERBS[k if synonyms else 0][int(ing)]
        motion = f"{verb} {pick(_DIRECTION_WORDS[obj.motion])}"
    subject = f"{_article(colour)} {colour} {shape}"
    if obj.speed is None:
        return f"{subject} {motion}"
    speed = pick(SPEED_WORDS[obj.speed])
    if rng.random() < 0.25 and " " not in speed and synonyms:  # "a red disc slowly drifting left"
        return f"{subject} {speed} {motion}"
    return f"{subject} {motion} {speed}"


def make_caption(objects: list[ObjectSpec], rng: np.random.Generator, synonyms: bool = True) -> str:
    """The caption of a scene: one clause per object (see `caption_clause`)."""
    return _JOIN.join(caption_clause(o, rng, synonyms) for o in objects)


def _table(words: dict[str, tuple[str, ...]]) -> list[tuple[re.Pattern, str]]:
    # Longest phrases first, so "up and to the left" wins over "up" and "left".
    pairs = [(w, name) for name, ws in words.items() for w in ws]
    pairs.sort(key=lambda p: -len(p[0]))
    return [(re.compile(rf"(?<![\w-]){re.escape(w)}(?![\w-])"), name) for w, name in pairs]


_COLOUR_RE = _table(COLOUR_WORDS)
_SHAPE_RE = _table(SHAPE_WORDS)
_SPEED_RE = _table(SPEED_WORDS)


def _motion_table() -> list[tuple[re.Pattern, str]]:
    words: dict[str, tuple[str, ...]] = {}
    for m, ds in _DIRECTION_WORDS.items():
        words[m] = tuple(f"{verb} {d}" for pair in _VERBS for verb in pair for d in ds)
    for m, phrases in _MOTION_PHRASES.items():
        words[m] = tuple(p for pair in phrases for p in pair)
    return _table(words)


_MOTION_RE = _motion_table()


def _first(table: list[tuple[re.Pattern, str]], text: str, what: str, clause: str):
    """Earliest match in `text` (longest phrase wins at equal positions)."""
    best = None
    for pattern, name in table:
        m = pattern.search(text)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), m.end(), name)
    if best is None:
        raise ValueError(f"no {what} word in caption clause {clause!r}")
    return best


def _find(table: list[tuple[re.Pattern, str]], text: str) -> str | None:
    try:
        return _first(table, text, "", text)[2]
    except ValueError:
        return None


def parse_caption(text: str) -> list[ObjectSpec]:
    """Invert `make_caption`: the colour, shape, motion and speed of each object in a caption.

    Raises ValueError naming the clause when a colour, shape or motion word is missing; a
    missing speed word gives `speed=None`.
    """
    out = []
    for clause in text.lower().strip().rstrip(".").split(_JOIN):
        _, c_end, colour = _first(_COLOUR_RE, clause, "colour", clause)
        # The shape is the first shape word after the colour ("a red circle moves in a loop").
        _, s_end, shape = _first(_SHAPE_RE, clause[c_end:], "shape", clause)
        rest = clause[c_end + s_end :]
        _, _, motion = _first(_MOTION_RE, rest, "motion", clause)
        # Speed is optional in free-form prompts ("a red circle moves to the left").
        speed = None if motion == "stay" else _find(_SPEED_RE, rest)
        out.append(ObjectSpec(colour, shape, motion, speed))
    return out


# ------------------------------------------------------------------------- scene sampling


SCENE_KINDS: tuple[str, ...] = ("objects", "occlusion", "panorama", "periodic")
# Every kind has an entry (so a YAML / command-line override can set any of them).
DEFAULT_KINDS: dict[str, float] = {"objects": 1.0, "occlusion": 0.0, "panorama": 0.0,
                                   "periodic": 0.0}  # fmt: skip
MEMORY_FIELDS = ("kinds", "gaps", "memory_speed", "pan_distance", "event_frames")


@dataclass(frozen=True)
class SceneConfig:
    """Knobs of the synthetic set (sizes are fractions of min(height, width))."""

    frames: int = 64
    height: int = 64
    width: int = 64
    fps: float = 12.0
    background: str = "texture"  # "texture" (random noise/checker/stripes) or "plain"
    background_motion_prob: float = 0.5
    two_object_prob: float = 0.0
    size_min: float = 0.24
    size_max: float = 0.32
    crf: int = 18
    # The motions and speeds objects are drawn from (a subset focuses a small training budget).
    motions: tuple[str, ...] = MOTIONS
    speeds: tuple[str, ...] = SPEEDS
    # Synonyms and varied templates in captions; False: one word per attribute (for a text
    # encoder that cannot know synonyms, e.g. a random frozen one).
    caption_synonyms: bool = True
    # Scene kinds and their probabilities: "objects" (the scenes above) and the memory scenes of
    # `cinemamba.data.synth_memory` ("occlusion", "panorama", "periodic"; issue 21).
    kinds: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_KINDS))
    # Memory scenes: gap / period lengths in frames (one drawn per video), the occluded object's
    # speed (fraction of min(height, width) per frame), how far the panorama pans (frame widths)
    # and how many frames a periodic event lasts.
    gaps: tuple[int, ...] = (16, 32, 64, 128)
    memory_speed: float = 0.04
    pan_distance: float = 1.0
    event_frames: int = 8

    def __post_init__(self):
        if self.background not in ("texture", "plain"):
            raise ValueError(f"background must be 'texture' or 'plain', got {self.background!r}")
        for name, chosen, valid in (
            ("motions", self.motions, MOTIONS),
            ("speeds", self.speeds, SPEEDS),
        ):
            bad = [m for m in chosen if m not in valid]
            if bad or not chosen:
                raise ValueError(f"{name}={list(chosen)}: choose one or more of {', '.join(valid)}")
            object.__setattr__(self, name, tuple(chosen))  # OmegaConf hands over lists
        if self.frames < 1 or self.height < 8 or self.width < 8:
            raise ValueError(f"need frames >= 1 and a size >= 8x8, got {self}")
        kinds = {str(k): float(p) for k, p in dict(self.kinds).items()}
        bad = [k for k in kinds if k not in SCENE_KINDS]
        if bad or not kinds or min(kinds.values()) < 0 or sum(kinds.values()) <= 0:
            raise ValueError(
                f"kinds={kinds}: give probabilities >= 0 (not all 0) for one or more of "
                f"{', '.join(SCENE_KINDS)}"
            )
        object.__setattr__(self, "kinds", {k: kinds.get(k, 0.0) for k in SCENE_KINDS})
        gaps = tuple(int(g) for g in self.gaps)
        if not gaps or min(gaps) < 1:
            raise ValueError(f"gaps={list(gaps)}: give one or more gap lengths >= 1 frame")
        object.__setattr__(self, "gaps", gaps)
        if self.memory_speed <= 0 or self.pan_distance <= 0 or self.event_frames < 1:
            raise ValueError(
                f"need memory_speed > 0, pan_distance > 0 and event_frames >= 1, got "
                f"{self.memory_speed}, {self.pan_distance}, {self.event_frames}"
            )

    @property
    def memory(self) -> bool:
        """Whether any memory scene kind can be drawn."""
        return any(p > 0 for k, p in self.kinds.items() if k != "objects")

    def record(self) -> dict:
        """The config as plain data; the memory fields only when a memory kind is drawn, so a
        set of today's scenes keeps the record (and the stage hashes) it had before issue 21."""
        data = asdict(self)
        if not self.memory:
            for name in MEMORY_FIELDS:
                data.pop(name)
        return data


@dataclass
class SceneObject:
    """One object of a scene with its per-frame trajectory (pixel centres)."""

    spec: ObjectSpec
    size: float  # bounding-box extent in pixels
    x: np.ndarray  # (T,) centre x, in [0, width)
    y: np.ndarray  # (T,) centre y, in [0, height)

    def ground_truth(self) -> dict:
        """JSON-ready ground truth (positions rounded to 1/100 pixel)."""
        d = asdict(self.spec)
        d.update(
            colour_id=COLOUR_NAMES.index(self.spec.colour),
            rgb=list(COLOURS[self.spec.colour]),
            shape_id=SHAPES.index(self.spec.shape),
            size=round(float(self.size), 2),
            x=np.round(self.x, 2).tolist(),
            y=np.round(self.y, 2).tolist(),
        )
        return d


def trajectory(
    motion: str, speed: str | None, size: float, cfg: SceneConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame centre (x, y) for a motion, each of shape (T,)."""
    h, w, n = cfg.height, cfg.width, cfg.frames
    v = SPEED_FRACTION[speed] * min(h, w) if speed else 0.0
    t = np.arange(n, dtype=np.float64)
    if motion in DIRECTIONS:
        dx, dy = DIRECTIONS[motion]
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        return np.mod(x0 + v * dx * t, w), np.mod(y0 + v * dy * t, h)
    if motion == "stay":
        return np.full(n, rng.uniform(size / 2, w - size / 2)), np.full(
            n, rng.uniform(size / 2, h - size / 2)
        )
    if motion == "circle":
        radius = rng.uniform(0.2, 0.26) * min(h, w)
        cx = w / 2 + rng.uniform(-0.04, 0.04) * w
        cy = h / 2 + rng.uniform(-0.04, 0.04) * h
        phase = rng.uniform(0, 2 * math.pi)
        sign = 1.0 if rng.random() < 0.5 else -1.0
        angle = phase + sign * (v / radius) * t
        return cx + radius * np.cos(angle), cy + radius * np.sin(angle)
    if motion == "bounce":
        # Off-axis angle so the bounce visibly uses both walls.
        a = rng.uniform(math.radians(25), math.radians(65)) + rng.integers(4) * math.pi / 2
        lo_x, hi_x, lo_y, hi_y = size / 2, w - size / 2, size / 2, h - size / 2
        x0, y0 = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
        return _reflect(x0 + v * math.cos(a) * t, lo_x, hi_x), _reflect(
            y0 + v * math.sin(a) * t, lo_y, hi_y
        )
    raise ValueError(f"unknown motion {motion!r}; valid: {', '.join(MOTIONS)}")


def _reflect(p: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold an unbounded path into [lo, hi] as a ball bouncing off both walls."""
    span = hi - lo
    q = np.mod(p - lo, 2 * span)
    return lo + np.where(q > span, 2 * span - q, q)


SPLITS = ("train", "val")


def sample_scene(index: int, split: str, seed: int, cfg: SceneConfig) -> list[SceneObject]:
    """The objects of scene `index` of a split, a pure function of (seed, split, index).

    Train scenes never use a held-out colour x shape pair; validation scenes alternate between
    a held-out pair (even index) and a seen pair (odd index) for the first object.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    n_obj = 2 if rng.random() < cfg.two_object_prob else 1
    colours = rng.permutation(len(COLOUR_NAMES))[:n_obj]  # distinct colours per scene
    objects = []
    for k, ci in enumerate(colours):
        colour = COLOUR_NAMES[ci]
        want_heldout = split == "val" and k == 0 and index % 2 == 0
        shapes = [s for s in SHAPES if ((colour, s) in HELDOUT_PAIRS) == want_heldout]
        shape = shapes[rng.integers(len(shapes))]
        motion = cfg.motions[rng.integers(len(cfg.motions))]
        speed = None if motion == "stay" else cfg.speeds[rng.integers(len(cfg.speeds))]
        size = rng.uniform(cfg.size_min, cfg.size_max) * min(cfg.height, cfg.width)
        x, y = trajectory(motion, speed, size, cfg, rng)
        objects.append(SceneObject(ObjectSpec(colour, shape, motion, speed), size, x, y))
    return objects


def scene_meta(cfg: SceneConfig, split: str, seed: int, index: int, caption: str) -> dict:
    """The KEY.json fields every synthetic scene has (its kind adds its own ground truth)."""
    return {
        "fps": cfg.fps,
        "frames": cfg.frames,
        "height": cfg.height,
        "width": cfg.width,
        "duration": cfg.frames / cfg.fps,
        "source": f"synth:{split}:{seed}:{index}",
        "split": split,
        "index": index,
        "seed": seed,
        "caption": caption,
    }
