"""Reading latent shard sets for training: identity checks, then a deterministic batch stream."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cinemamba.latents import format as fmt
from cinemamba.latents.clips import SampleError
from cinemamba.latents.stream import SampleStream, ShardList, batch_loader, micro_batches

log = logging.getLogger(__name__)

CROPS = ("random", "first")


@dataclass
class LatentSet:
    """An opened, complete latent shard set."""

    directory: Path
    manifest: dict[str, Any]
    shards: ShardList
    null_text: dict[str, torch.Tensor]  # tokens (L, D), mask (L,), pooled (P,)

    @property
    def vae_identity(self) -> str:
        """Identity of the VAE the latents were made with."""
        return self.manifest["vae"]["identity"]

    @property
    def text_identity(self) -> str:
        """Identity of the text encoder the embeddings were made with."""
        return self.manifest["text_encoder"]["identity"]


def open_latent_set(
    directory: str | Path,
    *,
    vae: str | None = None,
    text_encoder: Any = None,
    url_prefix: str = "",
) -> LatentSet:
    """Open a latent shard set; refuse it if made by another VAE / text encoder than named
    (`vae`: a `vae_identity`; `text_encoder`: an identity or a `TextEncoderConfig`).

    `url_prefix` streams the shards from elsewhere (`pipe:aws s3 cp s3://bucket/lat/`, an http
    URL, ...) while the manifest is read from `directory`.
    """
    directory = Path(directory)
    manifest = fmt.read_manifest(directory)
    fmt.check_identity(manifest, directory, vae=vae, text_encoder=text_encoder)
    names = [s["name"] for s in manifest["shards"]]
    counts = [int(s["samples"]) for s in manifest["shards"]]
    if sum(counts) == 0:
        raise fmt.LatentFormatError(f"latent shard set {str(directory)!r} holds no samples")
    base = url_prefix or f"{directory}/"
    urls = tuple(base + name for name in names)
    if not url_prefix:
        missing = [n for n in names if not (directory / n).is_file()]
        if missing:
            raise fmt.LatentFormatError(f"{directory} lacks shards {missing[:3]} of its manifest")
    return LatentSet(
        directory, manifest, ShardList(urls, tuple(counts)), fmt.load_null_text(directory)
    )


def noise_seed(seed: int, rank: int, batch: int) -> int:
    """The seed of micro-batch `batch` of `rank`'s noise: the same for any data source."""
    return int(np.random.default_rng([seed, rank, batch, 7]).integers(2**62))


def window_start(total: int, window: int, crop: str, rng: np.random.Generator) -> int:
    """First frame of a `window`-frame window of a `total`-frame sequence: 0 (`crop="first"`)
    or uniform over the `total - window + 1` valid starts, drawn from `rng`."""
    return 0 if crop == "first" else int(rng.integers(total - window + 1))


def check_window(manifest: dict[str, Any], frames: int, directory: str | Path) -> None:
    """Refuse a training window longer than every sequence of a latent set (LatentFormatError
    naming both); log how the shorter sequences are handled when only some are shorter.
    Sets exported before whole-video export (no `latent_frames` record) are not checked."""
    lengths = manifest.get("latent_frames")
    if frames <= 0 or not lengths or not lengths.get("max"):
        return
    if frames > lengths["max"]:
        raise fmt.LatentFormatError(
            f"task.data.latent_frames={frames} is longer than every latent sequence in "
            f"{str(directory)!r} (the longest has {lengths['max']} latent frames)"
        )
    if frames > lengths["min"]:
        log.warning(
            "task.data.latent_frames=%d: latent sequences in %s are %d to %d frames long; "
            "those shorter than the window are skipped (counted as data/skipped_"
            "shorter_than_window)", frames, directory, lengths["min"], lengths["max"],
        )  # fmt: skip


def crop_latents(
    latents: torch.Tensor, frames: int, crop: str, rng: np.random.Generator, key: str
) -> torch.Tensor:
    """The training window: `frames` latent frames of `(C, t, h, w)` (0 keeps all), from 0 or
    a seeded random start (`window_start`). A sequence shorter than the window raises
    SampleError("shorter_than_window"): the loader counts, logs and replaces the sample (a
    padded window would train on frames that are not video)."""
    if frames <= 0:
        return latents
    total = latents.shape[1]
    if total < frames:
        raise SampleError(
            "shorter_than_window",
            f"sample {key!r} has {total} latent frames, fewer than the training window "
            f"(task.data.latent_frames={frames})",
        )
    start = window_start(total, frames, crop, rng)
    return latents[:, start : start + frames]


def latent_batches(
    lset: LatentSet,
    *,
    seed: int,
    rank: int,
    batch_size: int,
    start_batch: int,
    latent_frames: int = 0,
    crop: str = "random",
    workers: int = 0,
    shuffle: int = 0,
) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, int]]]:
    """(micro-batch, skipped counts) from `start_batch` on; micro-batch `b` depends only on
    (seed, rank, b). Each sample gives one training window of `latent_frames` latent frames
    (0: the whole stored sequence) at a start seeded by (seed, rank, stream position), so a
    resume redraws the same windows; every window of a video carries the video's one text
    embedding. `shuffle > 1` permutes the stream in seeded blocks of that many samples
    (`SampleStream`'s window; resume stays exact). A batch holds latents `(B, C, t, h, w)`,
    text `(B, L, D)`, text_mask, pooled and `noise_seed` (an int64 scalar for the loss's
    noise generator)."""
    if crop not in CROPS:
        raise ValueError(f"latent crop must be one of {CROPS}, got {crop!r}")

    def decode(sample: dict[str, Any], position: int) -> dict[str, torch.Tensor]:
        item = fmt.decode_sample(sample)
        rng = np.random.default_rng([seed, rank, position, 3])
        item["latents"] = crop_latents(item["latents"], latent_frames, crop, rng, sample["__key__"])
        return item

    def collate(items: list[dict[str, torch.Tensor]], b: int) -> dict[str, torch.Tensor]:
        shapes = {tuple(it["latents"].shape) for it in items}
        if len(shapes) > 1:
            raise fmt.LatentFormatError(
                f"latent samples of different shapes {sorted(shapes)} in one batch; set "
                "task.data.latent_frames to crop them to one length"
            )
        batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        batch["noise_seed"] = torch.tensor(noise_seed(seed, rank, b), dtype=torch.int64)
        return batch

    def make(every: int, phase: int):
        stream = SampleStream(lset.shards, seed, rank, window=shuffle)
        return micro_batches(
            stream, decode, collate, batch_size=batch_size, start_batch=start_batch,
            every=every, phase=phase,
        )  # fmt: skip

    return batch_loader(make, workers)
