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
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from safetensors.torch import save_file
from tqdm.auto import tqdm

from cinemamba.data.bucket_config import BucketConfig
from cinemamba.latents import format as fmt
from cinemamba.latents.clips import (
    EXPORT_STARTS,
    ClipConfig,
    SampleError,
    WholeVideo,
    decode_clip,
    decode_whole,
    to_pixels,
)
from cinemamba.latents.lock import export_claim
from cinemamba.latents.stream import read_tar
from cinemamba_conditioning import TextEncoderConfig, build_text_encoder
from cinemamba_vae import load_vae

log = logging.getLogger(__name__)

EXPORT_HEADER_NAME = "export.json"  # the settings of an export in progress
WHOLE_CHUNK = 64  # pixel frames decoded and encoded at a time in whole-video mode (default)


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


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class _Encoders:
    """The frozen VAE and text encoder, with their identities."""

    def __init__(self, cfg: ExportConfig) -> None:
        self.device = _device(cfg.device)
        self.vae = load_vae(cfg.vae).to(self.device).eval()
        self.vae.requires_grad_(False)
        self.vae_identity = fmt.vae_identity(cfg.vae)
        self.text = build_text_encoder(cfg.text_encoder).to(self.device)
        self.chunk_frames = cfg.chunk_frames or None
        # the VAE's own frame rule: 1 + 4k for ours and Wan, 1 + 8k for CogVideoX and LTX
        self.frame_step = getattr(
            self.vae.config, "frame_step", self.vae.config.temporal_compression
        )
        # Per-video clip choice (bucket size) or None. Imported here: the bucket sampler
        # imports the latents package, which imports this module.
        from cinemamba.data.buckets import export_fit

        self.fit = (
            export_fit(cfg.buckets, self.vae.latent_shape, cfg.patch_size)
            if cfg.buckets.enabled
            else None
        )

    @torch.no_grad()
    def encode(self, video: torch.Tensor, caption: str) -> tuple[torch.Tensor, Any]:
        """Latents `(C, t, h, w)` of one clip `(3, T, H, W)`, and its caption's embedding."""
        latents = self.vae.encode(
            video[None].to(self.device), sample=False, chunk_frames=self.chunk_frames
        )[0]
        return latents, self.text.encode([caption])

    @torch.no_grad()
    def encode_whole(self, video: WholeVideo) -> tuple[torch.Tensor, Any, int]:
        """Latents `(C, t, h, w)` of every frame of `video`, its caption's embedding, and the
        pixel frames encoded (fewer than planned when the video ends before its header says).

        The chunks go through the VAE's `encode_stream`: our VAE and diffusers' Wan hold one
        chunk of pixels at a time (flat memory in length); the other diffusers classes gather
        the chunks for one `encode` call (docs/latents.md).
        """

        def pixels():
            for chunk in video.chunks:
                yield to_pixels(chunk.to(self.device))[None]  # (1, 3, k, H, W)

        parts = [z[0].cpu() for z in self.vae.encode_stream(pixels())]
        if not parts:
            raise SampleError("undecodable", "no frame of the video could be decoded")
        latents = torch.cat(parts, dim=1)
        frames = 1 + self.vae.config.temporal_compression * (latents.shape[1] - 1)
        return latents, self.text.encode([video.caption]), frames


