"""Attention dispatch: xformers memory-efficient attention on CUDA, else PyTorch SDPA."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from cinemamba_backbone._kernels import kernel_for


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    key_mask: torch.Tensor | None = None,
    block_causal: int = 0,
    kernels: str = "auto",
    require_kernels: bool = False,
) -> torch.Tensor:
    """Softmax attention over (B, H, M, K) tensors (SDPA layout); returns (B, H, M, K).

    ``key_mask`` (B, Mk) bool marks keys that may be attended to; ``causal`` aligns the
    last query with the last key (so a query chunk may follow a longer key cache).
    ``block_causal=S`` (> 0) is causal over blocks of S tokens (frames), bottom-right aligned
    the same way: a query of block i sees every key of blocks <= i.
    """
    if sum((causal, key_mask is not None, block_causal > 0)) > 1:
        raise ValueError("attention: pass at most one of causal, key_mask, block_causal")
    mq, mk = q.shape[2], k.shape[2]
    frame_mask = None
    if block_causal > 0:
        qf = (torch.arange(mq, device=q.device) + (mk - mq)) // block_causal
        kf = torch.arange(mk, device=q.device) // block_causal
        frame_mask = kf[None, :] <= qf[:, None]  # (Mq, Mk)
    xops = kernel_for(
        "xformers_attention",
        q,
        kernels=kernels,
        require_kernels=require_kernels,
        supported=q.shape[-1] <= 256,
        why_not="head dim above 256",
    )
    if xops is not None:
        bias = None
        if causal:
            bias = xops.fmha.attn_bias.LowerTriangularFromBottomRightMask()
        elif key_mask is not None:
            # xformers wants the bias rows 8-aligned in memory: allocate padded, then slice.
            padded = -(-mk // 8) * 8
            bias = torch.zeros(q.shape[0], q.shape[1], mq, padded, dtype=q.dtype, device=q.device)
            bias = bias[..., :mk]
            bias.masked_fill_(~key_mask[:, None, None, :], float("-inf"))
        elif frame_mask is not None:
            padded = -(-mk // 8) * 8
            bias = torch.zeros(q.shape[0], q.shape[1], mq, padded, dtype=q.dtype, device=q.device)
            bias = bias[..., :mk]
            bias.masked_fill_(~frame_mask, float("-inf"))
        out = xops.memory_efficient_attention(
            *(rearrange(t, "b h m k -> b m h k") for t in (q, k, v)), attn_bias=bias
        )
        return rearrange(out, "b m h k -> b h m k")
    mask = None
    if causal and mq != mk:
        # Bottom-right aligned causal mask for a query chunk after a key cache.
        mask = torch.ones(mq, mk, dtype=torch.bool, device=q.device).tril(diagonal=mk - mq)
        causal = False
    elif key_mask is not None:
        mask = key_mask[:, None, None, :]
    elif frame_mask is not None:
        mask = frame_mask
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
