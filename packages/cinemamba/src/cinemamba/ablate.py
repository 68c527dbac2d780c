"""`cinemamba ablate`: the seed paper's experiment — one small backbone per temporal mixer.

Every mixer trains the same experiment (same latents, VAE, text encoder, seed, step budget),
each in its own `cinemamba train` process so its wall time and peak RSS are its own. Then each
trained backbone generates videos for the same prompts at 1x, 4x and 8x the training length
(`frames = 1 + m * (F - 1)` for a training clip of F frames, i.e. m times as many latent frame
intervals) and the classical-detector ground-truth scores of those videos are averaged per
length. Results: `ablation.json`, `ablation.md` and `ablation.png` under `out`.

Stages run through the demo's resumable `StageRunner`: a re-run reuses every finished mixer
(same config hash) and redoes only what changed or was interrupted.
"""

from __future__ import annotations

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

from cinemamba.data.synth import SceneConfig
from cinemamba.data.synth_video import make_sample
from cinemamba.data.video import write_video
from cinemamba.demo.runner import Stage, StageRunner, write_json
from cinemamba.eval.run import Scorer, default_scorer, flat_scores, markdown_table, mean_scores
from cinemamba.tasks.backbone import BackboneExperiment, load_backbone_experiment
from cinemamba_backbone import TEMPORAL_MIXERS, BackboneConfig, VideoDiT
from cinemamba_conditioning import build_text_encoder
from cinemamba_sampling import PipelineConfig, VideoPipeline, build_process, peak_memory, to_uint8
from cinemamba_vae import VideoAutoencoder

log = logging.getLogger(__name__)

MIB = 2**20


# ------------------------------------------------------------------------------------ config


@dataclass
class AblationEval:
    """How each trained backbone is evaluated."""

    prompts: int = 8  # captions of validation scenes 0..prompts-1 of the synthetic set
    lengths: list[int] = field(default_factory=lambda: [1, 4, 8])  # multiples of training length
    steps: int = 16
    guidance: float = 3.0
    mode: str = "oneshot"  # the paper's way; rolling / streaming are pipeline options
    seed: int = 0
    batch: int = 4  # prompts generated together
    save_videos: int = 2  # mp4 + contact sheet of the first N prompts per length
    headline: list[str] = field(default_factory=list)  # score paths tabled and plotted


@dataclass
class AblationConfig:
    """`cinemamba ablate` schema.

    mixers: temporal mixer names (TEMPORAL_MIXERS); `a+b` is a hybrid whose blocks cycle through
        a, b, ... (BackboneConfig.mixer_pattern).
    experiment / overrides: the backbone experiment every mixer trains (`cinemamba train`),
        with `key=value` overrides applied to all; `steps` is the equal step budget.
    vae / latents: the shared VAE directory and latent shard set (e.g. a demo run's stages).
    """

    out: str = "runs/ablation"
    mixers: list[str] = field(
        default_factory=lambda: ["bimamba", "mamba", "attention", "bimamba+attention"]
    )
    experiment: str = "configs/experiment/backbone_tiny.yaml"
    overrides: list[str] = field(default_factory=list)
    steps: int = 300
    seed: int = 0
    vae: str = ""
    latents: str = ""
    scene: dict[str, Any] = field(default_factory=dict)  # SceneConfig fields of the prompts' set
    eval: AblationEval = field(default_factory=AblationEval)


def mixer_pattern(name: str) -> list[str]:
    """Block pattern of a mixer entry: `bimamba` -> [bimamba]; `bimamba+attention` -> both."""
    parts = [p.strip() for p in name.split("+")]
    bad = [p for p in parts if p not in TEMPORAL_MIXERS]
    if bad or not parts:
        raise ValueError(
            f"mixer entry {name!r}: unknown temporal mixer(s) {bad}; valid: "
            f"{sorted(TEMPORAL_MIXERS)} (join names with '+' for a hybrid)"
        )
    return parts


def mixer_overrides(name: str) -> list[str]:
    """`cinemamba train` overrides that select a mixer entry."""
    parts = mixer_pattern(name)
    if len(parts) == 1:
        return [f"task.backbone.mixer={parts[0]}", "task.backbone.mixer_pattern=[]"]
    return [f"task.backbone.mixer={parts[0]}", f"task.backbone.mixer_pattern=[{','.join(parts)}]"]


