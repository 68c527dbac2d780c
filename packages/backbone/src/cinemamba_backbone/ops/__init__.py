"""Scan, convolution and attention ops with per-call kernel dispatch.

Each function takes ``kernels`` ("auto" | "torch") and ``require_kernels`` as runtime
arguments: "auto" uses the fused CUDA kernel when it is installed and can serve the call
(device, dtype, features), otherwise the PyTorch path (logged once). For the selective scan
on CPU, "auto" runs the C kernel of ``cpu_native`` (compiled on first use) when it builds;
"torch" always means pure PyTorch.
"""

from __future__ import annotations

import torch

from cinemamba_backbone._kernels import kernel_for
from cinemamba_backbone.ops.attention import attention
from cinemamba_backbone.ops.conv import causal_conv1d_torch
from cinemamba_backbone.ops.cpu_scan import selective_scan_torch
from cinemamba_backbone.ops.reference import causal_conv1d_ref, selective_scan_ref, ssd_ref
from cinemamba_backbone.ops.ssd import ssd_torch

__all__ = [
    "attention",
    "causal_conv1d",
    "causal_conv1d_ref",
    "causal_conv1d_torch",
    "selective_scan",
    "selective_scan_ref",
    "selective_scan_torch",
    "ssd_ref",
    "ssd_scan",
    "ssd_torch",
]


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: torch.Tensor | None = None,
    *,
    kernels: str = "auto",
    require_kernels: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan (mamba layout, see ``selective_scan_ref``) on the best available path."""
    fn = kernel_for(
        "selective_scan",
        u,
        kernels=kernels,
        require_kernels=require_kernels,
        supported=initial_state is None,
        why_not="initial_state (streaming) is not supported by the CUDA kernel",
    )
    if fn is not None:
        return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    # "auto" on CPU: the C kernel of ops/cpu_native.py when it builds; "torch": pure PyTorch.
    return selective_scan_torch(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state,
        native=kernels == "auto",
    )  # fmt: skip


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 64,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    *,
    kernels: str = "auto",
    require_kernels: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2 chunked SSD (layout of ``ssd_ref``) on the best available path."""
    fn = kernel_for("ssd", x, kernels=kernels, require_kernels=require_kernels)
    if fn is not None:
        return fn(
            x,
            dt,
            A,
            B,
            C,
            chunk_size,
            D=D,
            z=z,
            dt_bias=dt_bias,
            initial_states=initial_state,
            dt_softplus=dt_softplus,
            return_final_states=return_final_state,
        )
    return ssd_torch(
        x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_state, return_final_state
    )


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: bool = True,
    *,
    kernels: str = "auto",
    require_kernels: bool = False,
) -> torch.Tensor:
    """Depthwise causal conv over (b, d, l), weight (d, k), optional SiLU."""
    fn = kernel_for(
        "causal_conv1d",
        x,
        kernels=kernels,
        require_kernels=require_kernels,
        supported=2 <= weight.shape[1] <= 4,
        why_not="kernel width outside 2..4",
    )
    if fn is not None:
        return fn(x, weight, bias, activation="silu" if activation else None)
    return causal_conv1d_torch(x, weight, bias, activation)
