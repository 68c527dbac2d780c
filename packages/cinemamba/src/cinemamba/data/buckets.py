"""Aspect-ratio and length buckets: every micro-batch holds clips of one (height, width, frames).

Real sets mix 16:9, 4:3, portrait and square videos of many lengths (issue 15). Squashing them
all to one size distorts them; buckets keep each video near its own shape instead:

- **Buckets** are listed (`buckets: [[height, width, frames], ...]`) or generated from aspect
  ratios, a pixel area and frame counts. Each has a batch size: given, or the largest that keeps
  `batch x tokens(bucket) <= tokens` (tokens: latent frames x latent height x latent width /
  patch^2 as the VAE and backbone define them), so every micro-batch costs about the same.
- **Assignment**: a video goes to the bucket of nearest aspect ratio (|log(w/h) difference|),
  then the longest clip its length allows, then the nearest area. A video too short for every
  bucket (or unreadable) has no bucket: it is counted and logged when the index is built.
- **Schedule**: micro-batch `b` of rank `r` draws its bucket from a generator seeded by
  (seed, r, b // BLOCK); bucket k holds its own resampled stream (`SampleStream` over only its
  samples), and the batch takes the next `batch_size(k)` positions of it. How many positions
  earlier batches took is a sum over the schedule (no reading), so micro-batch `b` is a pure
  function of (seed, rank, b): resuming at `b` opens one shard per bucket and skips ahead.
- **Probabilities**: "data" draws bucket k with probability proportional to
  samples(k) / batch_size(k), so every sample is seen equally often whatever its bucket;
  "uniform" draws buckets equally; "weights" takes one weight per bucket.

The index (which sample of which shard falls in which bucket) is built by reading every shard
once and probing each video's header; nothing is decoded.
"""

from __future__ import annotations

import functools
import io
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from cinemamba.data.bucket_config import FITS, SAMPLINGS, BucketConfig
from cinemamba.data.video import VideoDecodeError, VideoInfo, probe_video
from cinemamba.latents import format as fmt
from cinemamba.latents.clips import ClipChoice, ClipConfig, SampleError
from cinemamba.latents.dataset import LatentSet, crop_latents, noise_seed
from cinemamba.latents.stream import SampleStream, ShardList, batch_loader, fill_batch, read_tar

log = logging.getLogger(__name__)

BLOCK = 4096  # micro-batches per seeded schedule block


@dataclass(frozen=True)
class Bucket:
    """One clip shape and its micro-batch size."""

    height: int
    width: int
    frames: int
    batch_size: int
    tokens: int  # per sample

    @property
    def shape(self) -> tuple[int, int, int]:
        """(height, width, frames)."""
        return self.height, self.width, self.frames


LatentShape = Callable[[int, int, int], tuple[int, int, int]]


def config_latent_shape(config: Mapping[str, Any]) -> LatentShape:
    """`latent_shape(frames, height, width)` of a VAE from its recorded config (ours, or a
    diffusers adapter's with its `frame_step`), without loading it: what `VideoAutoencoder`
    and the adapters compute."""
    st, s = int(config["temporal_compression"]), int(config["spatial_compression"])
    step = int(config.get("frame_step", st))

    def shape(frames: int, height: int, width: int) -> tuple[int, int, int]:
        if frames < 1 or (frames - 1) % step or height % s or width % s:
            raise ValueError(f"this VAE needs 1 + {step}*k frames and sizes divisible by {s}")
        return 1 + (frames - 1) // st, height // s, width // s

    return shape