def _export_shard(
    enc: _Encoders,
    src_url: str,
    src_name: str,
    dst: Path,
    clip: ClipConfig,
    bar,
    *,
    index: int = 0,
    expected: int | None = None,
    first_home: Mapping[str, int] | None = None,
) -> tuple[int, Counter]:
    """Write one latent shard (tmp name, stats sidecar, rename); returns (samples, skipped,
    warnings): counts by reason of samples left out, and of samples exported with a warning.

    `expected` is the source plan's sample count (samples it promised but the tar did not
    deliver are counted as "missing"); `first_home` maps each planned key to the first shard
    that holds it, so a key repeated later in the plan is exported once (issue 14).
    """
    skipped: Counter = Counter()
    warnings: Counter = Counter()
    seen_keys: set[str] = set()
    read = 0  # samples the source tar delivered (good or bad)
    error = ""
    channels = enc.vae.config.latent_channels
    s1 = np.zeros(channels)
    s2 = np.zeros(channels)
    count = 0  # latent positions per channel
    written = 0
    lengths = [2**62, 0, 0]  # latent frames per sample: min, max, total
    tmp = dst.with_name(dst.name + ".tmp")
    rng = np.random.default_rng(0)  # unused for start="first"; decode_clip takes one
    with open(tmp, "wb") as fh:
        writer = wds.TarWriter(fh, encoder=False, mtime=0.0)
        try:
            for sample in read_tar(src_url):
                key = sample.get("__key__")
                read += 1
                if key in seen_keys or (first_home or {}).get(key, index) < index:
                    skipped["duplicate_key"] += 1
                    log.warning("skipping %s in %s: duplicate_key (exported once)", key, src_name)
                    bar.update()
                    continue
                seen_keys.add(key)
                try:
                    latents, text, caption, meta = _encode_sample(enc, sample, clip, rng)
                except SampleError as err:
                    skipped[err.reason] += 1
                    log.warning("skipping %s: %s", key, err)
                    bar.update()
                    continue
                except ValueError as err:  # e.g. a frame size the VAE cannot take
                    skipped["unencodable"] += 1
                    log.warning("skipping %s: %s", key, err)
                    bar.update()
                    continue
                warnings.update(meta.pop("warnings", ()))  # the sample is still exported
                if not torch.isfinite(latents).all():
                    skipped["nonfinite_latents"] += 1
                    log.warning("skipping %s: the VAE produced non-finite latents", key)
                    bar.update()
                    continue
                z = latents.double().cpu()
                s1 += z.sum(dim=(1, 2, 3)).numpy()
                s2 += z.pow(2).sum(dim=(1, 2, 3)).numpy()
                count += z[0].numel()
                t = int(latents.shape[1])
                lengths = [min(lengths[0], t), max(lengths[1], t), lengths[2] + t]
                meta = {**meta, "key": key, "source_shard": src_name,
                        "latent_shape": list(latents.shape)}  # fmt: skip
                writer.write(
                    fmt.sample_entries(
                        key, latents, text.tokens[0], text.mask[0], text.pooled[0], caption, meta
                    )
                )
                written += 1
                bar.update()
        except (OSError, ValueError, EOFError, tarfile.TarError) as err:
            # A truncated or unreadable source shard: keep what was read, count the rest
            # below, and finish the shard, so a re-run does not crash at the same place.
            error = f"{type(err).__name__}: {err}"
            log.warning("source shard %s unreadable after %d samples: %s", src_url, read, error)
        finally:
            # Also on an interrupt: the .tmp stays unfinished, but no writer is left to flush
            # into a closed file at garbage collection.
            writer.close()
    incomplete = None
    if error or (expected is not None and read < expected):
        lost = max(0, (expected or 0) - read)
        if lost:
            skipped["missing"] += lost
            bar.update(lost)
        incomplete = {"source": src_name, "expected": expected, "read": read,
                      "error": error or "the tar ends before its planned samples"}  # fmt: skip
        log.warning("source shard %s is incomplete: %d of %s planned samples read (%s)",
                    src_name, read, expected, incomplete["error"])  # fmt: skip
    stats = {"samples": written, "skipped": dict(skipped), "warnings": dict(warnings),
             "count": count, "latent_frames": _lengths(lengths, written),
             "sum": s1.tolist(), "sumsq": s2.tolist(), "incomplete": incomplete}  # fmt: skip
    side = dst.with_name(dst.name + fmt.STATS_SUFFIX)
    side_tmp = side.with_name(side.name + ".tmp")
    side_tmp.write_text(json.dumps(stats))
    side_tmp.replace(side)
    tmp.replace(dst)  # last: the shard counts as done only once everything is in place
    return written, skipped, warnings


def _encode_sample(
    enc: _Encoders, sample: dict[str, Any], clip: ClipConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, Any, str, dict[str, Any]]:
    """(latents `(C, t, h, w)`, text embedding, caption, metadata) of one raw sample, as
    `clip.start` asks: every frame ("whole") or the first clip ("first").

    The metadata records the latent frames and the pixel frames encoded (`clip.frames`); for a
    whole video also their frame rate (`fps`) and the video's own frame count
    (`source_frames`). Raises SampleError / ValueError for bad input.
    """
    if clip.start == "whole":
        video = decode_whole(sample, clip, rng, frame_step=enc.frame_step,
                             chunk=enc.chunk_frames or WHOLE_CHUNK, fit=enc.fit)  # fmt: skip
        latents, text, frames = enc.encode_whole(video)
        meta = video.meta
        if frames < video.frames:
            # The header promised more frames than the stream holds: keep what was decoded.
            meta.setdefault("warnings", []).append("fewer_frames_than_header")
        meta["clip"]["frames"] = frames
        meta.update(fps=video.fps, source_frames=video.source_frames)
        caption = video.caption
    else:
        pixels, caption, meta = decode_clip(sample, clip, rng, fit=enc.fit)
        latents, text = enc.encode(to_pixels(pixels), caption)
    meta["latent_frames"] = int(latents.shape[1])
    return latents, text, caption, meta


