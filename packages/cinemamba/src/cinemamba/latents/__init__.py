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
from cinemamba.latents.format import LatentFormatError, check_identity, read_manifest, vae_identity
from cinemamba.latents.stream import SampleStream, ShardList, micro_batches

# export.py needs cinemamba.data.buckets, which reads latent shards through this package's
# modules; importing export here made `import cinemamba.data.buckets` (before this package) a
# circular ImportError, and the CLI did not start. It is loaded on first use (PEP 562).
_FROM_EXPORT = ("ExportConfig", "ExportReport", "export_latents")


def __getattr__(name: str) -> object:
    """Load `ExportConfig`, `ExportReport`, `export_latents` from `export` on first use."""
    if name in _FROM_EXPORT:
        from cinemamba.latents import export

        return getattr(export, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
