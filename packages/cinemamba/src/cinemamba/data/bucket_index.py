"""Which sample of which shard falls in which bucket: the index the bucketed loaders draw from.

Built by reading every shard once: raw videos by probing each one's header
(`index_raw_shards`), latent samples by their `.npy` header (`index_latent_shards`); nothing
is decoded. Samples no bucket takes are counted by reason and logged once. The buckets
themselves are `cinemamba.data.buckets`.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cinemamba.data.buckets import Bucket, LatentShape, assign_bucket, usable_frames
from cinemamba.data.video import VideoDecodeError, probe_video
from cinemamba.latents.clips import ClipConfig
from cinemamba.latents.stream import ShardList, read_tar

log = logging.getLogger(__name__)


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