def _lengths(lengths: list[int], samples: int) -> dict[str, int]:
    """Per-sample latent frame counts of a shard: min, max, total (0s when empty)."""
    if not samples:
        return {"min": 0, "max": 0, "total": 0}
    return {"min": lengths[0], "max": lengths[1], "total": lengths[2]}


def _write_null_text(enc: _Encoders, out: Path) -> None:
    null = enc.text.null(1)
    tmp = out / (fmt.NULL_TEXT_NAME + ".tmp")
    save_file(
        {
            "text": null.tokens[0].cpu().contiguous(),
            "text_mask": null.mask[0].cpu().to(torch.uint8),
            "pooled": null.pooled[0].cpu().contiguous(),
        },  # fmt: skip
        str(tmp),
    )
    tmp.replace(out / fmt.NULL_TEXT_NAME)


def _finish(cfg: ExportConfig, out: Path, names: list[str], header: dict) -> Path | None:
    """Write the manifest if every shard is complete (any process may; the content is the same)."""
    shards, skipped, warnings, incomplete = [], Counter(), Counter(), []
    s1 = s2 = None
    count = 0
    lengths = []
    for name in names:
        side = out / (name + fmt.STATS_SUFFIX)
        if not (out / name).exists() or not side.exists():
            return None
        st = json.loads(side.read_text())
        shards.append({"name": name, "samples": st["samples"], "skipped": st["skipped"]})
        skipped.update(st["skipped"])
        warnings.update(st.get("warnings", {}))
        if st.get("incomplete"):
            incomplete.append(st["incomplete"])
        s1 = np.array(st["sum"]) if s1 is None else s1 + np.array(st["sum"])
        s2 = np.array(st["sumsq"]) if s2 is None else s2 + np.array(st["sumsq"])
        count += st["count"]
        if st.get("samples") and "latent_frames" in st:
            lengths.append(st["latent_frames"])
    if count == 0:
        raise ValueError(f"no usable samples in {cfg.input!r} (skipped: {dict(skipped)})")
    mean = s1 / count
    std = np.sqrt(np.maximum(s2 / count - mean**2, 0.0))
    manifest = {
        **header,
        "shards": shards,
        "samples": sum(s["samples"] for s in shards),
        "skipped": dict(skipped),
        "warnings": dict(warnings),  # exported samples whose KEY.json disagreed with the video
        "incomplete_sources": incomplete,  # source shards that ended early (truncated tars)
        # latent frames per sample over the set: the longest training window every sample
        # can give is `min` (longer windows skip the shorter samples)
        "latent_frames": {
            "min": min((x["min"] for x in lengths), default=0),
            "max": max((x["max"] for x in lengths), default=0),
            "total": sum(x["total"] for x in lengths),
        },
        # Statistics of the exported (already normalised) latents: ~0 / ~1 when the VAE's
        # latent_mean/latent_std fit this data; far off means the VAE stats need refitting.
        "latent_stats": {"mean": mean.tolist(), "std": std.tolist(), "count": count},
    }
    path = out / fmt.MANIFEST_NAME
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(path)
    return path


def _check_header(out: Path, header: dict) -> None:
    """Record the export settings once; a re-run with other encoders or clips is refused, so
    one directory never mixes shards made two ways."""
    path = out / EXPORT_HEADER_NAME
    if not path.exists():
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(header, indent=1))
        tmp.replace(path)
        return
    prev = json.loads(path.read_text())
    for part, what in (("vae", "identity"), ("text_encoder", "identity")):
        if prev[part][what] != header[part][what]:
            raise ValueError(
                f"{out} holds latents made with {part} {prev[part][what]!r}, not "
                f"{header[part][what]!r}; export to a new directory"
            )
    if prev["clip"] != header["clip"] or prev["source"]["input"] != header["source"]["input"]:
        raise ValueError(
            f"{out} holds latents of clips {prev['clip']} from {prev['source']['input']!r}; "
            f"this export asks for {header['clip']} from {header['source']['input']!r}; "
            "export to a new directory"
        )


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
