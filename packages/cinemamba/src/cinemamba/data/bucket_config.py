"""The buckets' configuration (`cinemamba.data.buckets` uses it), apart so that latent export
can take it without importing the bucket sampler, which imports the latents package."""

from __future__ import annotations

from dataclasses import dataclass, field

SAMPLINGS = ("data", "uniform", "weights")
FITS = ("center", "random", "resize")


@dataclass
class BucketConfig:
    """Which buckets exist, how big each batch is, how often each is drawn, how clips fit.

    buckets: `[height, width, frames]` (pixel frames) or `[height, width, frames, batch_size]`
        per bucket; empty, with `aspects` empty too: buckets are off.
    aspects / area / frames: generated buckets (when `buckets` is empty): for each aspect ratio
        (width / height) the size of about `area` pixels, rounded to the model's size multiple,
        once per entry of `frames`.
    tokens: token budget per micro-batch (sets each bucket's batch size; required unless every
        bucket gives its own).
    sampling: "data" (each sample equally often), "uniform" (each bucket equally often) or
        "weights" (`weights`, one per bucket, in bucket order).
    fit: how a video becomes its bucket's size: "center" / "random" crop after resizing the
        short side (aspect kept), or "resize" (squashed to the bucket's aspect ratio).
    """

    buckets: list[list[int]] = field(default_factory=list)
    aspects: list[float] = field(default_factory=list)
    area: int = 0
    frames: list[int] = field(default_factory=list)
    tokens: int = 0
    sampling: str = "data"
    weights: list[float] = field(default_factory=list)
    fit: str = "center"

    @property
    def enabled(self) -> bool:
        """Whether buckets are configured at all."""
        return bool(self.buckets or self.aspects)
