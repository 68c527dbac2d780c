"""Evaluating a trained mixer (detector scores, memory scenes, FVD_16 and drift per
length) and the real-video ceiling it is compared with."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from cinemamba.apps.ablate.config import MIB, AblationConfig, eval_lengths, eval_prompts
from cinemamba.apps.ablate.memory import evaluate_memory
from cinemamba.apps.ablate.training import train_clip
from cinemamba.apps.demo.config import DemoConfig
from cinemamba.apps.demo.evaluate import score_video
from cinemamba.apps.demo.stages import real_video
from cinemamba.eval.compare import (
    accumulator_from,
    clip_features,
    fvd_against,
)
from cinemamba.eval.drift import SegmentReference, drift_table
from cinemamba.eval.run import Scorer
from cinemamba.eval.tables import mean_scores
from cinemamba.media import save_video
from cinemamba.tasks.backbone_config import BackboneExperiment
from cinemamba_backbone import VideoDiT
from cinemamba_conditioning import build_text_encoder
from cinemamba_sampling import (
    PipelineConfig,
    VideoPipeline,
    build_process,
    peak_memory,
    to_uint8,
)
from cinemamba_vae import load_vae

log = logging.getLogger(__name__)


def _mean_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of `demo.evaluate.score_video` rows: headline scores and per-quarter headlines."""
    return mean_scores(
        [{**r["scores"], "quarters": {f"q{i + 1}": q for i, q in enumerate(r["quarters"])}}
         for r in rows]
    )  # fmt: skip


def _save_examples(work: Path, tag: str, videos: list[np.ndarray], prompts: list[str],
                   count: int, fps: float) -> None:  # fmt: skip
    for i, (frames, prompt) in enumerate(zip(videos[:count], prompts, strict=False)):
        title = f"{prompt} | {tag} = {len(frames)} frames"
        save_video(work / f"{tag}_{i}.mp4", frames, fps, title=title)
        (work / f"{tag}_{i}.txt").write_text(prompt + "\n")  # the `cinemamba eval` sidecar


REAL_FEATURES = "real_features.npz"  # in the ceiling stage: FVD_16 per length + drift segments


FLOOR_SEED = 5000  # held-out real videos of the FVD bias-floor row: seeds no real set uses


def _real_fvd_set(cfg: AblationConfig, demo: DemoConfig, frames: int) -> list[np.ndarray]:
    """`fvd_real_per_prompt` real videos of every eval prompt (seed-major; the first seed is the
    ceiling's own video of each prompt)."""
    prompts = eval_prompts(cfg, demo)
    return [real_video(demo, p, frames, i + k * len(prompts))
            for k in range(cfg.eval.fvd_real_per_prompt) for i, p in enumerate(prompts)]  # fmt: skip


def real_features(cfg: AblationConfig, demo: DemoConfig, frames0: int, features,
                  path: Path) -> dict[str, int]:  # fmt: skip
    """Featurize the real FVD sets of every length (and the drift reference at the longest)
    once, into `path` (.npz); returns the number of real videos per length."""
    arrays: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    lengths = eval_lengths(cfg, frames0)
    for tag, frames in lengths.items():
        videos = _real_fvd_set(cfg, demo, frames)
        acc = clip_features(features, videos, real=True, seed=cfg.eval.seed,
                            desc=f"FVD real {tag}")  # fmt: skip
        arrays[f"fvd16_{tag}"] = acc.arrays()["fvd16"]
        arrays[f"too_short_{tag}"] = np.array(acc.too_short["fvd16"])
        counts[tag] = acc.stats["fvd16"].count
        if cfg.eval.drift and tag == list(lengths)[-1]:
            n = cfg.eval.drift_real_per_prompt * len(eval_prompts(cfg, demo))
            ref = SegmentReference.from_videos(features, videos[:n])
            arrays.update(drift_feats=ref.feats, drift_flicker=np.array(ref.flicker),
                          drift_videos=np.array(ref.videos))  # fmt: skip
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)
    return counts


def _mixer_fvd(cfg: AblationConfig, features, reference: Path | None, tag: str, last: bool,
               videos: list[np.ndarray]) -> dict[str, Any]:  # fmt: skip
    """FVD_16 of one mixer's videos at one length (and the drift table at the longest)."""
    if features is None or reference is None or not reference.is_file():
        return {"fvd": {"skipped": "no real features (eval.fvd=false or no I3D weights)"}}
    with np.load(reference) as z:
        out: dict[str, Any] = {"fvd": fvd_against(
            accumulator_from(z[f"fvd16_{tag}"], int(z[f"too_short_{tag}"])),
            clip_features(features, videos, real=False, desc=f"FVD {tag}"))}  # fmt: skip
        if last and cfg.eval.drift and "drift_feats" in z:
            ref = SegmentReference(z["drift_feats"], z["drift_flicker"].tolist(),
                                   int(z["drift_videos"]))  # fmt: skip
            out["drift"] = drift_table(features, ref, videos)
    return out


