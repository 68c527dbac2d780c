"""``BackboneConfig``: the saved description of a ``VideoDiT`` (no runtime choices)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cinemamba_backbone.full3d import FULL3D_BLOCKS
from cinemamba_backbone.mixers import TEMPORAL_MIXERS, MixerOptions

# Every name `mixer` / `mixer_pattern` accepts: a temporal mixer inside the factorised block,
# or a full-3D block kind (which replaces the whole block).
BLOCK_MIXERS: tuple[str, ...] = tuple(sorted({*TEMPORAL_MIXERS, *FULL3D_BLOCKS}))


@dataclass
class BackboneConfig:
    """Architecture of a VideoDiT. Kernel choice is a runtime argument, not a field here."""

    in_channels: int = 4
    patch_size: int = 2
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    text_dim: int = 512  # width of the text encoder's tokens and pooled vector
    mixer: str = "bimamba"  # temporal mixer of every block, unless mixer_pattern is set
    mixer_pattern: list[str] = field(default_factory=list)  # cycled over depth
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    ssd_headdim: int = 64  # Mamba-2 head width
    ssd_chunk_size: int = 64
    temporal_heads: int = 0  # attention mixers; 0 means num_heads
    qk_norm: bool = True
    sample_size: int = 32  # latent height/width the 2D position grid is defined on
    time_scale: float = 1000.0  # t in [0, 1] is scaled by this before the sinusoid
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        for name in self.block_mixers():
            if name not in BLOCK_MIXERS:
                raise ValueError(
                    f"mixer {name!r} (config.mixer / mixer_pattern) is unknown; "
                    f"valid: {list(BLOCK_MIXERS)}"
                )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must divide hidden_size={self.hidden_size}"
            )
        if self.hidden_size % (self.temporal_heads or self.num_heads):
            raise ValueError(f"temporal_heads={self.temporal_heads} must divide hidden_size")
        for name in ("in_channels", "patch_size", "depth", "text_dim", "d_state", "expand"):
            if getattr(self, name) < 1:
                raise ValueError(f"config.{name} must be positive, got {getattr(self, name)}")

    def block_mixers(self) -> list[str]:
        """Mixer (or full-3D block kind) name of each block (the pattern repeated over depth)."""
        pattern = list(self.mixer_pattern) or [self.mixer]
        return [pattern[i % len(pattern)] for i in range(self.depth)]

    def mixer_options(self) -> MixerOptions:
        """Options shared by all temporal mixers of the model."""
        return MixerOptions(
            heads=self.temporal_heads or self.num_heads,
            d_state=self.d_state,
            d_conv=self.d_conv,
            expand=self.expand,
            headdim=self.ssd_headdim,
            chunk_size=self.ssd_chunk_size,
            qk_norm=self.qk_norm,
        )

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> BackboneConfig:
        """A preset (``PRESETS``) with field overrides; unknown names list the valid ones."""
        if name not in PRESETS:
            raise ValueError(f"unknown backbone preset {name!r}; valid: {list(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_yaml(self) -> str:
        """YAML text of every field."""
        return OmegaConf.to_yaml(OmegaConf.structured(self))

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> BackboneConfig:
        """Load a YAML (optionally with a ``preset:`` key) in struct mode: unknown keys raise."""
        raw = OmegaConf.load(path)
        preset = raw.pop("preset", None) if "preset" in raw else None
        base = OmegaConf.structured(cls.from_preset(preset) if preset else cls)
        OmegaConf.set_struct(base, True)
        merged = OmegaConf.merge(base, raw, OmegaConf.from_dotlist(overrides or []))
        return cls(**OmegaConf.to_container(merged))

    def as_dict(self) -> dict[str, Any]:
        """Plain dict of the fields."""
        return dataclasses.asdict(self)


# Width/depth/heads like DiT's S/B/L/XL; `tiny` trains in minutes on 2 CPU cores.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "depth": 2, "num_heads": 2, "ssd_headdim": 32},
    "S": {"hidden_size": 384, "depth": 12, "num_heads": 6},
    "B": {"hidden_size": 768, "depth": 12, "num_heads": 12},
    "L": {"hidden_size": 1024, "depth": 24, "num_heads": 16},
    "XL": {"hidden_size": 1152, "depth": 28, "num_heads": 16},
}
