"""Reconstruction metrics per (clip, frame): PSNR and SSIM on [-1, 1] pixel clips.

Both are computed on the [0, 1] scale (data range 1), SSIM with Wang et al.'s 11x11
Gaussian window (sigma 1.5, K1 = 0.01, K2 = 0.03) over the valid region, averaged over
RGB channels — the convention of scikit-image's `structural_similarity(gaussian_weights=True)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor


def frames_psnr(video: Tensor, recon: Tensor) -> Tensor:
    """PSNR in dB of (B, 3, T, H, W) clips in [-1, 1], per (clip, frame): (B, T)."""
    a = (video.double().clamp(-1, 1) + 1) / 2
    b = (recon.double().clamp(-1, 1) + 1) / 2
    mse = (a - b).pow(2).mean(dim=(1, 3, 4))
    return (10.0 * torch.log10(1.0 / mse.clamp_min(1e-12))).float()


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]  # (size, size)


def frames_ssim(video: Tensor, recon: Tensor, window: int = 11) -> Tensor:
    """SSIM of (B, 3, T, H, W) clips in [-1, 1], per (clip, frame): (B, T)."""
    b, c, t = video.shape[:3]
    if min(video.shape[-2:]) < window:
        raise ValueError(f"SSIM needs frames of at least {window}x{window}, got {video.shape[-2:]}")
    x = rearrange((video.double().clamp(-1, 1) + 1) / 2, "b c t h w -> (b t c) 1 h w")
    y = rearrange((recon.double().clamp(-1, 1) + 1) / 2, "b c t h w -> (b t c) 1 h w")
    w = _gaussian_window(window).to(x.device)[None, None]

    def filt(z: Tensor) -> Tensor:
        return F.conv2d(z, w)  # valid region only, no padding artefacts

    mx, my = filt(x), filt(y)
    vx = filt(x * x) - mx**2
    vy = filt(y * y) - my**2
    cov = filt(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    per_channel = s.mean(dim=(1, 2, 3))  # (B*T*C,)
    return rearrange(per_channel, "(b t c) -> b t c", b=b, t=t, c=c).mean(-1).float()
