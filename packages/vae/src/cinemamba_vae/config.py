"""`VAEConfig`: the saved description of a `VideoAutoencoder`, its YAML reader and presets."""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field, replace

from omegaconf import OmegaConf


@dataclass
class VAEConfig:
    """Architecture of a `VideoAutoencoder` (saved next to its weights)."""

    latent_channels: int = 16
    spatial_compression: int = 8  # 4, 8 or 16
    temporal_compression: int = 4  # 1, 2, 4 or 8
    base_channels: int = 96
    # One entry per resolution level; needs 1 + log2(max(spatial, temporal)) entries.
    channel_mults: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    num_res_blocks: int = 2
    norm_groups: int = 32  # 1 makes FrameNorm a per-frame layer norm
    mid_attention: bool = True
    # Space-to-depth of p x p pixel patches before the first conv (and back after the last),
    # as in LTX-Video / Wan 2.2: counts towards spatial_compression, cuts full-res compute.
    patch_size: int = 1
    # Parameter-free residual paths through every resampling step and the bottleneck
    # (DC-AE, Wan 2.2): much faster early training. Needs widths that divide each other.
    shortcuts: bool = True
    in_channels: int = 3

    def validate(self) -> None:
        """Raise ValueError naming the field when the architecture is impossible."""
        if self.spatial_compression not in (4, 8, 16):
            raise ValueError(
                f"spatial_compression must be 4, 8 or 16, got {self.spatial_compression}"
            )
        if self.temporal_compression not in (1, 2, 4, 8):
            raise ValueError(
                f"temporal_compression must be 1, 2, 4 or 8, got {self.temporal_compression}"
            )
        if self.patch_size not in (1, 2, 4) or self.patch_size > self.spatial_compression:
            raise ValueError(
                f"patch_size must be 1, 2 or 4 and at most spatial_compression, got {self.patch_size}"
            )
        need = 1 + max(self.spatial_levels, self.temporal_levels)
        if len(self.channel_mults) != need:
            raise ValueError(
                f"channel_mults needs {need} entries for {self.spatial_compression}x spatial / "
                f"{self.temporal_compression}x temporal compression, got {list(self.channel_mults)}"
            )
        if self.shortcuts:
            sizes = [self.base_channels * m for m in self.channel_mults] + [self.latent_channels]
            for a, b in zip(sizes, sizes[1:], strict=False):
                if max(a, b) % min(a, b):
                    raise ValueError(
                        f"shortcuts=true needs each width to divide the next (or vice versa), "
                        f"got {a} and {b} in {sizes} (widths..., latent_channels)"
                    )
        for mult in self.channel_mults:
            if (self.base_channels * mult) % self.norm_groups:
                raise ValueError(
                    f"norm_groups={self.norm_groups} must divide every level's width "
                    f"(base_channels * channel_mults = {self.base_channels * mult})"
                )

    @property
    def spatial_levels(self) -> int:
        """Number of 2x spatial downsamplings."""
        return int(math.log2(self.spatial_compression // self.patch_size))

    @property
    def temporal_levels(self) -> int:
        """Number of 2x temporal downsamplings (done at the first, highest-resolution levels)."""
        return int(math.log2(self.temporal_compression))


def load_vae_config(path: str | os.PathLike, overrides: list[str] | None = None) -> VAEConfig:
    """Read a `VAEConfig` from YAML (struct mode: unknown keys raise, naming the key)."""
    schema = OmegaConf.structured(VAEConfig)
    merged = OmegaConf.merge(schema, OmegaConf.load(path), OmegaConf.from_dotlist(overrides or []))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


# ---------------------------------------------------------------- presets
VAE_PRESETS: dict[str, VAEConfig] = {
    # 4x4x4, 8 channels: small enough to train on a CPU at 64x64 (tests, demo). The 2x2
    # patchify keeps every conv at <= 32x32 per frame instead of a full-res first level.
    "tiny": VAEConfig(
        latent_channels=8,
        spatial_compression=4,
        temporal_compression=4,
        base_channels=32,
        channel_mults=[1, 2, 2],
        num_res_blocks=1,
        norm_groups=8,
        mid_attention=False,
        patch_size=2,
    ),
    # 4x8x8, 16 channels: the standard of current video latent diffusion models.
    "base": VAEConfig(),
}


def vae_preset(name: str, **overrides) -> VAEConfig:
    """A copy of a preset config, optionally with fields replaced."""
    if name not in VAE_PRESETS:
        raise ValueError(f"unknown VAE preset {name!r}; valid: {', '.join(sorted(VAE_PRESETS))}")
    return replace(copy.deepcopy(VAE_PRESETS[name]), **overrides)
