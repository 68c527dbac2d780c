"""Memory scores (issue 21): 1.0 on real videos, chance when the remembered content comes from
other videos, the identity scores agreeing with the renderer's truth pair by pair."""

from __future__ import annotations

import numpy as np
import pytest

from cinemamba.data.synth import SceneConfig
from cinemamba.data.synth_memory import MEMORY_KINDS, MemorySpec, memory_caption, memory_video
from cinemamba.eval.memory import (
    POSITION_TOLERANCE,
    memory_ceiling,
    memory_chance,
    memory_scores,
    segment_cuts,
    shuffle_segments,
)

CFG = SceneConfig(frames=257, height=32, width=32, background="plain", size_min=0.42,
                  size_max=0.5)  # fmt: skip


def _spec(kind: str, gap: int, direction: str = "right") -> MemorySpec:
    return MemorySpec(kind, gap, direction if kind != "periodic" else "")


@pytest.mark.parametrize("kind", MEMORY_KINDS)
@pytest.mark.parametrize("gap", [16, 64, 128])
def test_real_videos_score_one(kind: str, gap: int) -> None:
    for seed, direction in ((0, "left"), (1, "right"), (2, "right")):
        spec = _spec(kind, gap, direction)
        video, _ = memory_video(spec, CFG, seed)
        s = memory_scores(video, memory_caption(spec), CFG)
        assert s["memory"] == 1.0, s
        if kind == "occlusion":
            assert s["returns"] >= 1 and s["reid_colour"] == s["reid_shape"] == 1.0
            assert s["position_accuracy"] == 1.0
            assert s["position_error"] < POSITION_TOLERANCE * 32
        if kind == "periodic":
            assert s["period_kept"] == 1.0 and s["expected"] == (257 - 8) // gap


def test_occlusion_reid_follows_the_truth_pair_by_pair() -> None:
    """Returns taken from another video: re-identified exactly when the two objects share
    colour and shape (the renderer's truth), whatever else differs."""
    spec = _spec("occlusion", 32)
    hits = []
    for k in range(16):
        a, ta = memory_video(spec, CFG, 100 + k)
        b, tb = memory_video(spec, CFG, 200 + k)
        s = memory_scores(shuffle_segments([a, b], segment_cuts(a, spec, 8)[:1]),
                          memory_caption(spec), CFG)  # fmt: skip
        same = (ta["colour"], ta["shape"]) == (tb["colour"], tb["shape"])
        # After the first cut every return is b's object.
        assert s["reid"] == float(same), (k, ta["colour"], ta["shape"], tb["colour"], tb["shape"])
        assert s["reid_colour"] == float(ta["colour"] == tb["colour"])
        hits.append(same)
    assert not all(hits)  # the check saw both outcomes' negative case


def test_periodic_event_identity_and_timing() -> None:
    spec = _spec("periodic", 40)
    prompt = memory_caption(spec)
    a, ta = memory_video(spec, CFG, 5)
    b, tb = memory_video(spec, CFG, 6)
    assert (ta["colour"], ta["shape"]) != (tb["colour"], tb["shape"])
    mixed = memory_scores(shuffle_segments([a, b], segment_cuts(a, spec, 8)[:1]), prompt, CFG)
    assert mixed["period_kept"] == 1.0 and mixed["event_kept"] == 0.0  # on time, wrong object
    # A one-frame dropout inside an event (a decoder's flicker) is not a new event.
    flicker = a.copy()
    flicker[ta["onsets"][1] + 3] = a[ta["onsets"][1] - 1]
    s = memory_scores(flicker, prompt, CFG)
    assert (s["period_kept"], s["event_kept"], s["events"]) == (1.0, 1.0, len(ta["onsets"]))
    # One expected event missing: (expected - 1) / expected kept, timing matched the same way.
    n_exp = mixed["expected"]
    gone = a.copy()
    onset = ta["onsets"][2]
    gone[onset : onset + 8] = gone[onset - 1]
    s = memory_scores(gone, prompt, CFG)
    assert s["event_kept"] == pytest.approx((n_exp - 1) / n_exp)
    assert s["period_kept"] == pytest.approx((n_exp - 1) / n_exp)
    # An extra event half a period late is spurious: matched / (expected + 1).
    extra = a.copy()
    extra[onset + 20 : onset + 28] = a[onset : onset + 8]
    s = memory_scores(extra, prompt, CFG)
    assert s["period_kept"] == pytest.approx(n_exp / (n_exp + 1)) and s["event_kept"] == 1.0


def test_static_and_empty_videos() -> None:
    flat = np.full((257, 32, 32, 3), 120, np.uint8)
    for kind in MEMORY_KINDS:
        s = memory_scores(flat, memory_caption(_spec(kind, 32)), CFG)
        assert s["memory"] == 0.0, s  # nothing shown: nothing remembered
    with pytest.raises(ValueError, match="not a memory-scene caption"):
        memory_scores(flat, "a red circle moves up quickly", CFG)


@pytest.mark.parametrize("kind", MEMORY_KINDS)
def test_chance_levels_from_shuffled_videos(kind: str) -> None:
    """Segments between sightings each from another real video: the headline falls to chance
    (1/24 for an object of random colour and shape; 0 for a panorama from elsewhere)."""
    c = memory_chance(memory_caption(_spec(kind, 32)), CFG, samples=8)
    assert c["memory"] <= 0.2, c
    if kind == "periodic":
        assert c["period_kept"] <= 0.35, c  # frames in random order: 0.02-0.25 measured


def test_ceiling_through_a_vae_is_scored() -> None:
    import torch

    from cinemamba_vae import VideoAutoencoder, vae_preset

    torch.manual_seed(0)
    vae = VideoAutoencoder(vae_preset("tiny")).eval()
    cfg = SceneConfig(frames=65, height=32, width=32, background="plain", size_min=0.42,
                      size_max=0.5)  # fmt: skip
    out = memory_ceiling(memory_caption(_spec("panorama", 16)), cfg, 0, vae=vae)
    assert out["real"]["memory"] == 1.0
    assert 0.0 <= out["vae"]["memory"] <= 1.0 and out["vae"]["pairs"] == 65 - 16


def test_occlusion_speed_follows_the_video_size() -> None:
    """The scenes' speed is a fraction of the frame: a 48x48 video scored with a config of
    another size still scores 1."""
    big = SceneConfig(frames=257, height=48, width=48, background="plain", size_min=0.42,
                      size_max=0.5)  # fmt: skip
    spec = _spec("occlusion", 32)
    video, _ = memory_video(spec, big, 0)
    assert memory_scores(video, memory_caption(spec), CFG)["memory"] == 1.0


def test_an_object_that_never_leaves_is_not_reidentified() -> None:
    """Frozen where it was last seen whole instead of leaving: present with the right colour
    and shape at every return window, but there was no gap to remember across."""
    spec = _spec("occlusion", 32)
    video, truth = memory_video(spec, CFG, 0)
    frozen = video.copy()
    visible = np.array(truth["visible"])
    x = np.array(truth["x"])
    whole = np.flatnonzero(visible & (x - truth["x_reach"] >= 0) & (x + truth["x_reach"] <= 32))
    last = whole[0]
    for t in range(len(video)):  # keep the last whole view until the next one
        if t in set(whole.tolist()):
            last = t
        else:
            frozen[t] = video[last]
    s = memory_scores(frozen, memory_caption(spec), CFG)
    assert s["reid"] == 0.0 and s["returns"] >= 1, s
