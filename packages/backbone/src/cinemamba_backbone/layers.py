"""Building blocks of VideoDiT: embedders, spatial/cross attention, MLP, final layer."""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from cinemamba_backbone.mixers.base import KernelChoice
from cinemamba_backbone.ops import attention


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation x·(1 + scale) + shift."""
    return x * (1 + scale) + shift


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(M,) float positions -> (M, dim) sin-cos features (MAE/DiT convention)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = pos.double()[:, None] * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1).float()


def sincos_2d(dim: int, h: int, w: int, base_size: int) -> torch.Tensor:
    """(h·w, dim) 2D sin-cos embedding; any grid spans the coordinates of a base_size grid.

    Scaling positions by base_size / size interpolates the embedding to other latent sizes
    instead of extrapolating it (PixArt-α style).
    """
    if dim % 4:
        raise ValueError(f"hidden size {dim} must be divisible by 4 for the 2D position embedding")
    ys = torch.arange(h, dtype=torch.float64) * (base_size / h)
    xs = torch.arange(w, dtype=torch.float64) * (base_size / w)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, gy.flatten()), sincos_1d(dim // 2, gx.flatten())], 1)
    return emb  # (h·w, dim)


class TimestepEmbedder(nn.Module):
    """Scalar diffusion times (any shape) -> vectors (shape + (D,)), as in DiT."""

    def __init__(self, hidden: int, freq_dim: int = 256, scale: float = 1000.0) -> None:
        super().__init__()
        self.freq_dim, self.scale = freq_dim, scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed t (continuous, in [0, 1]) after scaling to [0, scale]."""
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)
        args = (t.float() * self.scale)[..., None] * freqs
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        # the dtype from parameters(), not `mlp[0].weight`: reading a child's weight here would
        # use it outside its own forward (see mixers.base.CausalConv1d)
        return self.mlp(emb.to(next(self.mlp.parameters()).dtype))


class SpatialAttention(KernelChoice):
    """Self-attention among the tokens of one frame, with QK-norm."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.RMSNorm(dim // heads) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(dim // heads) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(F, S, D) -> (F, S, D) with F = B·t frames."""
        q, k, v = rearrange(self.qkv(x), "f s (three h k) -> three f h s k", three=3, h=self.heads)
        out = attention(self.q_norm(q), self.k_norm(k), v, **self.kernel_kwargs)
        return self.proj(rearrange(out, "f h s k -> f s (h k)"))


class CrossAttention(KernelChoice):
    """Attention from video tokens to text tokens; masked-out tokens are never attended."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.q_norm = nn.RMSNorm(dim // heads) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(dim // heads) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, M, D), text (B, L, D), mask (B, L) bool -> (B, M, D)."""
        q = rearrange(self.q(x), "b m (h k) -> b h m k", h=self.heads)
        k, v = rearrange(self.kv(text), "b l (two h k) -> two b h l k", two=2, h=self.heads)
        # A prompt with no valid token gets no text contribution (instead of NaNs).
        has_text = mask.any(dim=1)
        safe_mask = mask.clone()
        safe_mask[~has_text, 0] = True
        out = attention(self.q_norm(q), self.k_norm(k), v, key_mask=safe_mask, **self.kernel_kwargs)
        out = self.proj(rearrange(out, "b h m k -> b m (h k)"))
        return out * has_text[:, None, None].to(out.dtype)


class Mlp(nn.Sequential):
    """Two-layer GELU(tanh) MLP."""

    def __init__(self, dim: int, ratio: float) -> None:
        hidden = int(dim * ratio)
        super().__init__(
            nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)
        )


class FinalLayer(nn.Module):
    """Per-frame adaLN + linear projection back to patches."""

    def __init__(self, dim: int, patch: int, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch * patch * channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x (B, t, S, D), c (B, t, D) -> (B, t, S, p·p·C)."""
        shift, scale = self.adaLN_modulation(c)[:, :, None].chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


def text_mask_or_default(text: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Validate a (B, L) text mask, or make an all-True one."""
    if mask is None:
        return torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
    if mask.shape != text.shape[:2]:
        raise ValueError(
            f"text_mask shape {tuple(mask.shape)} != text (B, L) {tuple(text.shape[:2])}"
        )
    return mask.bool()


__all__ = [
    "CrossAttention",
    "FinalLayer",
    "Mlp",
    "SpatialAttention",
    "TimestepEmbedder",
    "modulate",
    "sincos_2d",
    "text_mask_or_default",
]
