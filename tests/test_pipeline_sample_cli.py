"""`cinemamba sample`: config + flags -> mp4 and PNG contact sheet per prompt; clear errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cinemamba.cli import main
from cinemamba.config import load_config, to_object
from cinemamba.data.video import decode_video, probe_video
from cinemamba.eval.sources import iter_generated
from cinemamba.pipeline import SampleConfig, build_pipeline
from cinemamba_sampling import contact_sheet, to_uint8

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "sampling" / "tiny.yaml")
SMALL = [
    "--set",
    "height=16",
    "--set",
    "width=16",
    "--set",
    "steps=2",
    "--set",
    "pipeline.progress=false",
]


def test_sample_writes_video_and_contact_sheet(tmp_path):
    out = tmp_path / "clips" / "video.mp4"
    argv = [
        "sample",
        TINY,
        "--prompt",
        "a red circle moving left",
        "--prompt",
        "a blue square",
        "--frames",
        "11",
        "--mode",
        "rolling",
        "--seed",
        "3",
        "--out",
        str(out),
        *SMALL,
    ]
    assert main(argv) == 0
    for i in range(2):
        mp4 = out.with_name(f"video_{i}.mp4")
        info = probe_video(mp4, count=True)
        assert (info.frames, info.height, info.width) == (11, 16, 16)
        assert decode_video(mp4.read_bytes()).shape == (11, 16, 16, 3)
        sheet = np.asarray(Image.open(mp4.with_suffix(".png")))
        assert sheet.shape[1] == 8 * 16 + 7 * 2  # 11 frames in rows of 8
        # The labelled sheet: prompt, mode, frames and seed above, frame numbers under frames.
        title = f"{['a red circle moving left', 'a blue square'][i]} | rolling | 11 frames | seed 3"
        frames = decode_video(mp4.read_bytes())
        labelled = contact_sheet(frames, title=title, frame_numbers=True)
        assert sheet.shape == labelled.shape
        assert sheet.shape[0] > 2 * 16 + 2  # taller than the bare grid: the labels
    # The prompt sidecars eval reads: each video with the prompt it was generated from.
    items = {it.key: it.prompt for it in iter_generated(out.parent, Counter())}
    assert items == {"video_0": "a red circle moving left", "video_1": "a blue square"}


def test_sample_output_is_the_seeded_pipeline_output(tmp_path):
    """The written contact sheet (lossless) equals the pipeline's own output for that seed."""
    out = tmp_path / "a.mp4"
    argv = [
        "sample",
        TINY,
        "--prompt",
        "a green star",
        "--frames",
        "5",
        "--seed",
        "7",
        "--out",
        str(out),
        *SMALL,
    ]
    assert main(argv) == 0
    cfg = to_object(load_config(SampleConfig, TINY, SMALL[1::2]))
    video = build_pipeline(cfg).generate(
        ["a green star"],
        frames=5,
        height=16,
        width=16,
        steps=2,
        guidance=cfg.guidance,
        seed=7,
        mode=cfg.mode,
    )
    title = f"a green star | {cfg.mode} | 5 frames | seed 7"
    np.testing.assert_array_equal(
        np.asarray(Image.open(out.with_suffix(".png"))),
        contact_sheet(to_uint8(video)[0], title=title, frame_numbers=True),
    )


def test_sample_errors_are_one_clear_line(tmp_path, capsys):
    cfg = tmp_path / "trained.yaml"
    cfg.write_text("vae: ''\nbackbone: ''\n")
    assert main(["sample", str(cfg), "--prompt", "x", "--out", str(tmp_path / "v.mp4")]) == 2
    assert "needs `vae` and `backbone`" in capsys.readouterr().err
    assert (
        main(
            ["sample", TINY, "pipeline.windw=3", "--prompt", "x", "--out", str(tmp_path / "v.mp4")]
        )
        == 2
    )
    assert "pipeline.windw" in capsys.readouterr().err
    assert main(["sample", TINY, "--prompt", "x", "--out", str(tmp_path / "v.avi"), *SMALL]) == 2
    assert "must end in .mp4" in capsys.readouterr().err
    cfg.write_text(
        "vae: /nowhere/vae\nbackbone: /nowhere/dit\ntext_encoder:\n  random_init_seed: 0\n"
    )
    assert main(["sample", str(cfg), "--prompt", "x", "--out", str(tmp_path / "v.mp4")]) == 2
    assert "/nowhere/vae" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", TINY, "--prompt", "x", "--mode", "loop", "--out", str(tmp_path / "v.mp4")])
