"""BiMamba's core on CPU, channels-last, as one autograd function (issue 20).

``in_proj`` leaves its output token-major, channels contiguous. The row kernels of
``cpu_scan`` take (b, d, l), so the layer used to pay a layout change on the way in and out,
and their per-row vector runs over the n states, which costs a horizontal sum every step and
a row's set-up for few steps when l is short (8 latent frames). The C kernels of
``csrc/channels_last.c`` vectorise over 16 channels instead and read and write the
token-major layout as it is. The two directions are G = 2 groups of each call, the second
anti-causal (conv) and scanned from the last step to the first.

:func:`bimamba_core` runs everything between in_proj and out_proj: both convs, x_proj (a
batched matmul), both scans with Mamba's dt_proj and softplus inside the kernel (no Δ tensor
is made), the sum of the directions and the SiLU(z) gate, with a hand-written backward. At
short lengths the layer's time was as much in the forty-odd autograd ops around the kernels
as in the kernels; here they are a dozen plain calls. Float32 on CPU, with d a multiple of
16 (``usable``); the mixer keeps its row-kernel path otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.autograd.function import FunctionCtx, once_differentiable

from cinemamba_backbone.ops import cpu_native
from cinemamba_backbone.ops.cpu_scan import NATIVE_BLOCK

LANES = 16  # VL in channels_last.c: channels per vector
BLOCK = NATIVE_BLOCK  # the scan's checkpoint interval, as on the row kernel
REVERSE = torch.tensor([0, 1], dtype=torch.int64)  # group 1 (backward core) is anti-causal


def usable(x: torch.Tensor, dim: int) -> bool:
    """Whether the channels-last kernels can serve a layer of ``dim`` channels per direction
    on x: CPU, float32, dim a multiple of 16, the library built."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and dim % LANES == 0
        and cpu_native.load() is not None
    )


def bimamba_core(
    xz: torch.Tensor, forward_core: Sequence[torch.Tensor], backward_core: Sequence[torch.Tensor]
) -> torch.Tensor:
    """(core_f(x) + flip(core_b(flip(x)))) ⊙ SiLU(z) for xz = [x, z] (b, l, 2d) -> (b, l, d).

    Each core is Mamba's selective SSM, given as its parameters in the order of
    ``mixers.mamba.CoreParams``: conv_weight (d, k), conv_bias (d,), x_proj (r + 2n, d),
    dt_weight (d, r), dt_bias (d,), A (d, n), D (d,). u = SiLU(causal conv(x)), [δ, B, C] =
    x_proj u, Δ = softplus(dt_weight δ + dt_bias), h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t,
    y_t = C_t h_t + D u_t. The two cores' parameters are stacked inside (not as autograd
    ops), and each gets its own gradients.
    """
    if len(forward_core) != len(PARAMS) or len(backward_core) != len(PARAMS):
        raise ValueError(f"each core takes {len(PARAMS)} parameters: {', '.join(PARAMS)}")
    b, length, two_d = xz.shape
    d = two_d // 2
    k, n, r = forward_core[0].shape[-1], forward_core[5].shape[-1], forward_core[3].shape[-1]
    shapes = {"conv_weight": (d, k), "conv_bias": (d,), "x_proj": (r + 2 * n, d),
              "dt_weight": (d, r), "dt_bias": (d,), "A": (d, n), "D": (d,)}  # fmt: skip
    for core, params in (("forward", forward_core), ("backward", backward_core)):
        for (name, shape), t in zip(shapes.items(), params, strict=True):
            if t.dtype != torch.float32 or t.device.type != "cpu":
                raise ValueError(f"{core} core's {name} is {t.dtype} on {t.device}; the "
                                 "channels-last kernels take float32 on CPU")  # fmt: skip
            if tuple(t.shape) != shape:
                raise ValueError(f"{core} core's {name} has shape {tuple(t.shape)}, expected "
                                 f"{shape} for xz {tuple(xz.shape)}")  # fmt: skip
    if xz.dtype != torch.float32 or xz.device.type != "cpu":
        raise ValueError(f"xz is {xz.dtype} on {xz.device}; the channels-last kernels take "
                         "float32 on CPU")  # fmt: skip
    if two_d % 2 or d % LANES or xz.stride(-1) != 1 or not 1 <= k <= cpu_native.MAX_CONV_K:
        raise ValueError(f"xz {tuple(xz.shape)} (channel stride {xz.stride(-1)}), conv width "
                         f"{k}: needs 2·d channels, d a multiple of {LANES}, k <= "
                         f"{cpu_native.MAX_CONV_K}")  # fmt: skip
    return _CoreFn.apply(xz, *forward_core, *backward_core)


