"""Scoring the demo's long videos with the ground-truth detector, overall and per quarter.

The detector (`cinemamba.eval.groundtruth`) finds the coloured object in every frame and
compares colour, shape and motion with the prompt; no pretrained network is involved. The
same prompts are rendered as real synthetic videos of the same length and scored too: that is
the ceiling the detector allows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cinemamba.apps.demo.config import SCORES, DemoConfig
from cinemamba.apps.demo.runner import Stage, write_json
from cinemamba.apps.demo.stages import VAE_DIR, real_video
from cinemamba.eval.run import Scorer, default_scorer
from cinemamba.eval.tables import flat_scores
from cinemamba.latents.clips import vae_roundtrip
from cinemamba_vae import VideoAutoencoder

QUARTERS = 4


def quarter_bounds(frames: int, parts: int = QUARTERS) -> list[tuple[int, int]]:
    """[start, end) frame ranges splitting a video into `parts` nearly equal consecutive parts."""
    if frames < parts:
        raise ValueError(f"cannot split {frames} frames into {parts} parts")
    edges = np.linspace(0, frames, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def headline(scores: Mapping[str, Any]) -> dict[str, float | None]:
    """The demo's headline numbers (`SCORES` plus drift) from a detector score dict."""
    flat = dict(flat_scores(dict(scores)))
    out: dict[str, float | None] = {}
    for name in (*SCORES, "drift"):
        value = flat.get(name)
        out[name] = None if value is None else float(value)
    return out


def score_video(scorer: Scorer, frames: np.ndarray, prompt: str) -> dict[str, Any]:
    """Overall and per-quarter scores of one video (uint8 `(T, H, W, 3)`)."""
    overall = scorer(frames, prompt)
    quarters = [headline(scorer(frames[a:b], prompt)) for a, b in quarter_bounds(len(frames))]
    return {"scores": headline(overall), "detail": overall, "quarters": quarters}


def mean_of(rows: Sequence[Mapping[str, Any]], key: str = "scores") -> dict[str, float | None]:
    """Mean of each headline score over rows (None where no row has it)."""
    out: dict[str, float | None] = {}
    for name in (*SCORES, "drift"):
        values = [r[key][name] for r in rows if r[key].get(name) is not None]
        values = [v for v in values if not math.isnan(v)]
        out[name] = float(np.mean(values)) if values else None
    return out


def summarize(rows: list[dict[str, Any]], targets: Mapping[str, float]) -> dict[str, Any]:
    """Means per (variant, mode), over all final videos, and targets reached or not."""
    groups: dict[str, dict[str, Any]] = {}
    for variant in sorted({r["variant"] for r in rows}):
        for mode in sorted({r["mode"] for r in rows}):
            sel = [r for r in rows if r["variant"] == variant and r["mode"] == mode]
            if sel:
                groups[f"{variant}/{mode}"] = {
                    "videos": len(sel),
                    "scores": mean_of(sel),
                    "quarters": [
                        mean_of([{"q": r["quarters"][q]} for r in sel], "q")
                        for q in range(QUARTERS)
                    ],
                }
    final = [r for r in rows if r["variant"] == "final"]
    overall = mean_of(final)
    reached = {
        name: (overall[name] is not None and overall[name] >= target)
        for name, target in targets.items()
    }
    # The weakest (mode, prompt) cell of each score too: a mean can hide one broken video.
    worst = {
        name: min((r["scores"][name] for r in final if r["scores"][name] is not None), default=None)
        for name in targets
    }
    return {"overall": overall, "reached": reached, "worst": worst, "groups": groups}


def evaluate_stage(cfg: DemoConfig, scorer: Scorer | None = None) -> Stage:
    """Score every generated video and the real reference videos; write metrics.json."""
    gen = cfg.generate
    targets = {name: float(getattr(cfg.targets, name)) for name in SCORES}

    def run(work: Path, inputs: Mapping[str, Path]) -> dict[str, Any]:
        score = scorer or default_scorer()
        videos = json.loads((inputs["generate"] / "videos.json").read_text())
        rows = []
        for video in tqdm(videos, desc="evaluate", unit="video"):
            frames = np.load(inputs["generate"] / video["array"])
            rows.append({**video, **score_video(score, frames, video["prompt"])})
        vae = VideoAutoencoder.from_pretrained(inputs["vae-stats"] / VAE_DIR).eval()
        reference, through_vae = [], []
        for i, prompt in enumerate(tqdm(gen.prompts, desc="reference", unit="video")):
            frames = real_video(cfg, prompt, gen.frames, i)
            reference.append({"prompt": prompt, **score_video(score, frames, prompt)})
            rebuilt = vae_roundtrip(vae, frames, gen.decode_chunk_frames)
            through_vae.append({"prompt": prompt, **score_video(score, rebuilt, prompt)})
        metrics = {
            "targets": targets,
            "summary": summarize(rows, targets),
            "reference": {"videos": reference, "scores": mean_of(reference)},
            "reference_vae": {"videos": through_vae, "scores": mean_of(through_vae)},
            "videos": rows,
        }
        write_json(work / "metrics.json", metrics)
        return {"overall": metrics["summary"]["overall"], "reached": metrics["summary"]["reached"]}

    return Stage(
        "evaluate",
        run,
        {
            "targets": targets,
            "frames": gen.frames,
            "prompts": list(gen.prompts),
            "vae_ceiling": True,
            "data": cfg.data.record(),
        },
        needs=["vae-stats", "generate"],
        description="ground-truth detector scores, overall and per quarter",
    )
