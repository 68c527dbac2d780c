"""The video loader: WebDataset shards -> batches of `(B, 3, T, H, W)` clips in [-1, 1].

Two modes over the same clip decoding (`cinemamba.latents.clips.decode_clip`):

- **resampled** (training, infinite): each rank draws shards with replacement from its own
  seeded generator and micro-batch `b` is a pure function of (seed, rank, b) — the stream of
  `cinemamba.latents.stream` — so the training engine resumes at any batch exactly. An
  optional shuffle buffer permutes samples within consecutive blocks of `shuffle` stream
  positions, seeded per block, which keeps that property.
- **bucketed** (resampled, with `buckets` set): each micro-batch holds clips of one bucket
  (height, width, frames) with that bucket's batch size (`cinemamba.data.buckets`); still a
  pure function of (seed, rank, b).
- **finite** (evaluation, one pass): shards are split by rank (`shards[rank::world_size]`)
  and then by DataLoader worker, as WebDataset's node and worker splitters do, so every
  sample is read exactly once across all ranks and workers.

Shards are named by a directory holding a shard set (`PREFIX.plan.json` from
`cinemamba shards` / `cinemamba synth`, which also gives the sample counts), brace patterns
(`train-{000000..000099}.tar`), comma-separated lists, or `pipe:` commands (object stores:
`pipe:aws s3 cp s3://bucket/train-000000.tar -`). Sample counts not known from a plan are
counted by reading each shard once when the loader is built.

Bad samples (unreadable shard, undecodable or empty video, missing caption or video, a video
shorter than the clip) are dropped with one warning each and counted by reason: every batch
carries its counts (`batch["skipped"]`, so they survive worker processes) and
`VideoLoader.skipped` sums them over the batches seen.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from braceexpand import braceexpand
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cinemamba.data.bucket_batches import bucket_probabilities, bucketed_micro_batches
from cinemamba.data.bucket_index import BucketIndex, index_raw_shards
from cinemamba.data.buckets import BucketConfig, LatentShape, bucket_clip, build_buckets
from cinemamba.latents.clips import ClipConfig, decode_clip, to_pixels
from cinemamba.latents.stream import (
    SampleStream,
    ShardList,
    _take,
    batch_loader,
    micro_batches,
    read_tar,
)

log = logging.getLogger(__name__)


@dataclass
class LoaderConfig:
    """What to read and how to cut it into batches.

    shards: a shard-set directory, brace pattern, comma-separated list or `pipe:` commands.
    clip: frames, stride or target fps, output size, crop (see `ClipConfig`).
    resampled: infinite training stream (True) or one finite pass (False).
    shuffle: shuffle-buffer size in samples (0: stream order).
    buckets: clip shapes by aspect ratio and length, each with its own batch size (resampled
        only; `batch_size` and the clip's size are then unused; see `BucketConfig`).
    """

    shards: str = ""
    clip: ClipConfig = field(default_factory=ClipConfig)
    batch_size: int = 8
    resampled: bool = True
    shuffle: int = 0
    seed: int = 0
    workers: int = 0
    uint8: bool = False  # keep clips uint8 (T, H, W, 3) per sample instead of [-1, 1] floats
    buckets: BucketConfig = field(default_factory=BucketConfig)


# ---------------------------------------------------------------------------- shard lists


def expand_urls(spec: str) -> list[str]:
    """Shard URLs of a spec: a directory (its shards, in order), or a comma-separated list
    of paths, brace patterns and `pipe:` commands."""
    path = Path(spec)
    if not spec.startswith("pipe:") and path.is_dir():
        urls = [str(p) for p in sorted(path.glob("*.tar"))]
        if not urls:
            raise FileNotFoundError(f"shard directory {spec!r} holds no .tar files")
        return urls
    urls = [u for part in spec.split(",") if part.strip() for u in braceexpand(part.strip())]
    if not urls:
        raise ValueError(f"no shard URLs in {spec!r}")
    missing = [
        u for u in urls if "://" not in u and not u.startswith("pipe:") and not Path(u).exists()
    ]
    if missing:
        raise FileNotFoundError(f"shard file(s) not found: {missing[:3]} (from {spec!r})")
    return urls


def _plan_counts(urls: list[str]) -> dict[str, int]:
    """Sample counts of local shards whose directory holds a `*.plan.json`."""
    counts: dict[str, int] = {}
    for directory in {str(Path(u).parent) for u in urls if not u.startswith("pipe:")}:
        for plan in Path(directory).glob("*.plan.json"):
            for shard in json.loads(plan.read_text())["shards"]:
                counts[str(Path(directory) / shard["name"])] = int(shard["samples"])
    return counts


def count_samples(url: str) -> int:
    """Number of readable samples in one shard (reads it once; a truncated shard counts the
    samples before the damage)."""
    n = 0
    try:
        for _ in read_tar(url):
            n += 1
    except Exception as err:  # an unreadable tail is reported, the readable part still used
        log.warning("shard %s unreadable after %d samples: %s", url, n, err)
    return n


def resolve_shards(spec: str, url_prefix: str = "") -> ShardList:
    """The shard URLs of `spec` with their sample counts (from plans, else by reading).

    With `url_prefix`, `spec` is a directory holding one `*.plan.json` (the shards may live
    elsewhere): the URLs are the prefix + each planned shard name, the counts the plan's.
    """
    if url_prefix:
        plans = sorted(Path(spec).glob("*.plan.json"))
        if len(plans) != 1:
            raise FileNotFoundError(
                f"{spec!r} must hold one *.plan.json to stream its shards from {url_prefix!r}; "
                f"found {[p.name for p in plans]}"
            )
        shards = json.loads(plans[0].read_text())["shards"]
        return ShardList(
            tuple(url_prefix + s["name"] for s in shards), tuple(int(s["samples"]) for s in shards)
        )
    urls = expand_urls(spec)
    known = _plan_counts(urls)
    return ShardList(tuple(urls), tuple(known.get(u, None) or count_samples(u) for u in urls))


# ------------------------------------------------------------------------------- shuffling


class ShuffledStream:
    """A `SampleStream` whose positions are permuted within blocks of `block` positions.

    Block k holds positions [k*block, (k+1)*block); its permutation is seeded by
    (seed, rank, k), so position p's sample is still a function of p alone.
    """

    def __init__(self, stream: SampleStream, block: int) -> None:
        self.stream, self.block = stream, block

    @property
    def skipped(self) -> Counter:
        """Counts of the underlying stream (unreadable shards)."""
        return self.stream.skipped

    @property
    def shards(self) -> ShardList:
        """The shard list of the underlying stream."""
        return self.stream.shards

    def reserve(self, batch: int) -> Iterator[tuple[int, dict[str, Any] | None]]:
        """Stand-ins for micro-batch `batch` (see `SampleStream.reserve`)."""
        return self.stream.reserve(batch)

    def __call__(self, start: int) -> Iterator[tuple[int, dict[str, Any] | None]]:
        """Yield (position, sample) from `start` on."""
        k = start // self.block
        reader = self.stream(k * self.block)
        while True:
            buf = [next(reader)[1] for _ in range(self.block)]
            rng = np.random.default_rng([self.stream.seed, self.stream.rank, k, 0x5F])
            order = rng.permutation(self.block)
            for i, j in enumerate(order):
                position = k * self.block + i
                if position >= start:
                    yield position, buf[j]
            k += 1


# --------------------------------------------------------------------------------- batches


def _pixels(frames: int, height: int, width: int) -> tuple[int, int, int]:
    """One token per pixel: the shape a bucket has without a VAE."""
    return frames, height, width


def _collate(items: list[dict[str, Any]], uint8: bool) -> dict[str, Any]:
    frames = torch.stack([it["frames"] for it in items])  # (B, T, H, W, 3) uint8
    return {
        "video": frames if uint8 else to_pixels(frames),  # (B, 3, T, H, W) in [-1, 1]
        "caption": [it["caption"] for it in items],
        "meta": [it["meta"] for it in items],
        "key": [it["key"] for it in items],
    }


class _FinitePass(IterableDataset):
    """One pass over this rank's shards, split again by DataLoader worker."""

    def __init__(self, loader: VideoLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        return self.loader._finite_batches(worker, workers)


class VideoLoader:
    """Batches of clips from WebDataset video shards; see the module docstring.

    Iterating gives dicts: `video` float `(B, 3, T, H, W)` in [-1, 1] (or uint8
    `(B, T, H, W, 3)` with `uint8=True`), `caption` list[str], `meta` list[dict] (the
    sample's KEY.json under "source", the clip selection under "clip"), `key` list[str] and
    `skipped` (bad samples dropped while making this batch, by reason); with buckets also
    `bucket` (height, width, frames).

    `latent_shape(frames, height, width)` and `patch` define a bucket's tokens (default: one
    token per pixel); the VAE task passes its VAE's, the backbone task the VAE's and its patch.
    """

    def __init__(
        self,
        cfg: LoaderConfig,
        rank: int = 0,
        world_size: int = 1,
        *,
        latent_shape: LatentShape | None = None,
        patch: int = 1,
    ) -> None:
        cfg.clip.validate()
        if cfg.batch_size < 1 or cfg.shuffle < 0 or cfg.workers < 0:
            raise ValueError(
                f"batch_size must be >= 1, shuffle and workers >= 0; got {cfg.batch_size}, "
                f"{cfg.shuffle}, {cfg.workers}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.shards = resolve_shards(cfg.shards)
        self.skipped: Counter = Counter()
        self.index: BucketIndex | None = None
        if cfg.buckets.enabled:
            if not cfg.resampled:
                raise ValueError("buckets need the resampled stream (resampled=True)")
            buckets = build_buckets(cfg.buckets, latent_shape or _pixels, patch)
            self.index = index_raw_shards(self.shards, buckets, cfg.clip)
            self.probs = bucket_probabilities(cfg.buckets, buckets, self.index.sizes())
            self.skipped.update(self.index.skipped)  # left out of every bucket, counted once

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.batches()

    def batches(self, start_batch: int = 0) -> Iterator[dict[str, Any]]:
        """Batches from `start_batch` on (resampled mode: exactly the batches a run that
        started at 0 would have produced from there; finite mode: must be 0)."""
        if self.cfg.resampled:

            def make(every: int, phase: int) -> Iterator[dict[str, Any]]:
                return self._resampled(start_batch, every, phase)

            it = batch_loader(make, self.cfg.workers)
        else:
            if start_batch:
                raise ValueError("a finite pass always starts at batch 0")
            it = self._finite()
        for batch in it:
            self.skipped.update(batch["skipped"])
            if batch["key"]:  # a worker's last message may carry only skip counts
                yield batch

    # -- resampled ------------------------------------------------------------------------

    def _decode(self, sample: dict[str, Any], position: int) -> dict[str, Any]:
        # Finite positions are global (shard index, offset), so the clip a sample yields does
        # not depend on how shards were split over ranks; resampled positions are per rank.
        rank = self.rank if self.cfg.resampled else 0
        rng = np.random.default_rng([self.cfg.seed, rank, position])
        frames, caption, meta = decode_clip(sample, self.cfg.clip, rng)
        warnings = meta.pop("warnings", [])  # counted by `_take`; the sample is used
        return {"frames": frames, "caption": caption, "meta": meta, "key": sample["__key__"],
                "warnings": warnings}  # fmt: skip

    def _resampled(self, start_batch: int, every: int, phase: int) -> Iterator[dict[str, Any]]:
        if self.index is not None:
            yield from self._bucketed(start_batch, every, phase)
            return
        stream: Any = SampleStream(self.shards, self.cfg.seed, self.rank)
        if self.cfg.shuffle > 1:
            stream = ShuffledStream(stream, self.cfg.shuffle)
        for batch, skipped in micro_batches(
            stream,
            self._decode,
            lambda items, _b: _collate(items, self.cfg.uint8),
            batch_size=self.cfg.batch_size,
            start_batch=start_batch,
            every=every,
            phase=phase,
        ):
            batch["skipped"] = skipped
            yield batch

    def _bucketed(self, start_batch: int, every: int, phase: int) -> Iterator[dict[str, Any]]:
        assert self.index is not None
        index, fit = self.index, self.cfg.buckets.fit
        clips = [bucket_clip(b, self.cfg.clip, fit) for b in index.buckets]

        def decode(sample: dict[str, Any], position: int, k: int) -> dict[str, Any]:
            rng = np.random.default_rng([self.cfg.seed, self.rank, k, position, 0xB1])
            frames, caption, meta = decode_clip(sample, clips[k], rng)
            return {"frames": frames, "caption": caption, "key": sample["__key__"],
                    "warnings": meta.pop("warnings", []), "meta": meta}  # fmt: skip

        def collate(items: list[dict[str, Any]], _b: int, k: int) -> dict[str, Any]:
            batch = _collate(items, self.cfg.uint8)
            batch["bucket"] = index.buckets[k].shape
            return batch

        for batch, skipped in bucketed_micro_batches(
            index, self.probs, decode, collate, seed=self.cfg.seed, rank=self.rank,
            start_batch=start_batch, shuffle=self.cfg.shuffle, every=every, phase=phase,
        ):  # fmt: skip
            batch["skipped"] = skipped
            yield batch

    # -- finite ---------------------------------------------------------------------------

    def _finite(self) -> Iterator[dict[str, Any]]:
        if self.cfg.workers <= 0:
            return self._finite_batches(0, 1)
        return iter(DataLoader(_FinitePass(self), batch_size=None, num_workers=self.cfg.workers))

    def _finite_batches(self, worker: int, workers: int) -> Iterator[dict[str, Any]]:
        """This (rank, worker)'s share of shards, read once, as batches (the last may be short)."""
        mine = list(range(len(self.shards.urls)))[self.rank :: self.world_size][worker::workers]
        rng = np.random.default_rng([self.cfg.seed, self.rank, worker, 0xE7])
        buffer: list[tuple[int, dict[str, Any]]] = []
        items: list[dict[str, Any]] = []
        skipped: Counter = Counter()

        def samples() -> Iterator[tuple[int, dict[str, Any]]]:
            for index in mine:
                url = self.shards.urls[index]
                position = index << 32  # a per-sample seed that does not depend on the split
                read = 0
                try:
                    for sample in read_tar(url):
                        yield position, sample
                        position += 1
                        read += 1
                except Exception as err:  # truncated tar, vanished file, failed pipe
                    log.warning("shard %s unreadable after %d samples: %s", url, read, err)
                    skipped["unreadable_shard"] += 1
                # each sample the shard promised but did not deliver, counted once
                if read < self.shards.counts[index]:
                    skipped["missing"] += self.shards.counts[index] - read

        def emit() -> dict[str, Any]:
            nonlocal items, skipped
            batch = _collate(items, self.cfg.uint8)
            batch["skipped"] = dict(skipped)
            items, skipped = [], Counter()
            return batch

        for entry in samples():
            buffer.append(entry)
            if len(buffer) <= max(self.cfg.shuffle, 1) - 1:
                continue
            pick = int(rng.integers(len(buffer))) if self.cfg.shuffle > 1 else 0
            _take(self._decode, *buffer.pop(pick), items, skipped)
            if len(items) == self.cfg.batch_size:
                yield emit()
        rng.shuffle(buffer)
        for entry in buffer:
            _take(self._decode, *entry, items, skipped)
            if len(items) == self.cfg.batch_size:
                yield emit()
        if items:
            yield emit()
        elif skipped:  # counts of trailing bad samples still reach the caller
            yield {"video": None, "caption": [], "meta": [], "key": [], "skipped": dict(skipped)}
