"""The synthetic set: captions invert, ground truth matches pixels, splits hold out pairs."""

import math

import numpy as np
import pytest

from cinemamba.data.synth import (
    COLOURS,
    DIRECTIONS,
    HELDOUT_PAIRS,
    MOTIONS,
    SHAPES,
    SPEED_FRACTION,
    ObjectSpec,
    SceneConfig,
    parse_caption,
    sample_scene,
)
from cinemamba.data.synth_video import make_sample


def test_vocabularies_and_heldout_pairs():
    assert len(SHAPES) >= 4 and len(COLOURS) >= 6
    assert {"left", "right", "up", "down", "bounce", "circle", "stay"} <= set(MOTIONS)
    rgb = np.array(list(COLOURS.values()), float)
    dists = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
    assert dists[~np.eye(len(rgb), dtype=bool)].min() > 100  # well separated colours
    assert len(HELDOUT_PAIRS) == len(COLOURS)
    assert {s for _, s in HELDOUT_PAIRS} == set(SHAPES)  # every shape is held out somewhere


def test_parse_caption_inverts_every_generated_caption():
    cfg = SceneConfig(frames=1, height=16, width=16, two_object_prob=0.5)
    for i in range(300):
        _, caption, meta = make_sample(i, "train", 5, cfg)
        want = [
            ObjectSpec(o["colour"], o["shape"], o["motion"], o["speed"]) for o in meta["objects"]
        ]
        assert parse_caption(caption) == want, caption


def test_parse_caption_handwritten_prompts():
    assert parse_caption("A red circle moves to the left.") == [
        ObjectSpec("red", "circle", "left", None)
    ]
    assert parse_caption("a crimson disc drifting left slowly") == [
        ObjectSpec("red", "circle", "left", "slowly")
    ]
    assert parse_caption("a teal ball moves in a loop quickly") == [
        ObjectSpec("cyan", "circle", "circle", "quickly")
    ]
    assert parse_caption(
        "a golden box glides up and to the left at a fast pace while a violet star stays still"
    ) == [
        ObjectSpec("yellow", "square", "up-left", "quickly"),
        ObjectSpec("magenta", "star", "stay", None),
    ]
    with pytest.raises(ValueError, match="no colour"):
        parse_caption("a thing moves left")
    with pytest.raises(ValueError, match="no motion"):
        parse_caption("a red circle")


def test_samples_are_deterministic_per_seed():
    cfg = SceneConfig(frames=8, height=32, width=32)
    a, b = make_sample(3, "val", 1, cfg), make_sample(3, "val", 1, cfg)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
    c = make_sample(3, "val", 2, cfg)
    assert not np.array_equal(a[0], c[0])


def test_splits_hold_out_colour_shape_pairs():
    cfg = SceneConfig(frames=2, two_object_prob=0.5)
    for i in range(200):
        train = sample_scene(i, "train", 0, cfg)
        assert all((o.spec.colour, o.spec.shape) not in HELDOUT_PAIRS for o in train)
        val = sample_scene(i, "val", 0, cfg)
        assert ((val[0].spec.colour, val[0].spec.shape) in HELDOUT_PAIRS) == (i % 2 == 0)


def _centroid(frame: np.ndarray, rgb) -> tuple[float, float, int]:
    mask = np.abs(frame.astype(int) - np.array(rgb)).sum(-1) < 60
    ys, xs = np.nonzero(mask)
    return xs.mean(), ys.mean(), int(mask.sum())


@pytest.mark.parametrize("shape", SHAPES)
def test_ground_truth_positions_match_rendered_pixels(shape):
    cfg = SceneConfig(frames=40, height=64, width=64, background="plain")
    # Find a single-object scene of this shape (deterministic search).
    for i in range(500):
        objs = sample_scene(i, "train", 11, cfg)
        if objs[0].spec.shape == shape and objs[0].spec.motion in ("bounce", "circle", "stay"):
            break
    video, caption, meta = make_sample(i, "train", 11, cfg)
    gt = meta["objects"][0]
    assert parse_caption(caption)[0].shape == shape
    for t in range(0, 40, 3):
        cx, cy, area = _centroid(video[t], gt["rgb"])
        # Symmetric shapes: the pixel centroid is the centre (anti-aliasing moves it < 0.5 px).
        assert abs(cx + 0.5 - gt["x"][t]) < 0.5 and abs(cy + 0.5 - gt["y"][t]) < 0.5, (t, cx, cy)
        assert area > 0.25 * gt["size"] ** 2  # big enough for a tiny model