def train_overrides(cfg: AblationConfig, name: str, run_dir: Path) -> list[str]:
    """Every override of one mixer's training run (shared ones first, the mixer's last)."""
    return [
        *cfg.overrides,
        f"train.steps={cfg.steps}",
        f"train.seed={cfg.seed}",
        f"train.run_dir={run_dir}",
        f"task.vae={cfg.vae}",
        f"task.data.path={cfg.latents}",
        *mixer_overrides(name),
    ]


def eval_prompts(cfg: AblationConfig) -> list[str]:
    """Captions of the first `eval.prompts` validation scenes (held-out and seen colour x shape
    pairs alternate); the same captions `evaluate_ceiling` renders."""
    scene = SceneConfig(**{**cfg.scene, "frames": 1})
    return [make_sample(i, "val", cfg.seed, scene)[1] for i in range(cfg.eval.prompts)]


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


def train_mixer(cfg: AblationConfig, name: str, work: Path) -> dict[str, Any]:
    """Train one mixer in a child `cinemamba train` process; measure time, peak RSS, loss."""
    run_dir = work / "run"
    cmd = [sys.executable, "-m", "cinemamba.cli", "train", cfg.experiment,
           *train_overrides(cfg, name, run_dir)]  # fmt: skip
    log.info("training %s: %s", name, " ".join(cmd))
    started = time.perf_counter()
    with open(work / "train.log", "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        # wait4 gives this child's own resource usage (getrusage(CHILDREN) would mix mixers).
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"training {name!r} failed with exit code {code}; see {work}/train.log")
    experiment = _experiment(cfg, name, run_dir)
    arch = experiment.task.backbone
    loss, loop_seconds = _final_loss(run_dir / "log.jsonl")
    latent_shape, text_shape = _shapes(cfg.latents, experiment.task.data.latent_frames)
    micro = experiment.train.batch_size // max(1, experiment.train.grad_accum)
    params = sum(p.numel() for p in VideoDiT(arch).parameters())
    return {
        "mixer": name,
        "pattern": arch.block_mixers(),
        "params": params,
        "steps": experiment.train.steps,
        "batch_size": experiment.train.batch_size,
        "train_seconds": loop_seconds if loop_seconds is not None else wall,
        "wall_seconds": wall,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # Linux reports KiB
        "step_peak_mib": train_step_memory(arch, latent_shape, text_shape, micro) / MIB,
        "final_loss": loss,
        "latent_shape": list(latent_shape),
    }


def _experiment(cfg: AblationConfig, name: str, run_dir: Path) -> BackboneExperiment:
    return load_backbone_experiment(cfg.experiment, train_overrides(cfg, name, run_dir))


def _shapes(latents: str | Path, latent_frames: int = 0) -> tuple[tuple[int, ...], tuple[int, int]]:
    """Training latent clip shape (C, t, h, w) and text shape (L, D) of a latent shard set: the
    first stored sample's latents (cropped to `latent_frames` when set) and the manifest."""
    latents = Path(latents)
    manifest = json.loads((latents / "latents.json").read_text())
    first = latents / manifest["shards"][0]["name"]
    with tarfile.open(first) as tar:
        member = next(m for m in tar if m.name.endswith(".latent.npy"))
        shape = np.load(io.BytesIO(tar.extractfile(member).read())).shape  # (C, t, h, w)
    if latent_frames:
        shape = (shape[0], min(shape[1], latent_frames), *shape[2:])
    text = manifest["text_encoder"]
    return tuple(int(s) for s in shape), (int(text["context_length"]), int(text["dim"]))


# -------------------------------------------------------------------------------- evaluation


def eval_lengths(cfg: AblationConfig, train_frames: int) -> dict[str, int]:
    """Pixel frames per length multiple: m times the training clip's frame intervals."""
    return {f"{m}x": 1 + m * (train_frames - 1) for m in cfg.eval.lengths}


def _train_clip(cfg: AblationConfig, experiment: BackboneExperiment, vae: VideoAutoencoder):
    """Pixel (frames, height, width) of the training clips (from the latent shapes)."""
    (_, t, h, w), _ = _shapes(cfg.latents, experiment.task.data.latent_frames)
    st, s = vae.config.temporal_compression, vae.config.spatial_compression
    return 1 + st * (t - 1), h * s, w * s


