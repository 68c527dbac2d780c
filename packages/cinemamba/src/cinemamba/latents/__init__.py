"""Latent shard sets: export from raw video shards (whole videos or first clips), and streaming
training windows from them.

See docs/latents.md for the format and the guarantees (resume, identity checks, equality with
on-the-fly encoding).
"""

from cinemamba.latents.clips import ClipConfig, SampleError, decode_clip
from cinemamba.latents.dataset import (
    LatentSet,
    crop_latents,
    latent_batches,
    noise_seed,
    open_latent_set,
    window_start,
)
from cinemamba.latents.export import ExportConfig, ExportReport, export_latents
from cinemamba.latents.format import LatentFormatError, check_identity, read_manifest, vae_identity
from cinemamba.latents.stream import SampleStream, ShardList, micro_batches

__all__ = [
    "ClipConfig",
    "ExportConfig",
    "ExportReport",
    "LatentFormatError",
    "LatentSet",
    "SampleError",
    "SampleStream",
    "ShardList",
    "check_identity",
    "crop_latents",
    "decode_clip",
    "export_latents",
    "latent_batches",
    "micro_batches",
    "noise_seed",
    "open_latent_set",
    "read_manifest",
    "vae_identity",
    "window_start",
]
