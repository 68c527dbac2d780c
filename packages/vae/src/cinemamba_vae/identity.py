"""Identity of a saved VAE: names the exact weights and architecture without building the model.

Latent manifests and saved pipelines record it, so a consumer can refuse latents or a pipeline
made with another VAE (a retrained one, or the same architecture with other latent statistics).
"""

from __future__ import annotations

from pathlib import Path

from cinemamba_vae.config import load_vae_config
from cinemamba_vae.hashing import config_hash, file_sha256
from cinemamba_vae.pretrained import diffusers_vae_identity, is_diffusers_dir

__all__ = ["config_hash", "file_sha256", "vae_identity"]


def vae_identity(directory: str | Path) -> str:
    """Names the exact VAE saved in `directory` (by `save_pretrained`) without building it: a
    hash of its weights file (latent statistics included) and of its config; a diffusers
    directory gets `diffusers_vae_identity` (class + config + weights + measured statistics)."""
    directory = Path(directory)
    if not (directory / "config.yaml").is_file() and is_diffusers_dir(directory):
        return diffusers_vae_identity(directory)
    weights, config = directory / "model.safetensors", directory / "config.yaml"
    for path in (weights, config):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {str(directory)!r} is not a saved VAE")
    return f"vae/sha256-{file_sha256(weights)[:16]}/cfg-{config_hash(load_vae_config(config))}"