def build_buckets(cfg: BucketConfig, latent_shape: LatentShape, patch: int = 1) -> list[Bucket]:
    """The buckets of `cfg` with their batch sizes; `latent_shape(frames, height, width)` is the
    VAE's (it raises for a shape the VAE cannot take), `patch` the backbone's patch size.

    Raises ValueError naming the bad setting.
    """
    if cfg.sampling not in SAMPLINGS:
        raise ValueError(f"buckets.sampling must be one of {SAMPLINGS}, got {cfg.sampling!r}")
    if cfg.fit not in FITS:
        raise ValueError(f"buckets.fit must be one of {FITS}, got {cfg.fit!r}")
    if cfg.tokens < 0:
        raise ValueError(f"buckets.tokens must be >= 0, got {cfg.tokens}")
    if cfg.buckets and (cfg.aspects or cfg.area or cfg.frames):
        raise ValueError("give buckets.buckets or buckets.aspects/area/frames, not both")
    specs = [list(b) for b in cfg.buckets] if cfg.buckets else _generated(cfg, latent_shape, patch)
    out: list[Bucket] = []
    for spec in specs:
        if len(spec) not in (3, 4) or any(int(v) < 1 for v in spec):
            raise ValueError(
                f"buckets entry {spec} must be [height, width, frames] or [height, width, "
                "frames, batch_size] of positive integers"
            )
        height, width, frames = (int(v) for v in spec[:3])
        try:
            t, h, w = latent_shape(frames, height, width)
        except ValueError as err:
            raise ValueError(f"bucket {height}x{width}x{frames}: {err}") from None
        if h % patch or w % patch:
            raise ValueError(
                f"bucket {height}x{width}x{frames}: latent size {h}x{w} is not divisible by the "
                f"backbone's patch_size={patch}"
            )
        tokens = t * (h // patch) * (w // patch)
        if len(spec) == 4:
            batch = int(spec[3])
        elif not cfg.tokens:
            raise ValueError(
                f"bucket {height}x{width}x{frames} gives no batch size: set buckets.tokens "
                "(the token budget per micro-batch) or a 4th entry"
            )
        elif tokens > cfg.tokens:
            raise ValueError(
                f"bucket {height}x{width}x{frames} has {tokens} tokens per sample, over "
                f"buckets.tokens={cfg.tokens}: raise the budget or drop the bucket"
            )
        else:
            batch = cfg.tokens // tokens  # largest batch within the budget: memory never over
        out.append(Bucket(height, width, frames, batch, tokens))
    shapes = [b.shape for b in out]
    if len(set(shapes)) != len(shapes):
        raise ValueError(f"buckets list a shape twice: {sorted(shapes)}")
    if cfg.sampling == "weights" and (
        len(cfg.weights) != len(out) or any(w < 0 for w in cfg.weights) or sum(cfg.weights) <= 0
    ):
        raise ValueError(
            f"buckets.sampling=weights needs one weight >= 0 per bucket ({len(out)}), not all "
            f"zero; got {list(cfg.weights)}"
        )
    return out


def _generated(cfg: BucketConfig, latent_shape: LatentShape, patch: int) -> list[list[int]]:
    """[height, width, frames] per (aspect, frames): height x width about `area`, both multiples
    of the pixel size of one token (the VAE's spatial compression x patch)."""
    if cfg.area < 1 or not cfg.frames or any(a <= 0 for a in cfg.aspects):
        raise ValueError(
            "generated buckets need buckets.aspects (width / height, > 0), buckets.area (pixels "
            f"per frame) and buckets.frames; got {list(cfg.aspects)}, {cfg.area}, "
            f"{list(cfg.frames)}"
        )
    _, h1, _ = latent_shape(cfg.frames[0], 1 << 12, 1 << 12)
    step = ((1 << 12) // h1) * patch  # pixels per token side
    out = []
    for aspect in cfg.aspects:
        height = max(step, round(math.sqrt(cfg.area / aspect) / step) * step)
        width = max(step, round(math.sqrt(cfg.area * aspect) / step) * step)
        out += [[height, width, f] for f in cfg.frames]
    return out


def assign_bucket(buckets: Sequence[Bucket], height: int, width: int, frames: int) -> int | None:
    """Index of the bucket for a `height` x `width` video of `frames` usable frames (at the
    clip's stride): nearest aspect ratio, then the longest clip that fits, then the nearest
    area; None when no bucket's clip fits."""
    best, best_key = None, None
    for i, b in enumerate(buckets):
        if b.frames > frames:
            continue
        # rounded: buckets generated for one aspect ratio differ by their rounding to the
        # token grid, and must still count as the same ratio
        aspect = round(abs(math.log((b.width / b.height) / (width / height))), 2)
        area = abs(math.log((b.height * b.width) / (height * width)))
        key = (aspect, -b.frames, area)
        if best_key is None or key < best_key:
            best, best_key = i, key
    return best


def bucket_clip(bucket: Bucket, clip: ClipConfig, fit: str) -> ClipConfig:
    """The clip config that cuts a video to `bucket`'s shape (stride, fps and start of `clip`)."""
    crop = "none" if fit == "resize" else fit
    return ClipConfig(
        frames=bucket.frames, stride=clip.stride, fps=clip.fps, height=bucket.height,
        width=bucket.width, crop=crop, start=clip.start,
    )  # fmt: skip


def export_fit(cfg: BucketConfig, latent_shape: LatentShape, patch: int) -> ClipChoice:
    """The per-video clip choice of latent export with buckets: each video is cut to the
    height x width of its bucket (`assign_bucket`: nearest aspect ratio, then the longest
    window it fills, then the nearest area; `cfg.fit` crops or resizes), so the latent set
    holds exactly the latent sizes the training buckets take. `patch` is the backbone's patch
    size: generated sizes are rounded to its token grid as training rounds them (and `tokens`
    counts its tokens). Batch sizes do not matter here (a missing `tokens` is not an error).
    A video no bucket takes raises SampleError("no_bucket"), a counted skip."""
    budget = replace(cfg, tokens=cfg.tokens or 2**62) if cfg.buckets or cfg.aspects else cfg
    buckets = build_buckets(budget, latent_shape, patch)

    def choose(info: VideoInfo, clip: ClipConfig) -> ClipConfig:
        frames = usable_frames(info.frames, info.fps, clip)
        k = assign_bucket(buckets, info.height, info.width, frames)
        if k is None:
            raise SampleError(
                "no_bucket",
                f"{info.width}x{info.height} video of {frames} usable frames: no bucket's "
                f"window fits (buckets {[b.shape for b in buckets]})",
            )
        return bucket_clip(buckets[k], clip, cfg.fit)

    return choose


# ---------------------------------------------------------------------------- the index


@dataclass
class BucketIndex:
    """Which bucket each sample of each shard falls in (-1: none), and what was left out."""

    shards: ShardList
    buckets: list[Bucket]
    of: list[list[int]]  # per shard, per sample (read order): bucket index or -1
    skipped: Counter = field(default_factory=Counter)

    def sizes(self) -> list[int]:
        """Samples per bucket."""
        counts = Counter(k for shard in self.of for k in shard if k >= 0)
        return [counts[k] for k in range(len(self.buckets))]

    def sub_shards(self, k: int) -> tuple[ShardList, dict[str, frozenset[int]]]:
        """Bucket k's shards with their bucket-k counts, and each one's bucket-k offsets."""
        urls, counts, offsets = [], [], {}
        for url, shard in zip(self.shards.urls, self.of, strict=True):
            mine = frozenset(i for i, b in enumerate(shard) if b == k)
            if mine:
                urls.append(url)
                counts.append(len(mine))
                offsets[url] = mine
        return ShardList(tuple(urls), tuple(counts)), offsets


def usable_frames(frames: int, fps: float, clip: ClipConfig) -> int:
    """Frames a video of `frames` at `fps` gives at the clip's stride (or target fps)."""
    stride = clip.stride
    if clip.fps > 0 and fps > 0:
        stride = max(1, round(fps / clip.fps))
    return (frames - 1) // stride + 1 if frames > 0 else 0


def index_raw_shards(shards: ShardList, buckets: list[Bucket], clip: ClipConfig) -> BucketIndex:
    """Read every shard once, probe each video's header and assign it a bucket; samples left
    out are counted by reason ("no_video", "undecodable", "too_short", "unreadable_shard")."""
    return _index_shards(
        shards, buckets, lambda sample, skipped: _sample_bucket(sample, buckets, clip, skipped)
    )


def _index_shards(
    shards: ShardList, buckets: list[Bucket], assign: Callable[[dict[str, Any], Counter], int]
) -> BucketIndex:
    """Read every shard once and `assign(sample, skipped)` each sample a bucket index (-1 and
    a count in `skipped` for one left out); an unreadable rest of a shard is left out too."""
    of: list[list[int]] = []
    skipped: Counter = Counter()
    for url, expected in zip(shards.urls, shards.counts, strict=True):
        shard: list[int] = []
        try:
            for sample in read_tar(url):
                if len(shard) >= expected:
                    break
                shard.append(assign(sample, skipped))
        except Exception as err:  # truncated tar, vanished file, failed pipe
            log.warning(
                "bucket index: shard %s unreadable after %d samples: %s", url, len(shard), err
            )
            skipped["unreadable_shard"] += 1
        of.append(shard + [-1] * (expected - len(shard)))
    return _report(BucketIndex(shards, buckets, of, skipped))


def _report(index: BucketIndex) -> BucketIndex:
    """Log the samples per bucket and those left out; raise if no bucket holds any."""
    buckets, skipped, sizes = index.buckets, index.skipped, index.sizes()
    log.info("buckets: %s", ", ".join(f"{b.height}x{b.width}x{b.frames} (batch "
             f"{b.batch_size}): {n} samples" for b, n in zip(buckets, sizes, strict=True)))  # fmt: skip
    if skipped:
        log.warning("buckets: %d samples fit no bucket or could not be read (%s); they are "
                    "not trained on", sum(skipped.values()), dict(skipped))  # fmt: skip
    if not any(sizes):
        raise ValueError(f"no sample fits any bucket (left out: {dict(skipped)})")
    return index


def _sample_bucket(
    sample: dict[str, Any], buckets: list[Bucket], clip: ClipConfig, skipped: Counter
) -> int:
    if "mp4" not in sample:
        skipped["no_video"] += 1
        return -1
    try:
        info = probe_video(bytes(sample["mp4"]))
    except VideoDecodeError:
        skipped["undecodable"] += 1
        return -1
    k = assign_bucket(buckets, info.height, info.width, usable_frames(info.frames, info.fps, clip))
    if k is None:
        skipped["too_short"] += 1
        return -1
    return k


# ---------------------------------------------------------------------------- the schedule


def bucket_probabilities(cfg: BucketConfig, buckets: list[Bucket], sizes: list[int]) -> np.ndarray:
    """Probability of each bucket per micro-batch (0 for a bucket without samples)."""
    if cfg.sampling == "data":
        p = np.array([n / b.batch_size for b, n in zip(buckets, sizes, strict=True)])
    elif cfg.sampling == "uniform":
        p = np.ones(len(buckets))
    else:
        p = np.array(cfg.weights, dtype=float)
    empty = [b.shape for b, n, w in zip(buckets, sizes, p, strict=True) if n == 0 and w > 0]
    if empty:
        log.warning("buckets %s hold no samples and are never drawn", empty)
    p = np.where(np.array(sizes) > 0, p, 0.0)
    if p.sum() <= 0:
        raise ValueError("every bucket with samples has weight 0")
    return p / p.sum()


class BucketSchedule:
    """The bucket of each micro-batch of a rank: block j of `BLOCK` micro-batches is drawn at
    once from a generator seeded by (seed, rank, j)."""

    def __init__(self, probs: np.ndarray, seed: int, rank: int) -> None:
        self.probs, self.seed, self.rank = probs, seed, rank
        self._last: tuple[int, np.ndarray] | None = None  # the block read last

    def block(self, j: int) -> np.ndarray:
        """Buckets of micro-batches [j * BLOCK, (j + 1) * BLOCK)."""
        if self._last is None or self._last[0] != j:
            rng = np.random.default_rng([self.seed, self.rank, j, 0xB0C])
            self._last = (j, rng.choice(len(self.probs), size=BLOCK, p=self.probs))
        return self._last[1]

    def bucket(self, b: int) -> int:
        """The bucket of micro-batch b."""
        j, i = divmod(b, BLOCK)
        return int(self.block(j)[i])

    def before(self, b: int) -> np.ndarray:
        """Micro-batches before b per bucket (a count over the schedule; nothing is read)."""
        j, i = divmod(b, BLOCK)
        n = len(self.probs)
        counts = np.bincount(self.block(j)[:i], minlength=n)
        for jj in range(j):
            counts += np.bincount(self.block(jj), minlength=n)
        return counts


def bucketed_micro_batches(
    index: BucketIndex,
    probs: np.ndarray,
    decode: Callable[[dict[str, Any], int, int], dict[str, Any]],
    collate: Callable[[list[dict[str, Any]], int, int], Any],
    *,
    seed: int,
    rank: int,
    start_batch: int,
    shuffle: int = 0,
    every: int = 1,
    phase: int = 0,
) -> Iterator[tuple[Any, dict[str, int]]]:
    """(micro-batch, skipped counts) for `b = start_batch + phase, ... every` (one worker's
    share): each from one bucket, a pure function of (seed, rank, b); see the module docstring.

    `decode(sample, position, k)` decodes a sample of bucket k (position: in k's stream);
    `collate(items, b, k)` makes the batch. Stand-ins for bad samples come from the same
    bucket's stream (`SampleStream.reserve`), so a batch never mixes shapes.
    """
    schedule = BucketSchedule(probs, seed, rank)
    streams: dict[int, SampleStream] = {}
    readers: dict[int, tuple[int, Iterator]] = {}  # k -> (its next position, reader)
    b = start_batch + phase
    done = schedule.before(b)  # then kept up to date batch by batch
    while True:
        k = schedule.bucket(b)
        bucket = index.buckets[k]
        if k not in streams:
            sub, offsets = index.sub_shards(k)
            stream_seed = int(np.random.default_rng([seed, k, 0xB5]).integers(2**62))
            streams[k] = SampleStream(
                sub, stream_seed, rank, window=shuffle, reader=functools.partial(_only, offsets)
            )
        first = int(done[k]) * bucket.batch_size
        if k not in readers or readers[k][0] > first:
            readers[k] = (first, streams[k](first))
        reader = readers[k][1]
        items, skipped = fill_batch(
            streams[k], reader, lambda sample, pos, k=k: decode(sample, pos, k), b, first,
            bucket.batch_size,
        )  # fmt: skip
        readers[k] = (first + bucket.batch_size, reader)
        yield collate(items, b, k), dict(skipped)
        for other in range(b, b + every):  # this batch and the other workers' until the next
            done[schedule.bucket(other)] += 1
        b += every


def _only(offsets: dict[str, frozenset[int]], url: str) -> Iterator[dict[str, Any]]:
    """The samples of shard `url` at `offsets[url]` (one bucket's), in read order."""
    keep = offsets[url]
    for i, sample in enumerate(read_tar(url)):
        if i in keep:
            yield sample


# ---------------------------------------------------------------------------- latent shards


def npy_shape(data: bytes) -> tuple[int, ...]:
    """The shape in a `.npy` header (the array itself is not read)."""
    f = io.BytesIO(data)
    version = np.lib.format.read_magic(f)
    read = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    if version not in read:
        raise ValueError(f".npy version {version} is not supported")
    return tuple(read[version](f)[0])


def assign_latent_bucket(
    buckets: Sequence[Bucket], latent_shape: LatentShape, t: int, h: int, w: int
) -> int | None:
    """Index of the bucket for a stored latent sequence `(C, t, h, w)`: latents are not resized,
    so the bucket's latent size must be h x w; of those, the longest window that fits t."""
    best, best_t = None, 0
    for i, b in enumerate(buckets):
        bt, bh, bw = latent_shape(b.frames, b.height, b.width)
        if (bh, bw) == (h, w) and best_t < bt <= t:
            best, best_t = i, bt
    return best


def index_latent_shards(
    shards: ShardList, buckets: list[Bucket], latent_shape: LatentShape
) -> BucketIndex:
    """Read every latent shard once, take each sample's latent shape from its `.npy` header and
    assign it a bucket; left out, by reason: "bad_latent", "no_bucket" (no bucket of its latent
    size with a window it can fill), "unreadable_shard"."""

    def assign(sample: dict[str, Any], skipped: Counter) -> int:
        try:
            shape = npy_shape(bytes(sample["latent.npy"]))
            if len(shape) != 4:
                raise ValueError(f"latent shape {shape} is not (C, t, h, w)")
        except (KeyError, ValueError) as err:
            log.warning("bucket index: sample %s: %s", sample.get("__key__"), err)
            skipped["bad_latent"] += 1
            return -1
        k = assign_latent_bucket(buckets, latent_shape, *shape[1:])
        if k is None:
            skipped["no_bucket"] += 1
        return -1 if k is None else k

    return _index_shards(shards, buckets, assign)


def bucketed_latent_batches(
    lset: LatentSet,
    cfg: BucketConfig,
    patch: int,
    *,
    seed: int,
    rank: int,
    start_batch: int,
    crop: str = "random",
    workers: int = 0,
    shuffle: int = 0,
) -> tuple[Counter, Iterator[tuple[dict[str, torch.Tensor], dict[str, int]]]]:
    """(samples left out of every bucket, micro-batches from `start_batch` on) of a latent set:
    each micro-batch one bucket, its windows `latent_shape(bucket)[0]` latent frames long from
    a start seeded by (seed, rank, bucket, position) (`crop`: "random" or "first"); the batch
    dict is `latent_batches`'. The VAE's latent shape comes from the set's manifest."""
    latent_shape = config_latent_shape(lset.manifest["vae"]["config"])
    buckets = build_buckets(cfg, latent_shape, patch)
    index = index_latent_shards(lset.shards, buckets, latent_shape)
    probs = bucket_probabilities(cfg, buckets, index.sizes())
    windows = [latent_shape(b.frames, b.height, b.width)[0] for b in buckets]

    def decode(sample: dict[str, Any], position: int, k: int) -> dict[str, torch.Tensor]:
        item = fmt.decode_sample(sample)
        rng = np.random.default_rng([seed, rank, k, position, 3])
        item["latents"] = crop_latents(item["latents"], windows[k], crop, rng, sample["__key__"])
        return item

    def collate(items: list[dict[str, torch.Tensor]], b: int, _k: int) -> dict[str, torch.Tensor]:
        batch = {name: torch.stack([it[name] for it in items]) for name in items[0]}
        batch["noise_seed"] = torch.tensor(noise_seed(seed, rank, b), dtype=torch.int64)
        return batch

    def make(every: int, phase: int) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, int]]]:
        return bucketed_micro_batches(
            index, probs, decode, collate, seed=seed, rank=rank, start_batch=start_batch,
            shuffle=shuffle, every=every, phase=phase,
        )  # fmt: skip

    return index.skipped, batch_loader(make, workers)
