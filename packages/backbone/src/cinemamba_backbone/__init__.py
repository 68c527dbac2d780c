"""cinemamba_backbone: hybrid video DiT (attention within frames, Mamba along time)."""

from cinemamba_backbone._kernels import KernelUnavailableError
from cinemamba_backbone.config import BLOCK_MIXERS, PRESETS, BackboneConfig
from cinemamba_backbone.full3d import FULL3D_BLOCKS, Full3DBlock
from cinemamba_backbone.lora import LORA_TARGETS, LoraSettings, add_lora, load_lora, save_lora
from cinemamba_backbone.mixers import TEMPORAL_MIXERS, MixerOptions, TemporalMixer, build_mixer
from cinemamba_backbone.model import StreamState, VideoDiT, VideoDiTBlock

__all__ = [
    "BLOCK_MIXERS",
    "FULL3D_BLOCKS",
    "Full3DBlock",
    "LORA_TARGETS",
    "PRESETS",
    "TEMPORAL_MIXERS",
    "BackboneConfig",
    "KernelUnavailableError",
    "LoraSettings",
    "MixerOptions",
    "StreamState",
    "TemporalMixer",
    "VideoDiT",
    "VideoDiTBlock",
    "add_lora",
    "build_mixer",
    "load_lora",
    "save_lora",
]