def test_linear_motion_speed_direction_and_long_range_identity():
    cfg = SceneConfig(frames=2048, height=32, width=32, background="texture")
    for i in range(500):
        objs = sample_scene(i, "train", 2, cfg)
        if objs[0].spec.motion == "down-left" and objs[0].spec.speed == "quickly":
            break
    obj = objs[0]
    # Unwrapped per-frame displacement on the torus equals speed x direction.
    dx = (np.diff(obj.x) + 16) % 32 - 16
    dy = (np.diff(obj.y) + 16) % 32 - 16
    v = SPEED_FRACTION["quickly"] * 32
    assert np.allclose(dx, v * DIRECTIONS["down-left"][0]) and np.allclose(
        dy, v * DIRECTIONS["down-left"][1]
    )
    video, _, meta = make_sample(i, "train", 2, cfg)
    assert video.shape == (2048, 32, 32, 3)
    rgb = np.array(COLOURS[obj.spec.colour])
    area = (np.abs(video.astype(int) - rgb).sum(-1) < 60).sum((1, 2))  # (T,)
    # The same object over all 2048 frames: its colour area never vanishes or drifts.
    assert area.min() > 0.8 * area.mean() and area.max() < 1.2 * area.mean()
    first, last = area[:512].mean(), area[-512:].mean()
    assert abs(first - last) < 0.05 * first
    assert len(meta["objects"][0]["x"]) == 2048


def test_bounce_stays_inside_and_circle_keeps_radius():
    cfg = SceneConfig(frames=600, height=64, width=48)
    seen = set()
    for i in range(400):
        for o in sample_scene(i, "train", 4, cfg):
            half = o.size / 2
            if o.spec.motion == "bounce":
                assert o.x.min() >= half - 1e-9 and o.x.max() <= 48 - half + 1e-9
                assert o.y.min() >= half - 1e-9 and o.y.max() <= 64 - half + 1e-9
                seen.add("bounce")
            if o.spec.motion == "circle":
                # Least-squares circle through the path (x^2 + y^2 = 2ax + 2by + c): tiny residual.
                a = np.stack([2 * o.x, 2 * o.y, np.ones_like(o.x)], 1)
                sol, *_ = np.linalg.lstsq(a, o.x**2 + o.y**2, rcond=None)
                r = np.hypot(o.x - sol[0], o.y - sol[1])
                assert r.std() < 1e-6 * r.mean() and 0.2 * 48 <= r.mean() <= 0.26 * 48
                step = np.hypot(np.diff(o.x), np.diff(o.y))
                assert np.allclose(step, SPEED_FRACTION[o.spec.speed] * 48, rtol=0.01)
                seen.add("circle")
        if seen == {"bounce", "circle"}:
            break
    assert seen == {"bounce", "circle"}
    assert math.isclose(SPEED_FRACTION["quickly"] / SPEED_FRACTION["slowly"], 0.02 / 0.006)


def test_motion_and_speed_subsets():
    cfg = SceneConfig(frames=4, height=16, width=16, motions=("left", "up"), speeds=("quickly",))
    specs = [sample_scene(i, "train", 0, cfg)[0].spec for i in range(60)]
    assert {s.motion for s in specs} == {"left", "up"}
    assert {s.speed for s in specs} == {"quickly"}
    # The default draws from every motion and speed.
    full = [sample_scene(i, "train", 0, SceneConfig(frames=4))[0].spec for i in range(300)]
    assert {s.motion for s in full} == set(MOTIONS)
    with pytest.raises(ValueError, match="motions=.*'sideways'.*choose"):
        SceneConfig(motions=("sideways",))
    with pytest.raises(ValueError, match="speeds"):
        SceneConfig(speeds=())


def test_captions_without_synonyms_are_canonical_and_leave_videos_unchanged():
    varied = SceneConfig(frames=5, height=16, width=16)
    plain = SceneConfig(frames=5, height=16, width=16, caption_synonyms=False)
    for i in range(40):
        frames_a, caption_a, _ = make_sample(i, "train", 0, varied)
        frames_b, caption_b, _ = make_sample(i, "train", 0, plain)
        assert np.array_equal(frames_a, frames_b)
        assert parse_caption(caption_a) == parse_caption(caption_b)
        spec = parse_caption(caption_b)[0]
        canonical = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}
        if spec.motion in canonical:
            motion = f"moves {canonical[spec.motion]}"
            assert (
                caption_b
                == f"a{'n' * (spec.colour[0] in 'aeiou')} {spec.colour} {spec.shape} {motion} {spec.speed}"
            )
