"""The demo's stages: synth -> vae -> vae-stats -> export -> backbone -> generate -> evaluate.

Each stage calls a part of the framework in this process through its Python API: the synthetic
set writer, the VAE and backbone tasks on the DeepSpeed engine (one process, no launcher: the
engine sets its own rendezvous), the latent statistics, the latent export, `VideoPipeline` and
the ground-truth detector. A stage writes only inside its own directory, with relative paths,
so the runner can rename it when it completes.
"""

from __future__ import annotations

import copy
import json
import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from cinemamba.apps.demo.config import DemoConfig, is_heldout, plain, prompt_specs
from cinemamba.apps.demo.runner import Stage, StageInterrupted, write_json
from cinemamba.config import ConfigError
from cinemamba.data.synth import SceneObject, trajectory
from cinemamba.data.synth_video import render_scene, write_synth
from cinemamba.latents.clips import ClipConfig
from cinemamba.latents.export import ExportConfig, export_latents
from cinemamba.media import save_video
from cinemamba.tasks.backbone import BackboneTask
from cinemamba.tasks.vae import train_vae
from cinemamba.train import checkpoint as ckpt_io
from cinemamba.train import train
from cinemamba.train.export import consolidated_state_dict
from cinemamba.train.trainer import TrainResult
from cinemamba_backbone import VideoDiT
from cinemamba_conditioning import build_text_encoder
from cinemamba_sampling import (
    PipelineConfig,
    VideoPipeline,
    build_process,
    to_uint8,
)
from cinemamba_vae import VideoAutoencoder

log = logging.getLogger(__name__)

VAE_DIR = "vae"  # in vae-stats/: the VAE with latent statistics, used from then on
LATENTS_DIR = "latents"
RUN_DIR = "run"
SHEET_FRAMES = 32  # frames on a contact sheet, evenly spaced over the whole video
SHEET_ZOOM = 2  # tiny frames are upscaled (nearest) so the sheet is readable


# ------------------------------------------------------------------------------ helpers


def _slug(text: str) -> str:
    return "_".join("".join(c if c.isalnum() else " " for c in text.lower()).split())[:48]


def video_name(index: int, prompt: str) -> str:
    """File stem of generated video `index` (shared by mp4, png and npy)."""
    return f"{index:02d}_{_slug(prompt)}"


def last_eval(run_dir: Path) -> dict[str, float]:
    """The last `eval` record of an engine run's log.jsonl (without bookkeeping keys)."""
    record: dict[str, float] = {}
    log_path = run_dir / "log.jsonl"
    if log_path.is_file():
        for line in log_path.read_text().splitlines():
            row = json.loads(line)
            if row.get("kind") == "eval":
                record = {k: v for k, v in row.items() if k not in ("kind", "time")}
    return record


def finished(result: TrainResult, stage: str) -> TrainResult:
    """The result of a training run that reached its last step; a signal-stopped run is not.

    The engine checkpoints and returns on SIGTERM / SIGUSR1; the stage must then stay
    unfinished (its directory kept), so the next `cinemamba demo` resumes the run.
    """
    if result.reason != "done":
        raise StageInterrupted(
            f"{stage}: training stopped by a signal at step {result.step} (checkpointed); "
            "run the demo again to resume it"
        )
    return result


def save_media(
    folder: Path, stem: str, frames: np.ndarray, fps: float, title: str | None = None
) -> dict[str, str]:
    """mp4, PNG contact sheet (frames sampled over the whole length, `title` above, frame
    numbers under) and raw uint8 frames."""
    save_video(folder / f"{stem}.mp4", frames, fps, title=title, sheet_frames=SHEET_FRAMES,
               zoom=SHEET_ZOOM)  # fmt: skip
    tmp = folder / f".{stem}.npy.tmp"
    with open(tmp, "wb") as fh:
        np.save(fh, frames)
    tmp.replace(folder / f"{stem}.npy")
    return {"mp4": f"{stem}.mp4", "sheet": f"{stem}.png", "array": f"{stem}.npy"}


# ------------------------------------------------------------------------------ stages


def synth_stage(cfg: DemoConfig) -> Stage:
    """The synthetic training videos (train split; held-out colour x shape pairs never occur)."""
    data = cfg.data

    def run(work: Path, inputs: Mapping[str, Path]) -> dict[str, Any]:
        paths = write_synth(
            work / "train",
            "train",
            data.videos,
            data.scene(),
            seed=data.seed,
            samples_per_shard=data.samples_per_shard,
        )
        return {"videos": data.videos, "shards": len(paths)}

    desc = f"{data.videos} videos of {data.frames} frames at {data.size}x{data.size}"
    return Stage("synth", run, data.record(), description=desc)