def evaluate_mixer(cfg: AblationConfig, demo: DemoConfig, exp: BackboneExperiment, run_dir: Path,
                   work: Path, scorer: Scorer, features=None,
                   reference: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Generate the eval prompts at every length with one trained backbone and score them;
    with `features` (an I3D) and the ceiling's `reference` features, FVD_16 and drift too."""
    vae = load_vae(exp.task.vae).eval()
    backbone = VideoDiT.from_pretrained(run_dir / "backbone", kernels=exp.task.kernels).eval()
    pipe = VideoPipeline(vae, backbone, build_text_encoder(exp.task.text_encoder),
                         build_process(exp.task.process), PipelineConfig(progress=False))  # fmt: skip
    frames0, height, width = train_clip(exp.task.data.path, exp.task.data.latent_frames, vae)
    prompts = eval_prompts(cfg, demo)
    e = cfg.eval
    gen = dict(height=height, width=width, steps=e.steps, guidance=e.guidance, mode=e.mode)
    out: dict[str, Any] = {}
    lengths = eval_lengths(cfg, frames0)
    for tag, frames in lengths.items():
        started = time.perf_counter()
        videos: list[np.ndarray] = []
        for k in range(0, len(prompts), e.batch):
            batch = prompts[k : k + e.batch]
            videos += list(to_uint8(pipe.generate(batch, frames=frames, seed=e.seed + k, **gen)))
        seconds = (time.perf_counter() - started) / len(prompts)
        # Denoising only (the VAE decode is the same for every mixer); the peak is reached
        # inside one solver step, so 2 steps measure it.
        _, peak = peak_memory(
            lambda f=frames: pipe.sample_latents(prompts[:1], frames=f, seed=e.seed,
                                                 **{**gen, "steps": 2})
        )  # fmt: skip
        rows = [score_video(scorer, v, p) for v, p in zip(videos, prompts, strict=True)]
        _save_examples(work, tag, videos, prompts, e.save_videos, fps=demo.data.fps)
        out[tag] = {
            "frames": frames,
            "videos": len(videos),
            "seconds_per_video": seconds,
            "sample_peak_mib": peak / MIB,
            "scores": _mean_rows(rows),
            **_mixer_fvd(cfg, features, reference, tag, tag == list(lengths)[-1], videos),
        }
        log.info(
            "%s at %s (%d frames): %.1f s/video", exp.task.backbone.mixer, tag, frames, seconds
        )
    return out


def evaluate_mixer_memory(cfg: AblationConfig, demo: DemoConfig, exp: BackboneExperiment,
                          run_dir: Path, work: Path) -> dict[str, Any]:  # fmt: skip
    """The memory prompts generated by one trained backbone in every memory mode, scored
    (`cinemamba.apps.ablate.memory`); rolling uses the demo's window and context."""
    vae = load_vae(exp.task.vae).eval()
    backbone = VideoDiT.from_pretrained(run_dir / "backbone", kernels=exp.task.kernels).eval()
    text, process = build_text_encoder(exp.task.text_encoder), build_process(exp.task.process)
    pipe_cfg = PipelineConfig(progress=False, window=demo.generate.window,
                              context=demo.generate.context)  # fmt: skip
    pipe = VideoPipeline(vae, backbone, text, process, pipe_cfg)
    frames0, height, width = train_clip(exp.task.data.path, exp.task.data.latent_frames, vae)
    e = cfg.eval
    gen = dict(height=height, width=width, steps=e.steps, guidance=e.guidance)
    return evaluate_memory(cfg.memory, demo.data.scene(), pipe, frames0, gen,
                           e.seed, e.batch, work, demo.data.fps)  # fmt: skip


def evaluate_ceiling(cfg: AblationConfig, demo: DemoConfig, frames0: int, scorer: Scorer,
                     features=None, work: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """The same prompts as real synthetic videos at every length, scored: the ceiling; with
    `features`, the real FVD features every mixer is compared with go to `work`."""
    out: dict[str, Any] = {}
    counts = {}
    if features is not None and work is not None:
        counts = real_features(cfg, demo, frames0, features, work / REAL_FEATURES)
    prompts = eval_prompts(cfg, demo)
    for tag, frames in eval_lengths(cfg, frames0).items():
        rows = [
            score_video(scorer, real_video(demo, p, frames, i), p) for i, p in enumerate(prompts)
        ]
        out[tag] = {"frames": frames, "videos": len(rows), "scores": _mean_rows(rows),
                    "fvd_real_videos": counts.get(tag)}  # fmt: skip
        if counts:
            # The bias floor: as many real videos as a mixer generates, from seeds the real set
            # does not use, against the same real features (what a perfect model would get).
            held_out = [real_video(demo, p, frames, FLOOR_SEED + i) for i, p in enumerate(prompts)]
            out[tag].update(_mixer_fvd(cfg, features, work / REAL_FEATURES, tag, False, held_out))
    return out
