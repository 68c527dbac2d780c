"""cinemamba_backbone: hybrid video DiT (attention within frames, Mamba along time)."""

from cinemamba_backbone._kernels import KernelUnavailableError
from cinemamba_backbone.config import PRESETS, BackboneConfig
from cinemamba_backbone.mixers import TEMPORAL_MIXERS, MixerOptions, TemporalMixer, build_mixer
from cinemamba_backbone.model import StreamState, VideoDiT, VideoDiTBlock

__all__ = [
    "PRESETS",
    "TEMPORAL_MIXERS",
    "BackboneConfig",
    "KernelUnavailableError",
    "MixerOptions",
    "StreamState",
    "TemporalMixer",
    "VideoDiT",
    "VideoDiTBlock",
    "build_mixer",
]
