"""Full spatio-temporal attention block (issue 20): joint attention over all t·h·w tokens.

The baseline today's video models use (Wan, CogVideoX, HunyuanVideo): one self-attention
over every token of the clip with 3D rotary positions, instead of spatial attention followed
by a temporal mixer. Cost grows as O((t·h·w)^2). ``full3d_causal`` masks block-causally in
time (a token of frame i sees every token of frames <= i) and streams with a KV cache.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from cinemamba_backbone.layers import CrossAttention, Mlp, modulate
from cinemamba_backbone.mixers.attention import rotary
from cinemamba_backbone.mixers.base import KernelChoice, MixerState
from cinemamba_backbone.ops import attention

# Block kinds selectable by `BackboneConfig.mixer` besides the temporal mixers: the value
# says whether the block is causal in time. Kept apart from TEMPORAL_MIXERS, whose entries
# are (N, T, D) -> (N, T, D) mixers inside the factorised block.
FULL3D_BLOCKS: dict[str, bool] = {"full3d": False, "full3d_causal": True}


def rotary_split(head_dim: int) -> tuple[int, int, int]:
    """Head-dim widths (t, h, w) of the 3D rotary: even h/w parts of ~K/3, the rest to t."""
    ks = (head_dim // 3) // 2 * 2
    return head_dim - 2 * ks, ks, ks


def rotary_3d(
    x: torch.Tensor, frames: int, height: int, width: int, offset: int = 0
) -> torch.Tensor:
    """Rotate (..., t·h·w, K) features by their (frame, row, column) positions.

    Frames are numbered from ``offset`` (a streamed chunk after cached frames), so the
    temporal part extrapolates to longer clips exactly like the temporal mixers' rotary.
    """
    kt, kh, kw = rotary_split(x.shape[-1])
    grid = torch.meshgrid(
        torch.arange(offset, offset + frames, device=x.device, dtype=torch.float32),
        torch.arange(height, device=x.device, dtype=torch.float32),
        torch.arange(width, device=x.device, dtype=torch.float32),
        indexing="ij",
    )
    pt, ph, pw = (g.reshape(-1) for g in grid)  # (t·h·w,) each
    xt, xh, xw = x.split([kt, kh, kw], dim=-1)
    return torch.cat(
        [rotary(xt, positions=pt), rotary(xh, positions=ph), rotary(xw, positions=pw)], -1
    )


class Full3DAttention(KernelChoice):
    """Self-attention over all tokens of a clip, QK-norm, 3D rotary; optional block-causal."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = True, causal: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads={heads} must divide the width {dim}")
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.RMSNorm(dim // heads) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(dim // heads) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, height: int, width: int, cache: MixerState | None = None
    ) -> tuple[torch.Tensor, MixerState]:
        """x (B, t, S, D) with S = height·width -> (B, t, S, D), and the (k, v) with cache."""
        b, t, s, _ = x.shape
        q, k, v = rearrange(
            self.qkv(x), "b t s (three h k) -> three b h (t s) k", three=3, h=self.heads
        )
        past = 0 if cache is None else cache[0].shape[2] // s  # frames already cached
        q = rotary_3d(self.q_norm(q), t, height, width, past)
        k = rotary_3d(self.k_norm(k), t, height, width, past)
        if cache is not None:
            k = torch.cat([cache[0].to(k.dtype), k], dim=2)
            v = torch.cat([cache[1].to(v.dtype), v], dim=2)
        block = s if self.causal else 0
        out = attention(q, k, v, block_causal=block, **self.kernel_kwargs)
        out = rearrange(out, "b h (t s) k -> b t s (h k)", t=t)
        return self.proj(out), (k, v)


class Full3DBlock(nn.Module):
    """Joint 3D attention -> text cross-attention -> MLP, adaLN-zero per latent frame."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float, qk_norm: bool = True, causal: bool = False
    ) -> None:
        super().__init__()
        self.causal = causal
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Full3DAttention(dim, heads, qk_norm, causal)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.cross_attn = CrossAttention(dim, heads, qk_norm)
        self.norm4 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio)
        # shift/scale/gate for the attention and MLP branches, per frame.
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def init_state(
        self,
        batch: int,
        tokens_per_frame: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> MixerState:
        """Empty key/value caches (B, heads, 0, K); only the causal variant streams."""
        if not self.causal:
            raise TypeError("mixer 'full3d' attends to future frames and cannot stream; "
                            "use 'full3d_causal'")  # fmt: skip
        heads = self.attn.heads
        empty = torch.zeros(
            batch, heads, 0, self.attn.proj.in_features // heads, device=device, dtype=dtype
        )
        return empty, empty

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        state: MixerState | None = None,
        *,
        size: tuple[int, int],
    ) -> tuple[torch.Tensor, MixerState | None]:
        """x (B, t, S, D), c (B, t, D), size = token grid (h, w) -> x, and the grown cache."""
        t = x.shape[1]
        sh1, sc1, g1, sh3, sc3, g3 = self.adaLN_modulation(c)[:, :, None].chunk(6, dim=-1)
        h, cache = self.attn(modulate(self.norm1(x), sh1, sc1), *size, state)
        x = x + g1 * h
        h = rearrange(self.norm3(x), "b t s d -> b (t s) d")
        x = x + rearrange(self.cross_attn(h, text, text_mask), "b (t s) d -> b t s d", t=t)
        x = x + g3 * self.mlp(modulate(self.norm4(x), sh3, sc3))
        return x, (cache if state is not None else None)
