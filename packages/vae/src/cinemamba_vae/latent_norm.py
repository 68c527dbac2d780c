"""What every VAE behind the `VideoAutoencoder` seam shares: latent normalisation and sampling.

Both our own VAE and the diffusers adapter keep per-channel `latent_mean` / `latent_std`
buffers and draw a posterior sample the same way, so these live once, here.
"""

from __future__ import annotations

import torch
from torch import Tensor


class LatentNormalization:
    """Mixin for a module with `latent_mean` / `latent_std` buffers of shape (C,)."""

    latent_mean: Tensor
    latent_std: Tensor

    def normalize(self, z: Tensor) -> Tensor:
        """Raw latents -> normalised latents (zero mean, unit std per channel)."""
        mean, std = (b.to(z.dtype).view(-1, 1, 1, 1) for b in (self.latent_mean, self.latent_std))
        return (z - mean) / std

    def denormalize(self, z: Tensor) -> Tensor:
        """Normalised latents -> raw latents."""
        mean, std = (b.to(z.dtype).view(-1, 1, 1, 1) for b in (self.latent_mean, self.latent_std))
        return z * std + mean

    @torch.no_grad()
    def store_latent_stats(self, mean: Tensor, std: Tensor) -> None:
        """Check and store per-channel raw-latent statistics (`vae-stats`) to normalise with."""
        c = self.latent_mean.shape[0]
        if mean.shape != (c,) or std.shape != (c,):
            raise ValueError(f"latent stats must have shape ({c},), got {mean.shape}, {std.shape}")
        if not torch.all(std > 0):
            raise ValueError("latent_std must be positive")
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std)

    def normalized_sample(
        self,
        mean: Tensor,
        logvar: Tensor,
        *,
        sample: bool,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The posterior mean (or a draw from N(mean, exp(logvar))), normalised."""
        z = mean
        if sample:
            noise = torch.randn(
                mean.shape, generator=generator, device=mean.device, dtype=mean.dtype
            )
            z = mean + torch.exp(0.5 * logvar) * noise
        return self.normalize(z)