def _save_examples(work: Path, tag: str, videos: list[np.ndarray], prompts: list[str],
                   count: int, fps: float) -> None:  # fmt: skip
    from cinemamba_sampling import contact_sheet, save_png

    for i, (frames, prompt) in enumerate(zip(videos[:count], prompts, strict=False)):
        write_video(work / f"{tag}_{i}.mp4", frames, fps=fps)
        (work / f"{tag}_{i}.txt").write_text(prompt + "\n")  # the eval sidecar convention
        save_png(work / f"{tag}_{i}.png", contact_sheet(frames))


def evaluate_mixer(
    cfg: AblationConfig, name: str, run_dir: Path, work: Path, scorer: Scorer
) -> dict[str, Any]:
    """Generate the eval prompts at every length with one trained backbone and score them."""
    experiment = _experiment(cfg, name, run_dir)
    task = experiment.task
    vae = VideoAutoencoder.from_pretrained(cfg.vae).eval()
    backbone = VideoDiT.from_pretrained(run_dir / "backbone", kernels=task.kernels).eval()
    pipe = VideoPipeline(vae, backbone, build_text_encoder(task.text_encoder),
                         build_process(task.process), PipelineConfig(progress=False))  # fmt: skip
    frames0, height, width = _train_clip(cfg, experiment, vae)
    prompts = eval_prompts(cfg)
    e = cfg.eval
    gen = dict(height=height, width=width, steps=e.steps, guidance=e.guidance, mode=e.mode)
    out: dict[str, Any] = {}
    for tag, frames in eval_lengths(cfg, frames0).items():
        started = time.perf_counter()
        videos: list[np.ndarray] = []
        for k in range(0, len(prompts), e.batch):
            batch = prompts[k : k + e.batch]
            videos += list(to_uint8(pipe.generate(batch, frames=frames, seed=e.seed + k, **gen)))
        seconds = (time.perf_counter() - started) / len(prompts)
        # Denoising only (the VAE decode is the same for every mixer); the peak is reached
        # inside one solver step, so 2 steps measure it.
        _, peak = peak_memory(
            lambda f=frames: pipe.sample_latents(
                prompts[:1], frames=f, seed=e.seed, **{**gen, "steps": 2}
            )
        )
        rows = [scorer(v, p) for v, p in zip(videos, prompts, strict=True)]
        _save_examples(work, tag, videos, prompts, e.save_videos, fps=8.0)
        out[tag] = {
            "frames": frames,
            "videos": len(videos),
            "seconds_per_video": seconds,
            "sample_peak_mib": peak / MIB,
            "scores": mean_scores(rows),
        }
        log.info("%s at %s (%d frames): %.1f s/video", name, tag, frames, seconds)
    return out


def evaluate_ceiling(cfg: AblationConfig, frames0: int, height: int, width: int,
                     scorer: Scorer) -> dict[str, Any]:  # fmt: skip
    """The same prompts' real synthetic videos, rendered at every length and scored."""
    out: dict[str, Any] = {}
    for tag, frames in eval_lengths(cfg, frames0).items():
        scene = SceneConfig(**{**cfg.scene, "frames": frames, "height": height, "width": width})
        rows = []
        for i in range(cfg.eval.prompts):
            video, caption, _ = make_sample(i, "val", cfg.seed, scene)
            rows.append(scorer(video, caption))
        out[tag] = {"frames": frames, "videos": len(rows), "scores": mean_scores(rows)}
    return out


# ---------------------------------------------------------------------------------- pipeline


