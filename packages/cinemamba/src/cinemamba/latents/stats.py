"""Per-channel latent statistics of a VAE over video clips (what `cinemamba vae-stats` and the
demo's vae-stats stage store in the VAE).

The statistics are those of raw posterior samples (what the diffusion model will see),
accumulated in float64 so that many clips do not lose precision in the sums.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from cinemamba.latents.clips import to_pixels
from cinemamba_vae import VideoAutoencoder


@torch.no_grad()
def latent_stats(
    vae: VideoAutoencoder,
    clips: Iterable[torch.Tensor],
    *,
    chunk_frames: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean, std, clips used) of raw posterior samples per latent channel (float64 sums)."""
    c = vae.config.latent_channels
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    count, n = 0, 0
    gen = torch.Generator().manual_seed(seed)
    for frames in clips:
        mean, logvar = vae.encode_moments(to_pixels(frames)[None], chunk_frames=chunk_frames)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen)
        z = z.double().transpose(0, 1).reshape(c, -1)  # (C, N)
        total += z.sum(dim=1)
        total_sq += z.pow(2).sum(dim=1)
        count += z.shape[1]
        n += 1
    if n == 0:
        raise ValueError("no clip to compute latent statistics from")
    mu = total / count
    std = (total_sq / count - mu.pow(2)).clamp_min(1e-12).sqrt()
    return mu.float(), std.float(), n
