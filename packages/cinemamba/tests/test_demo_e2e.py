"""`cinemamba demo` end to end at a microscopic budget: outputs, stage reuse, --fresh."""

import json

import numpy as np
import pytest

from cinemamba.apps.demo import load_demo_config, run_demo
from cinemamba.apps.demo.config import SCORES
from cinemamba.apps.demo.evaluate import quarter_bounds
from cinemamba.cli import main
from cinemamba.commands.demo import DEFAULT_CONFIG, STAGES
from cinemamba.config import ConfigError

PROMPTS = "[a red circle moves to the right quickly,a yellow circle moves down quickly]"
MICRO = [
    "threads=1",
    "data.videos=4",
    "data.frames=9",
    "data.size=16",
    "data.samples_per_shard=2",
    "vae_stats_videos=2",
    "vae.train.steps=2",
    "vae.train.batch_size=2",
    "vae.train.optimizer.warmup_steps=0",
    "backbone.train.steps=2",
    "backbone.train.batch_size=2",
    "backbone.train.optimizer.warmup_steps=0",
    "backbone.task.backbone.sample_size=4",
    "generate.frames=17",
    "generate.steps=2",
    "generate.window=3",
    "generate.context=1",
    f"generate.prompts={PROMPTS}",
    "fvd.real_per_prompt=2",
    "fvd.generated_per_prompt=1",
]


def _stage_lines(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.startswith("[demo ") and ": " in line:
            stage, status = line.split("] ", 1)[1].split(": ", 1)
            out.setdefault(stage, status)
    return out


def test_demo_runs_reuses_and_redoes(tmp_path, capsys, tiny_i3d):
    out = tmp_path / "demo"
    cfg = load_demo_config(DEFAULT_CONFIG, [*MICRO, f"out={out}"])
    result = run_demo(cfg)
    assert [r.status for r in result.records] == ["ran"] * len(STAGES)
    assert [r.name for r in result.records] == list(STAGES)

    # Outputs: one mp4 + contact sheet per prompt and mode, metrics.json, report.md.
    metrics = json.loads((out / "metrics.json").read_text())
    final = [v for v in metrics["videos"] if v["variant"] == "final"]
    assert len(final) == 2 * 2 and len(metrics["videos"]) == 2 * 4  # + half-budget videos
    for video in metrics["videos"]:
        for key in ("mp4", "sheet", "array"):
            assert (out / "generate" / video[key]).stat().st_size > 0
        frames = np.load(out / "generate" / video["array"])
        assert frames.shape == (17, 16, 16, 3) and frames.dtype == np.uint8
        assert len(video["quarters"]) == 4
        assert set(SCORES) <= set(video["scores"])
        assert all(0.0 <= video["scores"][s] <= 1.0 for s in SCORES)
    assert {v["heldout"] for v in final} == {False, True}  # yellow circle is held out
    assert set(metrics["summary"]["reached"]) == set(SCORES)
    # Real videos of the prompts, raw and through the VAE (the two ceilings), are scored too.
    for ref in ("reference", "reference_vae"):
        assert len(metrics[ref]["videos"]) == 2 and set(SCORES) <= set(metrics[ref]["scores"])
    assert metrics["reference"]["scores"]["colour_accuracy"] == 1.0
    assert [s["name"] for s in metrics["stages"]] == list(STAGES)
    report = (out / "report.md").read_text()
    assert "## Targets" in report and "## Stages" in report
    # The micro run misses targets: advice from this run's own numbers, no prose about others.
    assert not all(metrics["summary"]["reached"].values())
    advice = report.split("## Missed targets", 1)[1].split("\n## ", 1)[0]
    assert "target" in advice and "docs/" not in advice
    for video in final:
        assert f"generate/{video['sheet']}" in report
    # FVD (a tiny random-init I3D stands in): 1x clips of 9 frames are too short for FVD_16
    # and counted; the long groups have 2 generated vs 4 real videos; drift: 1 full segment.
    fvd = metrics["fvd"]
    assert fvd["i3d"] == tiny_i3d.identity
    from cinemamba.apps.demo.fvd import FLOOR_GROUP

    floors = [r for r in fvd["rows"] if r["group"] == FLOOR_GROUP]
    assert [(r["length"], r["generated_videos"]) for r in floors] == [("1x", 0), ("1.9x", 2)]
    one, *long = [r for r in fvd["rows"] if r["group"] != FLOOR_GROUP]
    assert (one["length"], one["fvd"], one["too_short"]) == ("1x", None, 2 + 4)
    assert [r["group"] for r in long] == ["final/oneshot", "final/rolling", "half/oneshot",
                                          "half/rolling"]  # fmt: skip
    for row in long:
        assert (row["generated_videos"], row["real_videos"], row["frames"]) == (2, 4, 17)
        assert row["fvd"] > 0
    assert len(list((out / "fvd" / "1x").glob("*.npy"))) == 2
    assert len(fvd["drift"]["rows"]) == 17 // 16 and fvd["drift"]["rows"][0]["videos"] == 2
    assert (out / "fvd" / "drift.png").stat().st_size > 0
    assert "| 1.9x | 17 | final/rolling |" in report and "| 2 | 4 | 0 |" in report
    assert "| 1x | 9 | final/oneshot | n/a | 0 | 0 | 6 |" in report
    assert "### Drift over time (`final/rolling`" in report
    lines = _stage_lines(capsys.readouterr().err)
    assert all(lines[s].startswith("running") for s in STAGES)

    # Second run: every stage reused, nothing retrained.
    mtime = (out / "backbone" / "stamp.json").stat().st_mtime_ns
    assert main(["demo", "--config", str(DEFAULT_CONFIG), *MICRO, f"out={out}"]) == 0
    lines = _stage_lines(capsys.readouterr().err)
    assert all(lines[s].startswith("reused") for s in STAGES)
    assert (out / "backbone" / "stamp.json").stat().st_mtime_ns == mtime

    # A changed generation setting redoes generate + evaluate + fvd only; --fresh redoes everything.
    assert main(["demo", "--config", str(DEFAULT_CONFIG), *MICRO, f"out={out}",
                 "generate.steps=1"]) == 0  # fmt: skip
    lines = _stage_lines(capsys.readouterr().err)
    assert [s for s in STAGES if lines[s].startswith("running")] == ["generate", "evaluate", "fvd"]
    assert main(["demo", "--config", str(DEFAULT_CONFIG), "--fresh", *MICRO,
                 f"out={out}"]) == 0  # fmt: skip
    lines = _stage_lines(capsys.readouterr().err)
    assert all(lines[s].startswith("running") for s in STAGES)


def test_demo_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="generate.frames"):
        load_demo_config(DEFAULT_CONFIG, ["generate.frames=100"])
    with pytest.raises(ConfigError, match="generate.modes"):
        load_demo_config(DEFAULT_CONFIG, ["generate.modes=[sideways]"])
    with pytest.raises(ConfigError, match="cannot read"):
        load_demo_config(DEFAULT_CONFIG, ["generate.prompts=[a thing happens]"])
    with pytest.raises(ConfigError, match="generat"):
        load_demo_config(DEFAULT_CONFIG, ["generat.frames=17"])


def test_full_demo_config_is_long_enough():
    cfg = load_demo_config(DEFAULT_CONFIG)
    assert cfg.generate.frames >= 8 * cfg.data.frames
    assert set(cfg.generate.modes) >= {"oneshot", "rolling"}


def test_quarter_bounds_cover_the_video():
    assert quarter_bounds(17) == [(0, 4), (4, 8), (8, 13), (13, 17)]
    with pytest.raises(ValueError):
        quarter_bounds(3)
