"""cinemamba_conditioning: frozen CLIP text encoders through open_clip, and an embedding cache."""

from cinemamba_conditioning.cache import CachedTextEncoder, EmbeddingCache
from cinemamba_conditioning.clip import (
    OpenCLIPTextEncoder,
    TextEncoderConfig,
    build_text_encoder,
    register_bundled_configs,
)
from cinemamba_conditioning.embedding import TextEmbedding, TextEncoder

__all__ = [
    "CachedTextEncoder",
    "EmbeddingCache",
    "OpenCLIPTextEncoder",
    "TextEmbedding",
    "TextEncoder",
    "TextEncoderConfig",
    "build_text_encoder",
    "register_bundled_configs",
]