def vae_stage(cfg: DemoConfig) -> Stage:
    """Train the causal VAE on the synthetic clips (VAE task on the engine)."""
    exp = copy.deepcopy(cfg.vae)
    exp.train.run_dir = ""  # set per run below; not part of what the output depends on
    exp.task.data.path = ""
    exp.task.data.val_path = ""

    def run(work: Path, inputs: Mapping[str, Path]) -> dict[str, Any]:
        job = copy.deepcopy(cfg.vae)
        job.train.run_dir = str(work / RUN_DIR)
        job.task.data.path = str(inputs["synth"] / "train")
        result = finished(train_vae(job), "vae")
        return {"steps": result.step, **last_eval(work / RUN_DIR)}

    steps, batch = exp.train.steps, exp.train.batch_size
    return Stage(
        "vae",
        run,
        _hashable(exp),
        needs=["synth"],
        description=f"{steps} steps x {batch} clips of {exp.task.data.clip.frames} frames",
    )


def vae_stats_stage(cfg: DemoConfig) -> Stage:
    """Per-channel latent mean / std over the training clips, stored in the VAE."""
    from cinemamba.eval.reconstruction import iter_clips
    from cinemamba.latents.stats import latent_stats

    count, frames = cfg.vae_stats_videos, cfg.data.frames

    def run(work: Path, inputs: Mapping[str, Path]) -> dict[str, Any]:
        vae = VideoAutoencoder.from_pretrained(inputs["vae"] / RUN_DIR / "vae").eval()
        skipped: Counter = Counter()
        clips = iter_clips(
            str(inputs["synth"] / "train"), ClipConfig(frames=frames, start="first"), skipped
        )

        def first(n: int):
            for i, (_, clip) in enumerate(clips):
                if i >= n:
                    return
                yield clip

        mean, std, n = latent_stats(vae, tqdm(first(count), desc="vae-stats", total=count))
        vae.set_latent_stats(mean, std)
        vae.save_pretrained(work / VAE_DIR)
        return {"clips": n, "skipped": dict(skipped), "mean": mean.tolist(), "std": std.tolist()}

    return Stage(
        "vae-stats",
        run,
        {"videos": count, "frames": frames},
        needs=["synth", "vae"],
        description=f"latent statistics of {count} clips",
    )


def export_stage(cfg: DemoConfig) -> Stage:
    """Encode every training video to latents and its caption to text embeddings."""
    frames = cfg.data.frames

    def run(work: Path, inputs: Mapping[str, Path]) -> dict[str, Any]:
        report = export_latents(
            ExportConfig(
                input=str(inputs["synth"] / "train"),
                output=str(work / LATENTS_DIR),
                vae=str(inputs["vae-stats"] / VAE_DIR),
                text_encoder=copy.deepcopy(cfg.text_encoder),
                clip=ClipConfig(frames=frames, start="first"),
                device="cpu",
            ),
            rank=0,
            world_size=1,
        )
        if report.manifest is None:
            raise RuntimeError(f"latent export to {work / LATENTS_DIR} did not complete")
        return {"samples": report.samples, "skipped": dict(report.skipped)}

    return Stage(
        "export",
        run,
        {"frames": frames, "text_encoder": plain(cfg.text_encoder)},
        needs=["synth", "vae-stats"],
        description=f"latents of {cfg.data.videos} clips of {frames} frames",
    )


