"""Channels-last CPU ops of BiMamba (issue 20): its direction convs and scans on (b, l, d).

``in_proj`` leaves its output token-major, channels contiguous. The row kernels of
``cpu_scan`` take (b, d, l), so the layer used to pay a layout change on the way in and out,
and their per-row vector runs over the n states, which costs a horizontal sum every step and
a row's set-up for few steps when l is short (8 latent frames). The C kernels of
``csrc/channels_last.c`` vectorise over 16 channels instead and read and write the
token-major layout as it is. Both directions are G = 2 groups of one call, the second
anti-causal (conv) and scanned from the last step to the first.

Layout: x (b, l, d) with channels contiguous (a channel slice of in_proj's output); u, y
(G, b, l, d); x_proj's output (G, b, l, R), whose columns hold Δ's inputs, B and C. Mamba's
dt_proj and softplus run inside the scan kernel, per step, so no Δ tensor is made. Both ops
are float32 on CPU, with d a multiple of 16 (``usable``); the mixer falls back to its
row-kernel path otherwise.
"""

from __future__ import annotations

import torch
from torch.autograd.function import FunctionCtx, once_differentiable

from cinemamba_backbone.ops import cpu_native

LANES = 16  # VL in channels_last.c: channels per vector
BLOCK = 32  # checkpoint interval of the scan, as NATIVE_BLOCK in cpu_scan


