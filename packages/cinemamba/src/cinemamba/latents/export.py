"""Latent export: raw video shards -> latent shards (VAE latents + text embeddings + metadata).

Latent shard `i` holds the samples of raw shard `i`; process `rank` of `world_size` exports the
shards with `i % world_size == rank`. Each shard is written as `NAME.tar.tmp` and renamed when
complete, after its `NAME.tar.stats.json` sidecar, so a re-run skips finished shards and redoes
only interrupted ones. Whichever process finds every shard complete writes the manifest
(`latents.json`, identical whoever writes it), which training requires.

Latents are the VAE's posterior mean (`encode(sample=False)`), one video per VAE call: the
result then does not depend on which videos share a batch, so training on the fly from raw
shards with `clip.start="first"` and `task.vae_sample=false` sees bit-identical latents.

`clip.start="whole"` (the default) encodes every frame of each video: the video is decoded in
chunks of `chunk_frames` frames and fed through the VAE's causal streaming encode
(`encode_stream`), so memory holds one chunk of pixels plus the latents, whatever the length
(issue 15). The training loader cuts windows out of these sequences (`dataset.crop_latents`).

The encoders and the per-video encode are `cinemamba.latents.encoders`, one shard's writing
`cinemamba.latents.shard_writer`, the header and manifest `cinemamba.latents.manifest`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from cinemamba.data.bucket_config import BucketConfig
from cinemamba.latents import format as fmt
from cinemamba.latents.clips import EXPORT_STARTS, ClipConfig
from cinemamba.latents.encoders import _Encoders
from cinemamba.latents.lock import export_claim
from cinemamba.latents.manifest import _check_header, _finish, _write_null_text
from cinemamba.latents.shard_writer import _export_shard
from cinemamba_conditioning import TextEncoderConfig

log = logging.getLogger(__name__)


@dataclass
class ExportConfig:
    """What `export_latents` reads, with which encoders, and where it writes.

    input: directory of raw shards with the data layer's `PREFIX.plan.json`.
    output: directory for the latent shard set (created).
    vae: a saved VideoAutoencoder directory or a diffusers video VAE directory (`load_vae`).
    text_encoder: the frozen text encoder (`TextEncoderConfig`).
    clip: what is taken from each video: `start="whole"` every frame (the default;
        `clip.frames` unused), `start="first"` the first `clip.frames` frames (the eval-mode
        clip, what on-the-fly training with `start="first"` encodes).
    device: "auto" (cuda when available), "cpu", "cuda", "cuda:1", ...
    chunk_frames: pixel frames per VAE encode chunk (0: whole clip, or WHOLE_CHUNK frames in
        whole-video mode, also the frames decoded at a time; exact either way for our VAE
        and Wan).
    buckets: the training buckets (`BucketConfig`, the same block as the training config's
        `task.data.buckets`): each video is cut to its bucket's height x width (`fit`), so
        its latents have a size the buckets take; videos no bucket takes are counted
        ("no_bucket"). Off by default: every video at `clip.height` x `clip.width`.
    patch_size: the backbone's `patch_size` the latents will train (`task.backbone.patch_size`,
        2 in every shipped config): generated buckets (`aspects` / `area`) round their sides
        to the VAE's spatial compression x patch, as training does, so both get one size.
    """

    input: str = ""
    output: str = ""
    vae: str = ""
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    clip: ClipConfig = field(default_factory=lambda: ClipConfig(start="whole"))
    device: str = "auto"
    chunk_frames: int = 0
    buckets: BucketConfig = field(default_factory=BucketConfig)
    patch_size: int = 2
    progress: bool = True


@dataclass
class ExportReport:
    """What one `export_latents` call did (on this rank)."""

    written: list[Path] = field(default_factory=list)  # shards this call wrote
    already_done: int = 0  # shards of this rank skipped because they were complete
    samples: int = 0  # samples written by this call
    skipped: Counter = field(default_factory=Counter)  # bad inputs by reason (this call)
    # samples exported despite a counted problem (metadata_mismatch, implausible_metadata)
    warnings: Counter = field(default_factory=Counter)
    manifest: Path | None = None  # set when the shard set is complete
    seconds: float = 0.0


def rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """This process's share: explicit values, else torchrun's or SLURM's environment, else 0/1."""
    env_rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID"))
    env_world = os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS"))
    rank = rank if rank is not None else int(env_rank or 0)
    world = world_size if world_size is not None else int(env_world or 1)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world}")
    return rank, world