def ablation_stages(cfg: AblationConfig, scorer: Scorer) -> list[Stage]:
    """One train and one eval stage per mixer, and the real-video ceiling (StageRunner stages)."""
    for entry in cfg.mixers:
        mixer_pattern(entry)  # fail before anything runs
    for name in ("vae", "latents"):
        if not getattr(cfg, name) or not Path(getattr(cfg, name)).is_dir():
            raise ValueError(
                f"ablation `{name}` must be an existing directory, got {getattr(cfg, name)!r}"
            )
    shared = {"vae": str(Path(cfg.vae).resolve()), "latents": str(Path(cfg.latents).resolve()),
              "experiment": Path(cfg.experiment).read_text(), "overrides": list(cfg.overrides),
              "steps": cfg.steps, "seed": cfg.seed}  # fmt: skip
    stages: list[Stage] = []
    for name in cfg.mixers:
        slug = name.replace("+", "_")

        def train_run(work: Path, inputs: Mapping[str, Path], name: str = name) -> dict:
            result = train_mixer(cfg, name, work)
            write_json(work / "train.json", result)
            return result

        def eval_run(work: Path, inputs: Mapping[str, Path], name: str = name, slug: str = slug):
            result = evaluate_mixer(cfg, name, inputs[f"train-{slug}"] / "run", work, scorer)
            write_json(work / "eval.json", result)
            return {"lengths": list(result)}

        stages.append(Stage(f"train-{slug}", train_run, {**shared, "mixer": name},
                            description=f"train the {name} backbone ({cfg.steps} steps)"))  # fmt: skip
        stages.append(Stage(f"eval-{slug}", eval_run, {"eval": asdict(cfg.eval), "scene": cfg.scene},
                            needs=[f"train-{slug}"],
                            description=f"generate and score at {cfg.eval.lengths}x"))  # fmt: skip

    def ceiling_run(work: Path, inputs: Mapping[str, Path]) -> dict:
        experiment = load_backbone_experiment(cfg.experiment, cfg.overrides)
        vae = VideoAutoencoder.from_pretrained(cfg.vae)
        result = evaluate_ceiling(cfg, *_train_clip(cfg, experiment, vae), scorer)
        write_json(work / "eval.json", result)
        return {"lengths": list(result)}

    stages.append(Stage("ceiling", ceiling_run, {**shared, "eval": asdict(cfg.eval),
                                                   "scene": cfg.scene},
                        description="score the real synthetic videos (the ceiling)"))  # fmt: skip
    return stages


def run_ablation(cfg: AblationConfig, *, scorer: Scorer | None = None, fresh: bool = False) -> dict:
    """Train and evaluate every mixer (reusing finished stages), then write the report."""
    scorer = scorer or default_scorer()
    stages = ablation_stages(cfg, scorer)
    runner = StageRunner(cfg.out, stages, fresh=fresh)
    runner.run()
    results: dict[str, Any] = {"config": asdict(cfg), "mixers": {}}
    for name in cfg.mixers:
        slug = name.replace("+", "_")
        train = json.loads((runner.directory(f"train-{slug}") / "train.json").read_text())
        evals = json.loads((runner.directory(f"eval-{slug}") / "eval.json").read_text())
        results["mixers"][name] = {**train, "lengths": evals}
    results["ceiling"] = json.loads((runner.directory("ceiling") / "eval.json").read_text())
    write_report(results, Path(cfg.out))
    return results


# ------------------------------------------------------------------------------------ report


def _score(scores: Mapping[str, Any], key: str) -> float | None:
    """A score by its `a/b` path in a nested score dict (None when absent)."""
    node: Any = scores
    for part in key.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, int | float) else None


