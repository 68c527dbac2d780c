"""Depthwise causal conv1d as k shifted multiply-adds.

For the short kernels of Mamba (k = 4) this is much cheaper than ``F.conv1d`` with groups
on CPU, forward and especially backward, and it takes the previous chunk's tail directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: bool = True,
    initial: torch.Tensor | None = None,
    reverse: bool = False,
) -> torch.Tensor:
    """x (b, d, l), weight (d, k), initial (b, d, k-1) tail of the previous chunk or None.

    ``reverse=True`` is the anti-causal conv, flip(conv(flip(x))), without the flips.
    """
    k, length = weight.shape[1], x.shape[-1]
    if reverse:
        if initial is not None:
            raise ValueError("initial (a carried tail) is only defined for the causal conv")
        # y_t = Σ_j w_j x_{t+k-1-j}: the causal taps mirrored onto future frames.
        xp = F.pad(x, (0, k - 1))
        y = x * weight[:, k - 1, None]
        for j in range(k - 1):
            y = y + xp[..., k - 1 - j : k - 1 - j + length] * weight[:, j, None]
    elif initial is None:
        xp = F.pad(x, (k - 1, 0))
    else:
        xp = torch.cat([initial.to(x.dtype), x], dim=-1)  # (b, d, k-1+l)
    if not reverse:
        y = xp[..., k - 1 :] * weight[:, k - 1, None]
        for j in range(k - 1):
            y = y + xp[..., j : j + length] * weight[:, j, None]
    if bias is not None:
        y = y + bias[:, None]
    return F.silu(y) if activation else y