def _source_plan(directory: Path) -> dict[str, Any]:
    plans = sorted(directory.glob("*.plan.json"))
    if len(plans) != 1:
        raise FileNotFoundError(
            f"export input {str(directory)!r} must hold exactly one shard plan (*.plan.json, "
            f"written by the data layer's shard writer); found {[p.name for p in plans]}"
        )
    return json.loads(plans[0].read_text())


def export_latents(
    cfg: ExportConfig, *, rank: int | None = None, world_size: int | None = None
) -> ExportReport:
    """Export this process's share of `cfg.input` to latent shards in `cfg.output`.

    Resumable: complete shards are skipped. Returns what this call did; `report.manifest` is
    set once the whole set is complete (after the last process finishes).
    """
    started = time.perf_counter()
    try:
        cfg.clip.validate(starts=EXPORT_STARTS)
    except ValueError as err:  # random windows of exported latents are cut at training time
        raise ValueError(f"export {err} (random windows: task.data.latent_frames)") from None
    for name in ("input", "output", "vae"):
        if not getattr(cfg, name):
            raise ValueError(f"export config field {name!r} is empty")
    rank, world = rank_and_world(rank, world_size)
    src, out = Path(cfg.input), Path(cfg.output)
    if not src.is_dir():
        raise FileNotFoundError(f"export input {str(src)!r} is not a directory")
    plan = _source_plan(src)
    sources = [(s["name"], int(s["samples"])) for s in plan["shards"]]
    names = [fmt.shard_name(i) for i in range(len(sources))]
    out.mkdir(parents=True, exist_ok=True)
    mine = [i for i in range(len(sources)) if i % world == rank]
    # The ranks of one job claim disjoint shards; a second export into `out` fails here.
    with export_claim(out, mine, rank, world):
        report = _export_mine(cfg, rank, src, out, plan, sources, names, mine)
    report.seconds = time.perf_counter() - started
    return report


def _export_mine(
    cfg: ExportConfig, rank: int, src: Path, out: Path, plan: dict[str, Any],
    sources: list[tuple[str, int]], names: list[str], mine: list[int],
) -> ExportReport:  # fmt: skip
    """Export shards `mine` (claimed by this process) and write the manifest if complete."""
    todo = [i for i in mine if not (out / names[i]).exists()]
    report = ExportReport(already_done=len(mine) - len(todo))
    if report.already_done:
        log.info("rank %d: %d of %d shards already complete, skipped", rank, report.already_done,
                 len(mine))  # fmt: skip
    enc = _Encoders(cfg)
    st = enc.frame_step
    if cfg.clip.start == "first" and (cfg.clip.frames - 1) % st:
        raise ValueError(
            f"clip.frames={cfg.clip.frames}: the VAE encodes 1 + {st}*k frames "
            f"(e.g. {1 + st * max(1, (cfg.clip.frames - 1) // st)})"
        )
    header = {
        "format": fmt.FORMAT,
        "vae": {"identity": enc.vae_identity, "path": str(cfg.vae),
                "config": asdict(enc.vae.config), "config_hash": fmt.config_hash(enc.vae.config),
                "latent_mean": enc.vae.latent_mean.tolist(),
                "latent_std": enc.vae.latent_std.tolist()},
        "text_encoder": {"identity": enc.text.identity, "config": asdict(cfg.text_encoder),
                         "config_hash": fmt.config_hash(cfg.text_encoder), "dim": enc.text.dim,
                         "pooled_dim": enc.text.pooled_dim,
                         "context_length": enc.text.context_length},
        "clip": asdict(cfg.clip)
                | ({"buckets": asdict(cfg.buckets), "patch_size": cfg.patch_size} if enc.fit else {}),
        "latent": {"posterior": "mean", "dtype": "float32", "normalised": True},
        "source": {"input": str(src), "plan_info": plan.get("info", {})},
    }  # fmt: skip
    _check_header(out, header)
    if not (out / fmt.NULL_TEXT_NAME).exists():
        _write_null_text(enc, out)
    total = sum(sources[i][1] for i in todo)
    first_home: dict[str, int] = {}
    for i, shard in enumerate(plan["shards"]):
        for key in shard.get("keys", ()):
            first_home.setdefault(key, i)
    bar = tqdm(total=total, desc=f"export rank {rank}", unit="video", disable=not cfg.progress)
    for i in todo:
        name, expected = sources[i]
        n, skipped, warnings = _export_shard(
            enc, str(src / name), name, out / names[i], cfg.clip, bar,
            index=i, expected=expected, first_home=first_home,
        )  # fmt: skip
        report.written.append(out / names[i])
        report.samples += n
        report.skipped.update(skipped)
        report.warnings.update(warnings)
    bar.close()
    report.manifest = _finish(cfg, out, names, header)
    return report
