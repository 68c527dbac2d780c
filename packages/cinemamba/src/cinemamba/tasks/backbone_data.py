"""Raw video shards as backbone micro-batches: uint8 clips and captions, one seed per batch.

The latent source needs no code here (`cinemamba.latents.dataset.latent_batches`,
`cinemamba.data.bucket_batches.bucketed_latent_batches`); raw shards are decoded to clips here and
encoded by the frozen VAE and text encoder inside the task's `loss`. Every random choice is a
function of (seed, rank, stream position), so a resumed run reads the same clips.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from cinemamba.config import ConfigError
from cinemamba.data.bucket_batches import bucket_probabilities, bucketed_micro_batches
from cinemamba.data.bucket_index import index_raw_shards
from cinemamba.data.buckets import Bucket, bucket_clip
from cinemamba.data.loader import resolve_shards
from cinemamba.latents.clips import decode_clip
from cinemamba.latents.dataset import noise_seed
from cinemamba.latents.stream import SampleStream, ShardList, batch_loader, micro_batches
from cinemamba.tasks.backbone_config import BackboneDataConfig
from cinemamba.train import DataSpec


def _collate_raw(items: list[dict], seed: int, rank: int, b: int) -> dict[str, Any]:
    shapes = {tuple(it["frames"].shape) for it in items}
    if len(shapes) > 1:
        raise ValueError(
            f"clips of different sizes {sorted(shapes)} in one batch; set task.data.clip.height"
            " and width to resize them to one size"
        )
    return {
        "frames": torch.stack([it["frames"] for it in items]),  # (B, T, H, W, 3) uint8
        "captions": [it["caption"] for it in items],
        "noise_seed": torch.tensor(noise_seed(seed, rank, b), dtype=torch.int64),
    }


def raw_batches(
    data: BackboneDataConfig,
    spec: DataSpec,
    buckets: Callable[[], list[Bucket]],
    counts: Counter,
) -> Iterator[tuple[dict[str, Any], dict[str, int]]]:
    """This rank's micro-batches of the raw shard set at `data.path`; with buckets on, each
    from one of `buckets()` (called only then: it may load the VAE), and the samples no
    bucket takes are counted in `counts`."""
    try:
        # A raw shard set: its plan names the shards (streamed from url_prefix if set).
        shards = resolve_shards(data.path, url_prefix=data.url_prefix or f"{data.path}/")
    except FileNotFoundError as err:
        raise ConfigError(f"task.data.path: {err} (a raw shard set)") from None
    seed, rank = spec.seed, spec.rank
    if data.buckets.enabled:
        return bucketed_raw_batches(data, spec, shards, buckets(), counts)

    def decode(sample: dict, position: int) -> dict:
        rng = np.random.default_rng([seed, rank, position, 3])
        frames, caption, meta = decode_clip(sample, data.clip, rng)
        # counted by the batcher (e.g. "aspect_squashed"); the sample is still used
        return {"frames": frames, "caption": caption, "warnings": meta.get("warnings", [])}

    def make(every: int, phase: int):
        return micro_batches(
            SampleStream(shards, seed, rank, window=data.shuffle), decode,
            lambda items, b: _collate_raw(items, seed, rank, b),
            batch_size=spec.micro_batch_size, start_batch=spec.start_batch,
            every=every, phase=phase,
        )  # fmt: skip

    return batch_loader(make, data.workers)


def bucketed_raw_batches(
    data: BackboneDataConfig,
    spec: DataSpec,
    shards: ShardList,
    buckets: list[Bucket],
    counts: Counter,
) -> Iterator[tuple[dict[str, Any], dict[str, int]]]:
    """Raw micro-batches each from one bucket, with that bucket's batch size."""
    seed, rank = spec.seed, spec.rank
    index = index_raw_shards(shards, buckets, data.clip)
    counts.update(index.skipped)  # samples no bucket takes, counted once
    probs = bucket_probabilities(data.buckets, index.buckets, index.sizes())
    clips = [bucket_clip(b, data.clip, data.buckets.fit) for b in index.buckets]

    def decode(sample: dict, position: int, k: int) -> dict:
        rng = np.random.default_rng([seed, rank, k, position, 3])
        frames, caption, meta = decode_clip(sample, clips[k], rng)
        return {"frames": frames, "caption": caption, "warnings": meta.get("warnings", [])}

    def make(every: int, phase: int):
        return bucketed_micro_batches(
            index, probs, decode, lambda items, b, _k: _collate_raw(items, seed, rank, b),
            seed=seed, rank=rank, start_batch=spec.start_batch, shuffle=data.shuffle,
            every=every, phase=phase,
        )  # fmt: skip

    return batch_loader(make, data.workers)
