"""Bucketed micro-batches: a seeded schedule picks each micro-batch's bucket, and the batch
takes that bucket's next samples, so micro-batch `b` of rank `r` is a pure function of
(seed, r, b) and a resume skips ahead without reading (`cinemamba.data.buckets` explains the
scheme; `cinemamba.data.bucket_index` says which sample is in which bucket).
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from cinemamba.data.bucket_config import BucketConfig
from cinemamba.data.bucket_index import BucketIndex, index_latent_shards
from cinemamba.data.buckets import Bucket, build_buckets, config_latent_shape
from cinemamba.latents import format as fmt
from cinemamba.latents.dataset import LatentSet, crop_latents, noise_seed
from cinemamba.latents.stream import SampleStream, batch_loader, fill_batch, read_tar

log = logging.getLogger(__name__)


BLOCK = 4096  # micro-batches per seeded schedule block


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
