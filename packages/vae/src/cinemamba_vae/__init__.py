"""cinemamba_vae: causal 3D video autoencoder with exact chunked encode/decode of any length."""

from cinemamba_vae.config import VAE_PRESETS, VAEConfig, load_vae_config, vae_preset
from cinemamba_vae.identity import vae_identity
from cinemamba_vae.model import VAEOutput, VideoAutoencoder
from cinemamba_vae.pretrained import DiffusersVAEConfig, DiffusersVideoVAE, load_vae

__all__ = [
    "DiffusersVAEConfig",
    "DiffusersVideoVAE",
    "VAE_PRESETS",
    "VAEConfig",
    "VAEOutput",
    "VideoAutoencoder",
    "load_vae",
    "load_vae_config",
    "vae_identity",
    "vae_preset",
]
