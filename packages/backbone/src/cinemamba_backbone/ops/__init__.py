"""Scan, convolution and attention ops with per-call kernel dispatch.

Each function takes ``kernels`` ("auto" | "torch" | "triton") and ``require_kernels`` as
runtime arguments: "auto" uses the fused CUDA kernel when it is installed and can serve the
call (device, dtype, features), otherwise the PyTorch path (logged once). The selective scan
on CUDA takes mamba_ssm, else our Triton kernel (``triton_scan``), else PyTorch; on CPU the
C kernel of ``cpu_native`` (compiled on first use) when it builds. "triton" forces our
Triton scan (on CPU only under TRITON_INTERPRET=1); "torch" always means pure PyTorch.
See ``_kernels.scan_path`` and ``_kernels.dispatch_plan``.
"""

from __future__ import annotations

import torch

from cinemamba_backbone import _kernels
from cinemamba_backbone._kernels import kernel_for, scan_path
from cinemamba_backbone.ops import cpu_native
from cinemamba_backbone.ops.attention import attention
from cinemamba_backbone.ops.conv import causal_conv1d_torch, depthwise_conv_groups
from cinemamba_backbone.ops.cpu_scan import selective_scan_torch, with_flipped_groups
from cinemamba_backbone.ops.reference import causal_conv1d_ref, selective_scan_ref, ssd_ref
from cinemamba_backbone.ops.ssd import ssd_torch
from cinemamba_backbone.ops.triton_scan import selective_scan_triton

__all__ = [
    "attention",
    "causal_conv1d",
    "causal_conv1d_ref",
    "causal_conv1d_torch",
    "selective_scan",
    "selective_scan_ref",
    "selective_scan_torch",
    "selective_scan_triton",
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
    reverse: bool = False,
    *,
    reverse_groups: int = 0,
    kernels: str = "auto",
    require_kernels: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan (mamba layout, see ``selective_scan_ref``) on the best available path.

    ``reverse=True`` scans from the last step to the first: the Triton kernel does it by
    index arithmetic; the other paths get time-flipped inputs here and flip the output back.
    ``reverse_groups=r`` does so for the last r groups of B/C (grouped B/C (b, g, n, l))
    and their channels only (a bidirectional layer in one call): index arithmetic on the C
    CPU kernel, flipped copies of those groups on the other paths.
    """
    if reverse_groups and reverse:
        raise ValueError("reverse and reverse_groups exclude each other")
    path = scan_path(
        u.device,
        u.dtype,
        kernels=kernels,
        require_kernels=require_kernels,
        initial_state=initial_state is not None,
        reverse=reverse,
        # mamba_ssm's backward ignores the gradient of the last state it returns.
        last_state_grad=return_last_state and torch.is_grad_enabled(),
        native_cpu=kernels != "torch",
    )
    if reverse_groups and path not in ("native", "torch"):
        return with_flipped_groups(
            selective_scan, reverse_groups, u, delta, A, B, C, D, z, delta_bias,
            delta_softplus, return_last_state, initial_state, kernels=kernels,
            require_kernels=require_kernels,
        )  # fmt: skip
    if path == "triton":
        return selective_scan_triton(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
            initial_state, reverse,
        )  # fmt: skip
    if reverse:
        u, delta, B, C = u.flip(-1), delta.flip(-1), B.flip(-1), C.flip(-1)
        z = z.flip(-1) if z is not None else None
    if path == "mamba_ssm":
        out = _kernels._selective_scan_fn()(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
        )
    else:
        # "native": the C kernel of ops/cpu_native.py (it falls back to PyTorch by itself
        # for what it cannot serve); "torch": pure PyTorch.
        out = selective_scan_torch(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
            initial_state, native=path == "native", reverse_groups=reverse_groups,
        )  # fmt: skip
    if not reverse:
        return out
    if return_last_state:
        return out[0].flip(-1), out[1]
    return out.flip(-1)


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
    reverse: bool = False,
    *,
    kernels: str = "auto",
    require_kernels: bool = False,
) -> torch.Tensor:
    """Depthwise causal conv over (b, d, l), weight (d, k), optional SiLU.

    ``reverse=True``: the anti-causal conv flip(conv(flip(x))) (PyTorch does it natively;
    the causal_conv1d kernel gets flipped copies). On CPU in float32 ("auto") the C kernel
    of ``cpu_native`` runs it (``depthwise_conv_groups`` with one group).
    """
    fn = kernel_for(
        "causal_conv1d",
        x,
        kernels=kernels,
        require_kernels=require_kernels,
        supported=2 <= weight.shape[1] <= 4,
        why_not="kernel width outside 2..4",
    )
    if fn is not None:
        act = "silu" if activation else None
        if reverse:
            return fn(x.flip(-1).contiguous(), weight, bias, activation=act).flip(-1)
        return fn(x, weight, bias, activation=act)
    if kernels != "torch" and cpu_native.conv_usable(x, weight):
        group_bias = None if bias is None else bias[None]
        return depthwise_conv_groups(x, weight[None], group_bias, (reverse,), activation)
    return causal_conv1d_torch(x, weight, bias, activation, reverse=reverse)