def backbone_experiment(cfg: DemoConfig):
    """The backbone experiment as the demo runs it (checkpoints at half and all steps)."""
    exp = copy.deepcopy(cfg.backbone)
    if cfg.context_prob > 0 and not exp.task.per_frame_t:
        raise ConfigError("context_prob > 0 needs backbone.task.per_frame_t=true")
    exp.task.text_encoder = copy.deepcopy(cfg.text_encoder)
    exp.task.context_prob = cfg.context_prob
    exp.task.context_frames = cfg.generate.context
    exp.task.data.source = "latents"
    exp.task.samples.prompts = []  # the demo generates its own videos afterwards
    if cfg.generate.half_budget:
        if exp.train.steps % 2:
            raise ValueError(f"backbone.train.steps={exp.train.steps} must be even (half_budget)")
        half = exp.train.steps // 2
        every = exp.train.checkpoint_every
        if every <= 0 or half % every:
            if every > 0:
                log.warning(
                    "backbone.train.checkpoint_every=%d does not land on step %d (half the "
                    "steps, which generate.half_budget needs): checkpointing every %d instead",
                    every, half, half,
                )  # fmt: skip
            every = exp.train.checkpoint_every = half
        # Keep the half-way checkpoint through to the end of training.
        exp.train.keep_last = max(exp.train.keep_last, half // every + 1)
    return exp


def backbone_stage(cfg: DemoConfig) -> Stage:
    """Train the VideoDiT on the exported latents (backbone task on the engine)."""
    exp = backbone_experiment(cfg)
    hashed = copy.deepcopy(exp)
    hashed.train.run_dir = ""
    hashed.task.vae = ""
    hashed.task.data.path = ""
    hashed = _hashable(hashed)  # the task's context_prob / context_frames included

    def run(work: Path, inputs: Mapping[str, Path]) -> dict[str, Any]:
        job = copy.deepcopy(exp)
        job.train.run_dir = str(work / RUN_DIR)
        job.task.vae = str(inputs["vae-stats"] / VAE_DIR)
        job.task.data.path = str(inputs["export"] / LATENTS_DIR)
        task = BackboneTask(job.task)
        result = finished(train(job.train, task, full_config=OmegaConf.structured(job)), "backbone")
        return {"steps": result.step, **{k: round(v, 5) for k, v in result.losses.items()}}

    b = exp.task.backbone
    return Stage(
        "backbone",
        run,
        hashed,
        needs=["vae-stats", "export"],
        description=(
            f"{b.mixer} VideoDiT (width {b.hidden_size}, depth {b.depth}), "
            f"{exp.train.steps} steps x {exp.train.batch_size} clips"
        ),
    )


def load_backbone(run_dir: Path, step: int | None = None) -> VideoDiT:
    """The EMA backbone at the end of a run, or the EMA weights of its checkpoint at `step`."""
    final = VideoDiT.from_pretrained(run_dir / "backbone")
    if step is None:
        return final.eval()
    ckpt = ckpt_io.checkpoint_root(run_dir) / ckpt_io.step_dir_name(step)
    final.load_state_dict(consolidated_state_dict(ckpt, model="backbone", ema=True))
    return final.eval()


def generate_stage(cfg: DemoConfig) -> Stage:
    """The long videos: every prompt in every mode (and at half the training, if asked)."""
    gen = cfg.generate
    exp = backbone_experiment(cfg)
    variants = [("final", None)]
    if gen.half_budget:
        variants.append(("half", exp.train.steps // 2))

    def run(work: Path, inputs: Mapping[str, Path]) -> dict[str, Any]:
        vae = VideoAutoencoder.from_pretrained(inputs["vae-stats"] / VAE_DIR).eval()
        text = build_text_encoder(cfg.text_encoder)
        process = build_process(exp.task.process)
        pipe_cfg = PipelineConfig(
            solver=gen.solver,
            window=gen.window,
            context=gen.context,
            decode_chunk_frames=gen.decode_chunk_frames,
        )
        specs = prompt_specs(list(gen.prompts))
        videos = []
        for variant, step in variants:
            backbone = load_backbone(inputs["backbone"] / RUN_DIR, step)
            pipe = VideoPipeline(vae, backbone, text, process, pipe_cfg)
            for mode in gen.modes:
                video = pipe.generate(
                    list(gen.prompts),
                    frames=gen.frames,
                    height=cfg.data.size,
                    width=cfg.data.size,
                    steps=gen.steps,
                    guidance=gen.guidance,
                    seed=gen.seed,
                    mode=mode,
                )
                folder = Path(variant) / mode
                for i, (frames, prompt, spec) in enumerate(
                    zip(to_uint8(video), gen.prompts, specs, strict=True)
                ):
                    title = f"{prompt} | {mode} | backbone step {step or exp.train.steps}"
                    files = save_media(
                        work / folder, video_name(i, prompt), frames, cfg.data.fps, title
                    )
                    videos.append(
                        {
                            "variant": variant,
                            "backbone_step": step or exp.train.steps,
                            "mode": mode,
                            "index": i,
                            "prompt": prompt,
                            "heldout": is_heldout(spec),
                            "frames": int(frames.shape[0]),
                            **{k: str(folder / v) for k, v in files.items()},
                        }
                    )
        write_json(work / "videos.json", videos)
        return {"videos": len(videos)}

    return Stage(
        "generate",
        run,
        {**plain(gen), "size": cfg.data.size, "fps": cfg.data.fps},
        needs=["vae-stats", "backbone"],
        description=(
            f"{len(gen.prompts)} prompts x {len(gen.modes)} modes, {gen.frames} frames "
            f"({gen.frames / cfg.data.frames:.1f}x the training clip)"
        ),
    )


def real_video(cfg: DemoConfig, prompt: str, frames: int, seed: int) -> np.ndarray:
    """A real synthetic video of what `prompt` asks for, `frames` long: the detector's ceiling."""
    spec = prompt_specs([prompt])[0]
    scene = cfg.data.scene(frames)
    rng = np.random.default_rng([cfg.data.seed, 99, seed])
    size = rng.uniform(scene.size_min, scene.size_max) * min(scene.height, scene.width)
    x, y = trajectory(spec.motion, spec.speed, size, scene, rng)
    video, _ = render_scene([SceneObject(spec, size, x, y)], scene, rng)
    return video


def _hashable(exp: Any) -> Any:
    """An experiment as plain data, without the machine-specific resolved DeepSpeed file path."""
    data = plain(exp)
    data.get("train", {}).pop("deepspeed_config", None)
    return data


def torch_threads(threads: int) -> None:
    """Set torch's intra-op threads (0 leaves torch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)