def usable(x: torch.Tensor, dim: int) -> bool:
    """Whether the channels-last kernels can serve a layer of ``dim`` channels per direction
    on x: CPU, float32, dim a multiple of 16, the library built."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and dim % LANES == 0
        and cpu_native.load() is not None
    )


def _check_float32(**tensors: torch.Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu"):
            raise ValueError(f"{name} is {t.dtype} on {t.device}; the channels-last kernels "
                             "take float32 on CPU")  # fmt: skip


def conv_groups(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    reverse: tuple[bool, ...],
    activation: bool = True,
) -> torch.Tensor:
    """G depthwise convs of one token-major input: x (b, l, d) -> (G, b, l, d).

    Group g uses weight[g] (d, k) and bias[g] (d,) and is anti-causal where ``reverse[g]``;
    SiLU after when ``activation``. The same math as ``ops.conv.depthwise_conv_groups`` on
    the other layout.
    """
    _check_float32(x=x, weight=weight, bias=bias)
    groups, d, k = weight.shape
    if x.dim() != 3 or x.shape[2] != d or x.stride(2) != 1 or len(reverse) != groups:
        raise ValueError(
            f"x {tuple(x.shape)} (channel stride {x.stride(-1)}) for weight "
            f"{tuple(weight.shape)} and {len(reverse)} directions"
        )
    if k > cpu_native.MAX_CONV_K:
        raise ValueError(f"conv width {k} > {cpu_native.MAX_CONV_K}")
    return _ConvFn.apply(x, weight, bias, tuple(reverse), activation)


def _rev(reverse: tuple[bool, ...]) -> torch.Tensor:
    return torch.tensor([int(r) for r in reverse], dtype=torch.int64)


class _ConvFn(torch.autograd.Function):
    """``conv_groups`` on the C kernel; the backward recomputes the pre-activation from x."""

    @staticmethod
    def forward(ctx, x, weight, bias, reverse, activation):  # noqa: ANN001, ANN205
        b, length, d = x.shape
        groups, _, k = weight.shape
        w_t = weight.transpose(1, 2).contiguous()  # (G, k, d): the kernel reads taps by row
        bias = None if bias is None else bias.contiguous()
        y = torch.empty(groups, b, length, d)
        threads = cpu_native._threads(groups * b, groups * b * length * d * k)
        rev = _rev(reverse)
        cpu_native._call(
            "cm_cl_conv_forward", x.data_ptr(), x.stride(0), x.stride(1), w_t.data_ptr(),
            cpu_native._ptr_of(bias), rev.data_ptr(), y.data_ptr(), int(activation),
            b, d, groups, length, k, threads,
        )  # fmt: skip
        ctx.save_for_backward(x, w_t, bias)
        ctx.reverse, ctx.activation, ctx.has_bias = reverse, activation, bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, w_t, bias = ctx.saved_tensors
        grad = grad.contiguous()
        b, length, d = x.shape
        groups, k, _ = w_t.shape
        threads = cpu_native._threads(b, groups * b * length * d * k)
        gx = torch.empty(b, length, d)
        gw_rows = torch.empty(b, groups, k, d)
        gb_rows = torch.empty(b, groups, d) if ctx.has_bias else None
        work = torch.empty(threads, groups, length, d)
        rev = _rev(ctx.reverse)
        cpu_native._call(
            "cm_cl_conv_backward", x.data_ptr(), x.stride(0), x.stride(1), w_t.data_ptr(),
            cpu_native._ptr_of(bias), rev.data_ptr(), grad.data_ptr(), int(ctx.activation),
            gx.data_ptr(), gw_rows.data_ptr(), cpu_native._ptr_of(gb_rows),
            b, d, groups, length, k, work.data_ptr(), threads,
        )  # fmt: skip
        gw = gw_rows.sum(0).transpose(1, 2)  # (G, d, k)
        gb = None if gb_rows is None else gb_rows.sum(0)
        return gx, gw, gb, None, None


def scan_groups(
    u: torch.Tensor,
    x_dbl: torch.Tensor,
    dt_weight: torch.Tensor,
    dt_bias: torch.Tensor,
    A: torch.Tensor,
    D: torch.Tensor | None,
    reverse_groups: int = 0,
) -> torch.Tensor:
    """Selective scans of G groups in the channels-last layout, from x_proj's output on:
    y (G, b, l, d).

    u (G, b, l, d) is the conv output; ``x_dbl`` (G, b, l, R) is x_proj's, with r Δ columns,
    then n of B and n of C (r = dt_weight's width; columns past r + 2n are not read). Mamba's
    Δ = softplus(dt_weight @ x_dbl[:r] + dt_bias) is made inside the kernel, per step, and
    recomputed in the backward, so no Δ tensor exists. dt_weight (G, d, r); dt_bias, D
    (G, d), D may be None; A (G, d, n). y includes the skip D·u. The last
    ``reverse_groups`` groups scan from the last step to the first.
    """
    _check_float32(u=u, x_dbl=x_dbl, dt_weight=dt_weight, dt_bias=dt_bias, A=A, D=D)
    groups, b, length, d = u.shape
    n, r = A.shape[-1], dt_weight.shape[-1]
    if A.shape != (groups, d, n) or dt_weight.shape != (groups, d, r):
        raise ValueError(
            f"A {tuple(A.shape)} and dt_weight {tuple(dt_weight.shape)} for u {tuple(u.shape)}"
        )
    if x_dbl.shape[:3] != u.shape[:3] or x_dbl.shape[3] < r + 2 * n:
        raise ValueError(f"x_dbl {tuple(x_dbl.shape)} for u {tuple(u.shape)}, n={n}, r={r}")
    if not 0 <= reverse_groups <= groups:
        raise ValueError(f"reverse_groups={reverse_groups} for {groups} groups")
    for name, p in (("D", D), ("dt_bias", dt_bias)):
        if p is not None and p.shape != (groups, d):
            raise ValueError(f"{name} has shape {tuple(p.shape)}, expected ({groups}, {d})")
    return _ScanFn.apply(u, x_dbl, dt_weight, dt_bias, A, D, reverse_groups)


class _ScanFn(torch.autograd.Function):
    """``scan_groups`` on the C kernel, checkpointing every ``BLOCK`` steps."""

    @staticmethod
    def forward(ctx: FunctionCtx, u, x_dbl, dt_weight, dt_bias, A, D, reverse_groups):  # noqa: ANN001, ANN205
        groups, b, length, d = u.shape
        n, r, R = A.shape[-1], dt_weight.shape[-1], x_dbl.shape[-1]
        u, x_dbl, dt_bias = u.contiguous(), x_dbl.contiguous(), dt_bias.contiguous()
        w_t = dt_weight.transpose(1, 2).contiguous()  # (G, r, d): a column's weights by row
        a_t = A.transpose(1, 2).contiguous()  # (G, n, d): a state's decays over channels
        D = None if D is None else D.contiguous()
        block = min(BLOCK, length)
        keep = any(ctx.needs_input_grad)
        ckpt = torch.empty(groups, b, d // LANES, -(-length // block), n, LANES) if keep else None
        y = torch.empty(groups, b, length, d)
        threads = cpu_native._threads(groups * b * d // LANES, groups * b * d * length * n)
        cpu_native._call(
            "cm_cl_scan_forward", u.data_ptr(), x_dbl.data_ptr(), w_t.data_ptr(),
            dt_bias.data_ptr(), a_t.data_ptr(), cpu_native._ptr_of(D), y.data_ptr(),
            cpu_native._ptr_of(ckpt), b, d, groups, length, n, R, r, block,
            groups - reverse_groups, threads,
        )  # fmt: skip
        ctx.save_for_backward(u, x_dbl, w_t, dt_bias, a_t, D, ckpt)
        ctx.dims = block, groups - reverse_groups
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_y: torch.Tensor):  # noqa: ANN205
        u, x_dbl, w_t, dt_bias, a_t, D, ckpt = ctx.saved_tensors
        block, rev_from = ctx.dims
        groups, b, length, d = u.shape
        n, r, R = a_t.shape[1], w_t.shape[1], x_dbl.shape[-1]
        # y.sum(0)'s gradient is one (b, l, d) expanded over the groups: read it in place.
        if grad_y[0].is_contiguous() and grad_y.stride(0) in (0, b * length * d):
            gy_stride = grad_y.stride(0)
        else:
            grad_y, gy_stride = grad_y.contiguous(), b * length * d
        threads = cpu_native._threads(groups * b, groups * b * d * length * n)
        gu, g_x_dbl = torch.empty_like(u), torch.empty_like(x_dbl)
        sums = torch.empty(threads, groups, n + r + 2, d)  # gA, gW_T, g_bias, gD per thread
        work = torch.empty(threads, (length * R + (1 + 2 * n) * block) * LANES)
        cpu_native._call(
            "cm_cl_scan_backward", u.data_ptr(), x_dbl.data_ptr(), w_t.data_ptr(),
            dt_bias.data_ptr(), a_t.data_ptr(), cpu_native._ptr_of(D), ckpt.data_ptr(),
            grad_y.data_ptr(), gy_stride, gu.data_ptr(), g_x_dbl.data_ptr(), sums.data_ptr(),
            work.data_ptr(), b, d, groups, length, n, R, r, block, rev_from, threads,
        )  # fmt: skip
        sums = sums.sum(0)
        gA = sums[:, :n].transpose(1, 2)  # (G, d, n)
        g_w = sums[:, n : n + r].transpose(1, 2)  # (G, d, r)
        g_bias, gD = sums[:, n + r], None if D is None else sums[:, n + r + 1]
        return gu, g_x_dbl, g_w, g_bias, gA, gD, None
