"""Depthwise causal conv1d as k shifted multiply-adds.

For the short kernels of Mamba (k = 4) this is much cheaper than ``F.conv1d`` with groups
on CPU, forward and especially backward, and it takes the previous chunk's tail directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cinemamba_backbone.ops import cpu_native


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
    Without a carried tail and with one dtype throughout it runs as ``_DepthwiseConvFn``
    (a hand-written backward); otherwise as autograd ops.
    """
    k, length = weight.shape[1], x.shape[-1]
    if (
        initial is None
        and k <= length
        and weight.dtype == x.dtype
        and (bias is None or bias.dtype == x.dtype)
    ):
        return _DepthwiseConvFn.apply(x, weight, bias, activation, reverse)
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


def _taps(length: int, k: int, reverse: bool) -> list[tuple[int, slice, slice]]:
    """(tap j, output slice, input slice) of the k - 1 shifted taps: y[out] += w_j x[in]."""
    taps = []
    for j in range(k - 1):
        s = k - 1 - j  # how far tap j looks back (causal) or ahead (reverse)
        if s >= length:
            continue  # a sequence shorter than the kernel: this tap sees only padding
        out, inp = (slice(0, length - s), slice(s, length)) if reverse else (
            slice(s, length), slice(0, length - s))  # fmt: skip
        taps.append((j, out, inp))
    return taps


class _DepthwiseConvFn(torch.autograd.Function):
    """Depthwise (anti-)causal conv + bias + optional SiLU with a hand-written backward.

    Autograd of the shifted multiply-adds would keep one product per tap and, in the
    backward, zero-fill and copy a padded gradient per tap (a slice's backward); here the
    taps accumulate in place into one buffer, forward and backward, and the weight gradient
    is one multiply-and-sum per tap.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, activation, reverse):  # noqa: ANN001, ANN205
        k, length = weight.shape[1], x.shape[-1]
        pre = x * weight[:, k - 1, None]
        for j, out, inp in _taps(length, k, reverse):
            pre[..., out].addcmul_(x[..., inp], weight[:, j, None])
        if bias is not None:
            pre += bias[:, None]
        ctx.save_for_backward(x, weight, pre)
        ctx.activation, ctx.reverse, ctx.has_bias = activation, reverse, bias is not None
        return F.silu(pre) if activation else pre

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, weight, pre = ctx.saved_tensors
        k, length = weight.shape[1], x.shape[-1]
        g = torch.ops.aten.silu_backward(grad, pre) if ctx.activation else grad
        taps = _taps(length, k, ctx.reverse)
        gx = gw = None
        if ctx.needs_input_grad[0]:
            # The adjoint of y[out] += w_j x[in] is gx[in] += w_j g[out].
            gx = g * weight[:, k - 1, None]
            for j, out, inp in taps:
                gx[..., inp].addcmul_(g[..., out], weight[:, j, None])
        if ctx.needs_input_grad[1]:
            gw = torch.empty_like(weight)
            gw[:, k - 1] = (g * x).sum((0, 2))
            for j, out, inp in taps:
                gw[:, j] = (g[..., out] * x[..., inp]).sum((0, 2))
        gb = g.sum((0, 2)) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None, None


def depthwise_conv_groups(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    reverse: tuple[bool, ...],
    activation: bool = True,
    native: bool = True,
) -> torch.Tensor:
    """G depthwise convs of one input, stacked: x (b, d, l) -> (b, G·d, l).

    Group g uses weight[g] (d, k), bias[g] (d,), and is anti-causal where ``reverse[g]``:
    BiMamba's forward and backward cores read the same in_proj output, so their convs need
    neither a time-flipped copy of it nor a channel concatenation of their outputs. ``x``
    may be strided (a channel slice of in_proj's output). On CPU in float32 it runs on the C
    kernel of ``cpu_native`` (one pass forward, one backward, recomputing the
    pre-activation from x) unless ``native=False``; otherwise as shifted multiply-adds.
    """
    if weight.dim() != 3 or weight.shape[1] != x.shape[1] or len(reverse) != weight.shape[0]:
        raise ValueError(
            f"weight {tuple(weight.shape)} for x {tuple(x.shape)} and {len(reverse)} directions"
        )
    # Mixed dtypes (fp32 weights under bf16 autocast) compute in the promoted dtype, as the
    # single conv's autograd path does.
    dtype = torch.promote_types(x.dtype, weight.dtype)
    x, weight = x.to(dtype), weight.to(dtype)
    bias = None if bias is None else bias.to(dtype)
    native = native and cpu_native.conv_usable(x, weight)
    return _GroupConvFn.apply(x, weight, bias, tuple(reverse), activation, native)


class _GroupConvFn(torch.autograd.Function):
    """``depthwise_conv_groups`` with a hand-written backward (see ``_DepthwiseConvFn``)."""

    @staticmethod
    def forward(ctx, x, weight, bias, reverse, activation, native):  # noqa: ANN001, ANN205
        ctx.reverse, ctx.activation, ctx.has_bias = reverse, activation, bias is not None
        ctx.native = native
        if native:
            ctx.save_for_backward(x, weight, bias)
            return cpu_native.conv_forward(x, weight, bias, reverse, activation)
        (b, d, length), (groups, _, k) = x.shape, weight.shape
        pre = x.new_empty(b, groups, d, length)
        for g in range(groups):
            out = pre[:, g]
            torch.mul(x, weight[g, :, k - 1, None], out=out)
            for j, o, i in _taps(length, k, reverse[g]):
                out[..., o].addcmul_(x[..., i], weight[g, :, j, None])
            if bias is not None:
                out += bias[g, :, None]
        ctx.save_for_backward(x, weight, pre)
        pre = pre.view(b, groups * d, length)
        return F.silu(pre) if activation else pre

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        if ctx.native:
            x, weight, bias = ctx.saved_tensors
            gx, gw, gb = cpu_native.conv_backward(
                x, weight, bias, ctx.reverse, ctx.activation, grad
            )
            return gx, gw, gb, None, None, None
        x, weight, pre = ctx.saved_tensors
        (b, d, length), (groups, _, k) = x.shape, weight.shape
        grad = grad.view(b, groups, d, length)
        g_pre = torch.ops.aten.silu_backward(grad, pre) if ctx.activation else grad
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = x.new_zeros(b, d, length)
            for g in range(groups):
                gp = g_pre[:, g]
                gx.addcmul_(gp, weight[g, :, k - 1, None])
                for j, o, i in _taps(length, k, ctx.reverse[g]):
                    gx[..., i].addcmul_(gp[..., o], weight[g, :, j, None])
        if ctx.needs_input_grad[1]:
            gw = torch.zeros_like(weight)  # taps past a short sequence's end stay 0
            for g in range(groups):
                gp = g_pre[:, g]
                gw[g, :, k - 1] = (gp * x).sum((0, 2))
                for j, o, i in _taps(length, k, ctx.reverse[g]):
                    gw[g, :, j] = (gp[..., o] * x[..., i]).sum((0, 2))
        gb = g_pre.sum((0, 3)) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None, None, None