PARAMS = ("conv_weight", "conv_bias", "x_proj", "dt_weight", "dt_bias", "A", "D")


class _CoreFn(torch.autograd.Function):
    """``bimamba_core`` on the C kernels: conv, scan and gate forward and backward; x_proj
    and its gradients as batched matmuls. Saves xz, u, x_proj's output, the scan's
    checkpoints and y_0 + y_1."""

    @staticmethod
    def forward(ctx: FunctionCtx, xz, *params):  # noqa: ANN001, ANN205
        fw, bw = params[:7], params[7:]
        b, length, two_d = xz.shape
        d, k, n, r = two_d // 2, fw[0].shape[-1], fw[5].shape[-1], fw[3].shape[-1]
        R = r + 2 * n
        x, z = xz[..., :d], xz[..., d:]
        # Both cores' parameters stacked; the kernels read weights by row over channels:
        # conv (2, k, d), dt_proj (2, r, d), A (2, n, d).
        conv_t = torch.stack([fw[0].t(), bw[0].t()])
        conv_bias, x_proj = torch.stack([fw[1], bw[1]]), torch.stack([fw[2], bw[2]])
        w_t, dt_bias = torch.stack([fw[3].t(), bw[3].t()]), torch.stack([fw[4], bw[4]])
        a_t, D = torch.stack([fw[5].t(), bw[5].t()]), torch.stack([fw[6], bw[6]])
        u = torch.empty(2, b, length, d)
        cpu_native._call(
            "cm_cl_conv_forward", x.data_ptr(), x.stride(0), x.stride(1), conv_t.data_ptr(),
            conv_bias.data_ptr(), REVERSE.data_ptr(), u.data_ptr(), 1, b, d, 2, length, k,
            cpu_native._threads(2 * b, 2 * b * length * d * k),
        )  # fmt: skip
        x_dbl = torch.bmm(u.view(2, b * length, d), x_proj.mT)  # (2, b·l, R)
        block = min(BLOCK, length)
        keep = any(ctx.needs_input_grad)
        ckpt = torch.empty(2, b, d // LANES, -(-length // block), n, LANES) if keep else None
        y = torch.empty(2, b, length, d)
        cpu_native._call(
            "cm_cl_scan_forward", u.data_ptr(), x_dbl.data_ptr(), w_t.data_ptr(),
            dt_bias.data_ptr(), a_t.data_ptr(), D.data_ptr(), y.data_ptr(),
            cpu_native._ptr_of(ckpt), b, d, 2, length, n, R, r, block, 1,
            cpu_native._threads(2 * b * d // LANES, 2 * b * d * length * n),
        )  # fmt: skip
        out, ysum = torch.empty(b, length, d), torch.empty(b, length, d)
        cpu_native._call(
            "cm_cl_gate_forward", y.data_ptr(), z.data_ptr(), z.stride(0), z.stride(1),
            out.data_ptr(), ysum.data_ptr(), b, length, d, cpu_native._threads(b * length, b * length * d),
        )  # fmt: skip
        ctx.save_for_backward(xz, conv_t, conv_bias, x_proj, w_t, dt_bias, a_t, D, u, x_dbl,
                              ckpt, ysum)  # fmt: skip
        ctx.block = block
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: torch.Tensor):  # noqa: ANN205
        xz, conv_t, conv_bias, x_proj, w_t, dt_bias, a_t, D, u, x_dbl, ckpt, ysum = (
            ctx.saved_tensors
        )
        grad = grad.contiguous()
        b, length, two_d = xz.shape
        d, k, n, r = two_d // 2, conv_t.shape[1], a_t.shape[1], w_t.shape[1]
        R = r + 2 * n
        x, z = xz[..., :d], xz[..., d:]
        g_xz = torch.empty(b, length, two_d)
        g_x, g_z = g_xz[..., :d], g_xz[..., d:]
        # Gate: dL/dy (shared by both directions, read with group stride 0) and dL/dz.
        gy = torch.empty(b, length, d)
        cpu_native._call(
            "cm_cl_gate_backward", grad.data_ptr(), z.data_ptr(), z.stride(0), z.stride(1),
            ysum.data_ptr(), gy.data_ptr(), g_z.data_ptr(), g_z.stride(0), g_z.stride(1),
            b, length, d, cpu_native._threads(b * length, b * length * d),
        )  # fmt: skip
        # Scans: dL/du, dL/dx_dbl and per-thread sums of dA, dW_T, d bias, dD.
        threads = cpu_native._threads(2 * b, 2 * b * d * length * n)
        gu, g_x_dbl = torch.empty_like(u), torch.empty_like(x_dbl)
        sums = torch.empty(threads, 2, n + r + 2, d)
        work = torch.empty(threads, (length * R + (1 + 2 * n) * ctx.block) * LANES)
        cpu_native._call(
            "cm_cl_scan_backward", u.data_ptr(), x_dbl.data_ptr(), w_t.data_ptr(),
            dt_bias.data_ptr(), a_t.data_ptr(), D.data_ptr(), ckpt.data_ptr(), gy.data_ptr(),
            0, gu.data_ptr(), g_x_dbl.data_ptr(), sums.data_ptr(), work.data_ptr(),
            b, d, 2, length, n, R, r, ctx.block, 1, threads,
        )  # fmt: skip
        sums = sums.sum(0) if threads > 1 else sums[0]
        # x_proj: x_dbl = u x_projᵀ, so dL/dx_proj = dL/dx_dblᵀ u and u's gradient gains
        # dL/dx_dbl x_proj.
        u2 = u.view(2, b * length, d)
        g_x_proj = torch.bmm(g_x_dbl.mT, u2)
        # (a bmm, not an in-place baddbmm_: FlopCounterMode counts bmm, and the ablation's
        # FLOP matching counts with it)
        gu.view(2, b * length, d).add_(torch.bmm(g_x_dbl, x_proj))
        # Convs: dL/dx straight into its half of dL/dxz.
        threads = cpu_native._threads(b, 2 * b * length * d * k)
        gw_rows, gb_rows = torch.empty(b, 2, k, d), torch.empty(b, 2, d)
        work = torch.empty(threads, 2, length, d)
        cpu_native._call(
            "cm_cl_conv_backward", x.data_ptr(), x.stride(0), x.stride(1), conv_t.data_ptr(),
            conv_bias.data_ptr(), REVERSE.data_ptr(), gu.data_ptr(), 1, g_x.data_ptr(),
            g_x.stride(0), g_x.stride(1), gw_rows.data_ptr(), gb_rows.data_ptr(),
            b, d, 2, length, k, work.data_ptr(), threads,
        )  # fmt: skip
        g_conv, g_conv_bias = gw_rows.sum(0), gb_rows.sum(0)  # (2, k, d), (2, d)
        # Per core, in the parameters' own layouts: conv (d, k), dt_proj (d, r), A (d, n).
        grads = [(g_conv[g].t(), g_conv_bias[g], g_x_proj[g], sums[g, n : n + r].t(),
                  sums[g, n + r], sums[g, :n].t(), sums[g, n + r + 1]) for g in range(2)]  # fmt: skip
        return g_xz, *grads[0], *grads[1]
