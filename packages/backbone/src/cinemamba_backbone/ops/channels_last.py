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

import torch
from torch.autograd.function import FunctionCtx, once_differentiable

from cinemamba_backbone.ops import cpu_native

LANES = 16  # VL in channels_last.c: channels per vector
BLOCK = 32  # checkpoint interval of the scan, as NATIVE_BLOCK in cpu_scan
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
    xz: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor,
    x_proj: torch.Tensor,
    dt_weight: torch.Tensor,
    dt_bias: torch.Tensor,
    A: torch.Tensor,
    D: torch.Tensor,
) -> torch.Tensor:
    """(core_0(x) + flip(core_1(flip(x)))) ⊙ SiLU(z) for xz = [x, z] (b, l, 2d) -> (b, l, d).

    Core g is Mamba's selective SSM with the parameters [g] of: conv_weight (2, d, k),
    conv_bias (2, d), x_proj (2, r + 2n, d), dt_weight (2, d, r), dt_bias (2, d), A (2, d, n)
    and D (2, d): u = SiLU(causal conv(x)), [δ, B, C] = x_proj u, Δ = softplus(dt_weight δ +
    dt_bias), the scan h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t, y_t = C_t h_t + D u_t.
    """
    tensors = {"xz": xz, "conv_weight": conv_weight, "conv_bias": conv_bias, "x_proj": x_proj,
               "dt_weight": dt_weight, "dt_bias": dt_bias, "A": A, "D": D}  # fmt: skip
    for name, t in tensors.items():
        if t.dtype != torch.float32 or t.device.type != "cpu":
            raise ValueError(f"{name} is {t.dtype} on {t.device}; the channels-last kernels "
                             "take float32 on CPU")  # fmt: skip
    b, length, two_d = xz.shape
    d, n, r = two_d // 2, A.shape[-1], dt_weight.shape[-1]
    k = conv_weight.shape[-1]
    expected = {"conv_weight": (2, d, k), "conv_bias": (2, d), "x_proj": (2, r + 2 * n, d),
                "dt_weight": (2, d, r), "dt_bias": (2, d), "A": (2, d, n), "D": (2, d)}  # fmt: skip
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"{name} has shape {tuple(tensors[name].shape)}, expected {shape} "
                             f"for xz {tuple(xz.shape)}")  # fmt: skip
    if two_d % 2 or d % LANES or xz.stride(-1) != 1 or not 1 <= k <= cpu_native.MAX_CONV_K:
        raise ValueError(f"xz {tuple(xz.shape)} (channel stride {xz.stride(-1)}), conv width "
                         f"{k}: needs 2·d channels, d a multiple of {LANES}, k <= "
                         f"{cpu_native.MAX_CONV_K}")  # fmt: skip
    return _CoreFn.apply(xz, conv_weight, conv_bias, x_proj, dt_weight, dt_bias, A, D)


def _threads(tasks: int, work: int) -> int:
    return cpu_native._threads(tasks, work)


class _CoreFn(torch.autograd.Function):
    """``bimamba_core`` on the C kernels: conv, scan and gate forward and backward; x_proj
    and its gradients as batched matmuls. Saves xz, u, x_proj's output, the scan's
    checkpoints and y_0 + y_1."""

    @staticmethod
    def forward(ctx: FunctionCtx, xz, conv_weight, conv_bias, x_proj, dt_weight, dt_bias, A, D):  # noqa: ANN001, ANN205
        b, length, two_d = xz.shape
        d, k, n, r = two_d // 2, conv_weight.shape[-1], A.shape[-1], dt_weight.shape[-1]
        R = r + 2 * n
        x, z = xz[..., :d], xz[..., d:]
        # The kernels read weights by row over channels: (2, k, d), (2, r, d), (2, n, d).
        conv_t = conv_weight.transpose(1, 2).contiguous()
        w_t = dt_weight.transpose(1, 2).contiguous()
        a_t = A.transpose(1, 2).contiguous()
        conv_bias, dt_bias, D = conv_bias.contiguous(), dt_bias.contiguous(), D.contiguous()
        u = torch.empty(2, b, length, d)
        cpu_native._call(
            "cm_cl_conv_forward", x.data_ptr(), x.stride(0), x.stride(1), conv_t.data_ptr(),
            conv_bias.data_ptr(), REVERSE.data_ptr(), u.data_ptr(), 1, b, d, 2, length, k,
            _threads(2 * b, 2 * b * length * d * k),
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
            _threads(2 * b * d // LANES, 2 * b * d * length * n),
        )  # fmt: skip
        out, ysum = torch.empty(b, length, d), torch.empty(b, length, d)
        cpu_native._call(
            "cm_cl_gate_forward", y.data_ptr(), z.data_ptr(), z.stride(0), z.stride(1),
            out.data_ptr(), ysum.data_ptr(), b, length, d, _threads(b * length, b * length * d),
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
            b, length, d, _threads(b * length, b * length * d),
        )  # fmt: skip
        # Scans: dL/du, dL/dx_dbl and per-thread sums of dA, dW_T, d bias, dD.
        threads = _threads(2 * b, 2 * b * d * length * n)
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
        gu.view(2, b * length, d).baddbmm_(g_x_dbl, x_proj)
        # Convs: dL/dx straight into its half of dL/dxz.
        threads = _threads(b, 2 * b * length * d * k)
        gw_rows, gb_rows = torch.empty(b, 2, k, d), torch.empty(b, 2, d)
        work = torch.empty(threads, 2, length, d)
        cpu_native._call(
            "cm_cl_conv_backward", x.data_ptr(), x.stride(0), x.stride(1), conv_t.data_ptr(),
            conv_bias.data_ptr(), REVERSE.data_ptr(), gu.data_ptr(), 1, g_x.data_ptr(),
            g_x.stride(0), g_x.stride(1), gw_rows.data_ptr(), gb_rows.data_ptr(),
            b, d, 2, length, k, work.data_ptr(), threads,
        )  # fmt: skip
        g_conv_w = gw_rows.sum(0).transpose(1, 2)  # (2, d, k)
        g_dt_w = sums[:, n : n + r].transpose(1, 2)  # (2, d, r)
        g_A = sums[:, :n].transpose(1, 2)  # (2, d, n)
        return (g_xz, g_conv_w, gb_rows.sum(0), g_x_proj, g_dt_w, sums[:, n + r], g_A,
                sums[:, n + r + 1])  # fmt: skip
