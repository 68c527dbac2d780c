"""Temporal mixers: the swap point of the backbone (``TEMPORAL_MIXERS``)."""

from __future__ import annotations

from cinemamba_backbone.mixers.attention import CausalTemporalAttention, TemporalAttention
from cinemamba_backbone.mixers.base import MixerOptions, MixerState, TemporalMixer
from cinemamba_backbone.mixers.mamba import BiMamba, Mamba, SelectiveSSM
from cinemamba_backbone.mixers.mamba2 import BiMamba2, Mamba2

TEMPORAL_MIXERS: dict[str, type[TemporalMixer]] = {
    "bimamba": BiMamba,
    "mamba": Mamba,
    "mamba2": Mamba2,
    "bimamba2": BiMamba2,
    "attention": TemporalAttention,
    "causal_attention": CausalTemporalAttention,
}


def build_mixer(name: str, dim: int, opts: MixerOptions | None = None) -> TemporalMixer:
    """Build the mixer registered as ``name``; an unknown name lists the valid ones."""
    if name not in TEMPORAL_MIXERS:
        raise ValueError(f"unknown temporal mixer {name!r}; valid: {sorted(TEMPORAL_MIXERS)}")
    return TEMPORAL_MIXERS[name].build(dim, opts or MixerOptions())


__all__ = [
    "TEMPORAL_MIXERS",
    "BiMamba",
    "BiMamba2",
    "CausalTemporalAttention",
    "Mamba",
    "Mamba2",
    "MixerOptions",
    "MixerState",
    "SelectiveSSM",
    "TemporalAttention",
    "TemporalMixer",
    "build_mixer",
]
