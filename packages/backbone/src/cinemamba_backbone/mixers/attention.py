"""Temporal attention mixers (the paper's baselines): full and causal, rotary positions."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from cinemamba_backbone.mixers.base import MixerOptions, MixerState, TemporalMixer
from cinemamba_backbone.ops import attention


def rotary(
    x: torch.Tensor,
    offset: int = 0,
    base: float = 10000.0,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rotate (..., T, K) features by their positions offset..offset+T-1 (rotate-half RoPE).

    ``positions`` (T,) float replaces offset..offset+T-1 (the 3D rotary's per-axis indices).
    """
    length, dim = x.shape[-2], x.shape[-1]
    half = dim // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    pos = positions
    if pos is None:
        pos = torch.arange(offset, offset + length, device=x.device, dtype=torch.float32)
    angles = pos[:, None] * freqs[None]  # (T, K/2)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., :half].float(), x[..., half : 2 * half].float()
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, x[..., 2 * half :].float()], -1)
    return out.to(x.dtype)


class TemporalAttention(TemporalMixer):
    """Multi-head self-attention along T with QK-norm and rotary temporal positions."""

    causal = False

    def __init__(self, dim: int, heads: int = 4, qk_norm: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads={heads} must divide the width {dim}")
        self.heads = heads
        head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    @classmethod
    def build(cls, dim: int, opts: MixerOptions) -> TemporalAttention:
        """Construct from the shared options."""
        return cls(dim, opts.heads, opts.qk_norm)

    def _qkv(self, x: torch.Tensor, offset: int) -> tuple[torch.Tensor, ...]:
        q, k, v = rearrange(self.qkv(x), "n t (three h k) -> three n h t k", three=3, h=self.heads)
        q, k = rotary(self.q_norm(q), offset), rotary(self.k_norm(k), offset)
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, D) -> (N, T, D)."""
        q, k, v = self._qkv(x, 0)
        out = attention(q, k, v, causal=self.causal, **self.kernel_kwargs)
        return self.proj(rearrange(out, "n h t k -> n t (h k)"))


class CausalTemporalAttention(TemporalAttention):
    """Causal temporal attention; streams with a KV cache (memory grows with time)."""

    causal = True

    def init_state(
        self, batch: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> MixerState:
        """Empty key and value caches (b, h, 0, k)."""
        head_dim = self.proj.in_features // self.heads
        empty = torch.zeros(batch, self.heads, 0, head_dim, device=device, dtype=dtype)
        return empty, empty

    def forward_chunk(self, x: torch.Tensor, state: MixerState) -> tuple[torch.Tensor, MixerState]:
        """Attend from the chunk to the cache plus the chunk; returns the grown cache."""
        k_cache, v_cache = state
        q, k, v = self._qkv(x, k_cache.shape[2])
        k = torch.cat([k_cache.to(k.dtype), k], dim=2)
        v = torch.cat([v_cache.to(v.dtype), v], dim=2)
        out = attention(q, k, v, causal=True, **self.kernel_kwargs)
        return self.proj(rearrange(out, "n h t k -> n t (h k)")), (k, v)
