"""Triton selective scan (forward + checkpointed backward), mamba layout, for short-L video scans.

Video scans run along time: L is short (tens to hundreds of latent frames) and the batch
(B = batch·h·w) is huge. So one program owns (one sequence, one block of channels of one
B/C group), keeps the block's (BLOCK_D, N) fp32 state in registers and loops over L inside
the kernel; the grid is (B, G·blocks) with thousands of programs for real shapes.

Everything O(b·d·l) is fused: Δ bias + softplus, the D skip, the SiLU(z) gate, and
``reverse`` (the scan walks time from the end by index arithmetic, no flipped copy).

Memory: the forward saves only the state at the start of every CHUNK-th step (fp32,
b·d·n·⌈L/CHUNK⌉: for n = 16, CHUNK = 16 that is one fp32 copy of u). The backward walks
chunks from last to first: it recomputes the chunk's states from its checkpoint into a
workspace (b·d·CHUNK·n fp32, freed after the call), then runs the adjoint recurrence
backwards through the chunk, as the C kernel does (``csrc/selective_scan.c``). Parameter
gradients that sum over channels (B, C) or sequences (A, D, Δ bias) are written as
per-program partial sums and reduced in PyTorch, so results are deterministic (no atomics).
The workspace and partial sums are capped at WORKSPACE_BYTES: a huge batch runs its
backward in several launches over slices of sequences.

Triton is imported lazily through ``_kernels._triton()``; this module imports without it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import FunctionCtx, once_differentiable

from cinemamba_backbone._kernels import _triton, triton_interpret_mode

CHUNK = 16  # checkpoint interval: checkpoints cost n/CHUNK fp32 per (b, d, l) element
# Backward workspace cap (recomputed chunk states + partial sums); bigger batches run in
# several launches of ≥ 1 sequence each.
WORKSPACE_BYTES = 256 * 1024 * 1024
# Channels per program and warps: at (16 channels, N = 16, 4 warps) the sm_90 cubins use 72
# (forward) and 107 (backward) registers with no spills; 32 or 64 channels spill in the
# backward (cuobjdump -res-usage; not timed on a GPU yet). Huge B·D keeps the grid full.
MAX_BLOCK_D = 16
NUM_WARPS = 4


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _kernels_now() -> Any:
    """The kernel module; TRITON_INTERPRET must not have changed since triton was imported
    (triton.language's own jit functions are built in the mode of that first import)."""
    triton = _triton()
    if triton is None:
        raise RuntimeError("the Triton selective scan needs the `triton` package")
    from cinemamba_backbone.ops import _triton_scan_kernels as mod

    if triton_interpret_mode() != mod.INTERPRET:
        raise RuntimeError(
            "TRITON_INTERPRET changed after triton was imported; set it before the first import"
        )
    return mod


def _geometry(u: torch.Tensor, A: torch.Tensor, B: torch.Tensor, block_d: int | None):
    b, dim, length = u.shape
    n = A.shape[1]
    groups = 1 if B.dim() == 3 else B.shape[1]
    if dim % groups:
        raise ValueError(f"B/C groups ({groups}) must divide the channels of u ({dim})")
    e = dim // groups
    block = block_d or min(MAX_BLOCK_D, _next_pow2(e))
    if block & (block - 1):
        raise ValueError(f"block_d={block} must be a power of 2")
    return b, dim, length, n, groups, e, block, -(-e // block)


def _validate(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    initial_state: torch.Tensor | None,
) -> None:
    """Shapes and devices, checked up front: the kernel reads memory by the shapes it is told."""
    if u.dim() != 3:
        raise ValueError(f"u must be (b, d, l), got {tuple(u.shape)}")
    b, dim, length = u.shape
    if B.dim() not in (3, 4):
        raise ValueError(f"B must be (b, n, l) or (b, g, n, l), got {tuple(B.shape)}")
    n = B.shape[-2]
    groups = B.shape[1] if B.dim() == 4 else 1
    if dim % groups:
        raise ValueError(f"B/C groups ({groups}) must divide the channels of u ({dim})")
    want = {
        "delta": (delta, (b, dim, length)),
        "A": (A, (dim, n)),
        "B": (B, (b, groups, n, length) if B.dim() == 4 else (b, n, length)),
        "C": (C, tuple(B.shape)),
        "D": (D, (dim,)),
        "z": (z, (b, dim, length)),
        "delta_bias": (delta_bias, (dim,)),
        "initial_state": (initial_state, (b, dim, n)),
    }
    for name, (x, shape) in want.items():
        if x is None:
            continue
        if tuple(x.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
        if x.device != u.device:
            raise ValueError(f"{name} is on {x.device}, u on {u.device}")
    if u.device.type != "cuda" and not triton_interpret_mode():
        raise ValueError(
            f"selective_scan_triton needs CUDA tensors (got {u.device}), or TRITON_INTERPRET=1"
        )


def _launch(kernel: Any, grid: tuple[int, int], device: torch.device, *args: Any, **kw: Any):
    """Launch on the tensors' GPU (Triton launches on the current device otherwise)."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            kernel[grid](*args, num_warps=NUM_WARPS, **kw)
    else:
        kernel[grid](*args, num_warps=NUM_WARPS, **kw)


def _dummy(ref: torch.Tensor) -> torch.Tensor:
    return torch.empty(1, device=ref.device, dtype=torch.float32)


class _TritonScanFn(torch.autograd.Function):
    """Fused scan out = (C·h + D u) · SiLU(z), h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor | None,
        z: torch.Tensor | None,
        delta_bias: torch.Tensor | None,
        h0: torch.Tensor | None,
        softplus: bool,
        reverse: bool,
        block_d: int | None,
        chunk: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        fwd = _kernels_now().scan_fwd
        b, dim, length, n, groups, e, block, nblk = _geometry(u, A, B, block_d)
        u, delta, A = u.contiguous(), delta.contiguous(), A.contiguous()
        Bc, Cc = B.contiguous(), C.contiguous()
        z = z.contiguous() if z is not None else None
        D = D.contiguous() if D is not None else None
        delta_bias = delta_bias.contiguous() if delta_bias is not None else None
        nch = max(1, -(-length // chunk))
        keep = any(ctx.needs_input_grad)  # checkpoints only when a backward will need them
        out = torch.empty_like(u)
        last = torch.empty(b, dim, n, device=u.device, dtype=torch.float32)
        ck = torch.empty(b, dim, nch, n, device=u.device, dtype=torch.float32) if keep else None
        dummy = _dummy(u)
        _launch(fwd, (b, groups * nblk), u.device,
            u, delta, A, Bc, Cc,
            D if D is not None else dummy,
            z if z is not None else dummy,
            delta_bias if delta_bias is not None else dummy,
            h0.contiguous() if h0 is not None else dummy,
            out, last, ck if keep else dummy,
            length, dim, e, groups, nblk, nch, n,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=softplus, HAS_H0=h0 is not None, KEEP=keep, REVERSE=reverse,
            CHUNK=chunk, BLOCK_D=block, BLOCK_N=_next_pow2(n),
        )  # fmt: skip
        ctx.save_for_backward(u, delta, A, Bc, Cc, D, z, delta_bias, ck)
        ctx.cfg = (softplus, reverse, block, chunk, h0 is not None)
        ctx.h0_dtype = None if h0 is None else h0.dtype
        return out, last

    @staticmethod
    @once_differentiable
    def backward(
        ctx: FunctionCtx, gout: torch.Tensor, glast: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        bwd = _kernels_now().scan_bwd
        u, delta, A, B, C, D, z, delta_bias, ck = ctx.saved_tensors
        softplus, reverse, block, chunk, has_h0 = ctx.cfg
        b, dim, length, n, groups, e, _, nblk = _geometry(u, A, B, block)
        nch = ck.shape[2]
        f32 = dict(device=u.device, dtype=torch.float32)
        # Sequences per launch: the recompute workspace and per-sequence partial sums stay
        # within WORKSPACE_BYTES (one launch for all but huge batches).
        per_row = 4 * (dim * n * (chunk + 1) + 2 * groups * nblk * n * length + 2 * dim)
        rows = max(1, min(b, WORKSPACE_BYTES // per_row))
        ws = torch.empty(rows, dim, chunk, n, **f32)
        gA_p = torch.empty(rows, dim, n, **f32)
        gBp = torch.empty(rows, groups, nblk, n, length, **f32)
        gCp = torch.empty_like(gBp)
        gD_p, gbias_p = torch.empty(rows, dim, **f32), torch.empty(rows, dim, **f32)
        gh0 = torch.empty(b if has_h0 else rows, dim, n, **f32)
        gu, gdl = torch.empty_like(u), torch.empty_like(delta)
        gz = torch.empty_like(z) if z is not None else None
        gA, gD, gbias = torch.zeros(dim, n, **f32), torch.zeros(dim, **f32), torch.zeros(dim, **f32)
        gB = torch.empty(b, groups, n, length, **f32)
        gC = torch.empty_like(gB)
        gout = gout.contiguous()
        glast = glast.contiguous() if glast is not None else None
        dummy = _dummy(u)
        for s in range(0, b, rows):
            r = min(rows, b - s)
            sl = slice(s, s + r)
            _launch(bwd, (r, groups * nblk), u.device,
                u[sl], delta[sl], A, B[sl], C[sl],
                D if D is not None else dummy,
                z[sl] if z is not None else dummy,
                delta_bias if delta_bias is not None else dummy,
                ck[sl], gout[sl],
                glast[sl] if glast is not None else dummy,
                ws, gu[sl], gdl[sl], gz[sl] if gz is not None else dummy,
                gA_p, gBp, gCp, gD_p, gbias_p, gh0[sl] if has_h0 else gh0,
                length, dim, e, groups, nblk, nch, n,
                HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=softplus, HAS_GLAST=glast is not None, REVERSE=reverse,
                CHUNK=chunk, BLOCK_D=block, BLOCK_N=_next_pow2(n),
            )  # fmt: skip
            gA += gA_p[:r].sum(0)
            gD += gD_p[:r].sum(0)
            gbias += gbias_p[:r].sum(0)
            torch.sum(gBp[:r], dim=2, out=gB[sl])
            torch.sum(gCp[:r], dim=2, out=gC[sl])
        if B.dim() == 3:
            gB, gC = gB[:, 0], gC[:, 0]
        return (
            gu,
            gdl,
            gA.to(A.dtype),
            gB.to(B.dtype),
            gC.to(C.dtype),
            gD.to(D.dtype) if D is not None else None,
            gz,
            gbias.to(delta_bias.dtype) if delta_bias is not None else None,
            gh0.to(ctx.h0_dtype) if has_h0 else None,
            None,
            None,
            None,
            None,
        )


def selective_scan_triton(
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
    block_d: int | None = None,
    chunk: int = CHUNK,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan on the Triton kernel; signature and layout of ``selective_scan_ref``.

    ``reverse=True`` scans from the last step to the first (same result as flipping u, Δ,
    B, C, z along time, scanning, and flipping back). The state is fp32 and the returned
    last state is fp32 (as mamba's); the output has the dtype of u. ``block_d`` (power
    of 2) and ``chunk`` (checkpoint interval) are tuning knobs, exposed for tests.
    """
    _validate(u, delta, A, B, C, D, z, delta_bias, initial_state)
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be >= 1")
    out, last = _TritonScanFn.apply(
        u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, reverse, block_d, chunk
    )
    return (out, last) if return_last_state else out