def to_markdown(results: Mapping[str, Any]) -> str:
    """`ablation.md`: setup, cost per mixer, headline scores per length, all scores."""
    cfg = results["config"]
    mixers = results["mixers"]
    ceiling = results["ceiling"]
    heads = list(cfg["eval"]["headline"])
    tags = list(ceiling)
    frames = {t: ceiling[t]["frames"] for t in tags}
    any_mixer = next(iter(mixers.values()))
    lines = [
        "# Temporal mixer ablation",
        "",
        f"Same experiment (`{cfg['experiment']}`), latents, seed ({cfg['seed']}) and step budget "
        f"({cfg['steps']} steps of batch {any_mixer['batch_size']}) for every mixer; "
        f"{cfg['eval']['prompts']} validation prompts generated at "
        + ", ".join(f"{t} ({frames[t]} frames)" for t in tags)
        + f" with {cfg['eval']['steps']} solver steps, guidance {cfg['eval']['guidance']}, "
        f"mode `{cfg['eval']['mode']}`.",
        "",
        "## Cost",
        "",
        markdown_table(
            [
                "mixer",
                "blocks",
                "params",
                "train s",
                "peak RSS MiB",
                "train-step peak MiB",
                "final loss",
                *[f"gen s/video {t}" for t in tags],
                *[f"sampling peak MiB {t}" for t in tags],
            ],
            [
                [
                    n,
                    "+".join(m["pattern"]),
                    m["params"],
                    m["train_seconds"],
                    m["peak_rss_mib"],
                    m["step_peak_mib"],
                    m["final_loss"],
                    *[m["lengths"][t]["seconds_per_video"] for t in tags],
                    *[m["lengths"][t]["sample_peak_mib"] for t in tags],
                ]
                for n, m in mixers.items()
            ],
        ),  # fmt: skip
    ]
    for head in heads:
        lines += ["", f"## `{head}` by generated length", ""]
        rows = [
            [n, *[_score(m["lengths"][t]["scores"], head) for t in tags]] for n, m in mixers.items()
        ]
        rows.append(["real videos (ceiling)", *[_score(ceiling[t]["scores"], head) for t in tags]])
        lines.append(markdown_table(["mixer", *[f"{t} ({frames[t]} f)" for t in tags]], rows))
    lines += ["", "## All scores", ""]
    columns = [(n, t) for n in [*mixers, "ceiling"] for t in tags]
    keys = list(dict.fromkeys(k for m in mixers.values() for t in tags
                              for k, _ in flat_scores(m["lengths"][t]["scores"])))  # fmt: skip
    table = []
    for key in keys:
        row = [key.replace("/", " / ")]
        for n, t in columns:
            scores = (ceiling if n == "ceiling" else mixers[n]["lengths"])[t]["scores"]
            row.append(_score(scores, key))
        table.append(row)
    lines.append(markdown_table(["score", *[f"{n} {t}" for n, t in columns]], table))
    return "\n".join(lines) + "\n"


def plot(results: Mapping[str, Any], path: Path) -> Path:
    """`ablation.png`: each headline score vs generated frames per mixer (ceiling dashed), and
    train time and memory per mixer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mixers, ceiling = results["mixers"], results["ceiling"]
    heads = list(results["config"]["eval"]["headline"])
    tags = list(ceiling)
    frames = [ceiling[t]["frames"] for t in tags]
    fig, axes = plt.subplots(1, len(heads) + 2, figsize=(4.2 * (len(heads) + 2), 3.6))
    for ax, head in zip(axes, heads, strict=False):
        for n, m in mixers.items():
            ax.plot(frames, [_score(m["lengths"][t]["scores"], head) for t in tags], "o-", label=n)
        ax.plot(frames, [_score(ceiling[t]["scores"], head) for t in tags], "k--", label="real")
        ax.set(xlabel="generated frames", ylabel=head, title=head, xscale="log", ylim=(-0.02, 1.02))
        ax.set_xticks(frames, [str(f) for f in frames])
    axes[0].legend(fontsize=8)
    names = list(mixers)
    x = np.arange(len(names))
    ax = axes[len(heads)]
    ax.bar(x, [mixers[n]["train_seconds"] for n in names], color="tab:blue")
    ax.set(title="train time", ylabel="seconds")
    ax.set_xticks(x, names, rotation=20, fontsize=8)
    ax = axes[len(heads) + 1]
    width = 0.8 / (1 + len(tags))
    ax.bar(
        x - 0.4 + width / 2, [mixers[n]["step_peak_mib"] for n in names], width, label="train step"
    )
    for k, t in enumerate(tags, 1):
        ax.bar(x - 0.4 + width * (k + 0.5), [mixers[n]["lengths"][t]["sample_peak_mib"] for n in names],
               width, label=f"sample {t}")  # fmt: skip
    ax.set(title="peak tensor memory", ylabel="MiB")
    ax.set_xticks(x, names, rotation=20, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_report(results: Mapping[str, Any], out: Path) -> tuple[Path, Path, Path]:
    """Write `ablation.json`, `ablation.md` and `ablation.png` under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "ablation.json", results)
    md = out / "ablation.md"
    tmp = md.with_name(".ablation.md.tmp")
    tmp.write_text(to_markdown(results))
    os.replace(tmp, md)
    return out / "ablation.json", md, plot(results, out / "ablation.png")
