"""Training one mixer's backbone in its own `cinemamba train` process, and its cost."""

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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from cinemamba.apps.ablate.config import MIB, AblationConfig, mixer_pattern
from cinemamba.apps.ablate.cost import match_cost, step_seconds, train_flops
from cinemamba.apps.demo.config import DemoConfig
from cinemamba.config import ConfigError, merge_config
from cinemamba.tasks.backbone_config import BackboneExperiment
from cinemamba_backbone import BackboneConfig, VideoDiT
from cinemamba_sampling import peak_memory
from cinemamba_vae import VideoAutoencoder

log = logging.getLogger(__name__)


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


def train_clip(
    latents: str | Path, latent_frames: int, vae: VideoAutoencoder
) -> tuple[int, int, int]:
    """Pixel (frames, height, width) of the training clips, from the stored latent shape."""
    (_, t, h, w), _ = latent_shapes(latents, latent_frames)
    st, s = vae.config.temporal_compression, vae.config.spatial_compression
    return 1 + st * (t - 1), h * s, w * s
