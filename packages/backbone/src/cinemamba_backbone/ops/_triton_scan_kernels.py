"""Triton kernels of ``triton_scan`` (private: imports triton at the top).

Imported only through ``triton_scan._kernels_now()`` after ``_kernels._triton()`` found
Triton. ``@triton.jit`` reads TRITON_INTERPRET when a module is executed, here and in
triton.language itself, so the interpreter must be chosen before triton's first import.
"""

# ruff: noqa: N803, N806  (mamba's names: A, B, C, D, L, N)

from __future__ import annotations

import triton
import triton.language as tl

from cinemamba_backbone._kernels import triton_interpret_mode

INTERPRET = triton_interpret_mode()  # the mode these kernels were built in


@triton.jit
def _time(i, L, REVERSE: tl.constexpr):
    # Scan step i -> time index; reverse walks from the end without a flipped copy.
    if REVERSE:
        t = L - 1 - i
    else:
        t = i
    return t


@triton.jit
def _delta(dt, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    if HAS_BIAS:
        dt = dt + bias
    if SOFTPLUS:
        dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
    return dt


@triton.jit
def scan_fwd(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    out_ptr, last_ptr, ck_ptr,
    L, DIM, E, G, NBLK, NCH, N,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr, KEEP: tl.constexpr,
    REVERSE: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_b = tl.program_id(0).to(tl.int64)
    pid = tl.program_id(1)
    g = pid // NBLK
    e = (pid % NBLK) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = e < E
    d = (g * E + e).to(tl.int64)
    n = tl.arange(0, BLOCK_N)
    nmask = n < N
    m2 = dmask[:, None] & nmask[None, :]
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=m2, other=0.0).to(tl.float32)
    Dv = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    row = pid_b * DIM * L + d * L  # (BLOCK_D,) int64 offsets of u/Δ/z rows
    bc = (pid_b * G + g) * N * L + n * L  # (BLOCK_N,) offsets into (b, g, n, l)
    state = (pid_b * DIM + d)[:, None] * N + n[None, :]  # (b, d, n) offsets
    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    if HAS_H0:
        h = tl.load(h0_ptr + state, mask=m2, other=0.0).to(tl.float32)
    ck = (pid_b * DIM + d)[:, None] * (NCH * N) + n[None, :]
    for c in range(0, NCH):
        if KEEP:
            tl.store(ck_ptr + ck + c * N, h, mask=m2)
        start = c * CHUNK
        end = tl.minimum(start + CHUNK, L)
        for i in range(start, end):
            t = _time(i, L, REVERSE)
            uu = tl.load(u_ptr + row + t, mask=dmask, other=0.0).to(tl.float32)
            dt = tl.load(dl_ptr + row + t, mask=dmask, other=0.0).to(tl.float32)
            dt = _delta(dt, bias, HAS_BIAS, SOFTPLUS)
            Bt = tl.load(B_ptr + bc + t, mask=nmask, other=0.0).to(tl.float32)
            Ct = tl.load(C_ptr + bc + t, mask=nmask, other=0.0).to(tl.float32)
            h = tl.exp(dt[:, None] * A) * h + (dt * uu)[:, None] * Bt[None, :]
            y = tl.sum(h * Ct[None, :], axis=1) + Dv * uu
            if HAS_Z:
                zz = tl.load(z_ptr + row + t, mask=dmask, other=0.0).to(tl.float32)
                y = y * zz * tl.sigmoid(zz)
            tl.store(out_ptr + row + t, y.to(out_ptr.dtype.element_ty), mask=dmask)
    tl.store(last_ptr + state, h, mask=m2)


@triton.jit
def scan_bwd(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ck_ptr, gout_ptr,
    glast_ptr, ws_ptr,
    gu_ptr, gdl_ptr, gz_ptr, gA_ptr, gB_ptr, gC_ptr, gD_ptr, gbias_ptr, gh0_ptr,
    L, DIM, E, G, NBLK, NCH, N,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_GLAST: tl.constexpr, REVERSE: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_b = tl.program_id(0).to(tl.int64)
    pid = tl.program_id(1)
    g = pid // NBLK
    blk = pid % NBLK
    e = blk * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = e < E
    d = (g * E + e).to(tl.int64)
    n = tl.arange(0, BLOCK_N)
    nmask = n < N
    m2 = dmask[:, None] & nmask[None, :]
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=m2, other=0.0).to(tl.float32)
    Dv = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    row = pid_b * DIM * L + d * L
    bc = (pid_b * G + g) * N * L + n * L
    # Partial sums over this program's channels: (b, g, NBLK, n, l).
    bcp = ((pid_b * G + g) * NBLK + blk) * N * L + n * L
    state = (pid_b * DIM + d)[:, None] * N + n[None, :]
    ck = (pid_b * DIM + d)[:, None] * (NCH * N) + n[None, :]
    ws = (pid_b * DIM + d)[:, None] * (CHUNK * N) + n[None, :]
    adj = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    if HAS_GLAST:
        adj = tl.load(glast_ptr + state, mask=m2, other=0.0).to(tl.float32)
    gA = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    gD = tl.zeros([BLOCK_D], dtype=tl.float32)
    gbias = tl.zeros([BLOCK_D], dtype=tl.float32)
    for cc in range(0, NCH):
        c = NCH - 1 - cc
        start = c * CHUNK
        steps = tl.minimum(start + CHUNK, L) - start
        h0 = tl.load(ck_ptr + ck + c * N, mask=m2, other=0.0)
        # Recompute the chunk's states from its checkpoint into the workspace.
        h = h0
        for j in range(0, steps):
            t = _time(start + j, L, REVERSE)
            uu = tl.load(u_ptr + row + t, mask=dmask, other=0.0).to(tl.float32)
            dt = tl.load(dl_ptr + row + t, mask=dmask, other=0.0).to(tl.float32)
            dt = _delta(dt, bias, HAS_BIAS, SOFTPLUS)
            Bt = tl.load(B_ptr + bc + t, mask=nmask, other=0.0).to(tl.float32)
            h = tl.exp(dt[:, None] * A) * h + (dt * uu)[:, None] * Bt[None, :]
            tl.store(ws_ptr + ws + j * N, h, mask=m2)
        # Adjoint recurrence backwards through the chunk.
        for k in range(0, steps):
            j = steps - 1 - k
            t = _time(start + j, L, REVERSE)
            h = tl.load(ws_ptr + ws + j * N, mask=m2, other=0.0)
            hp = tl.load(ws_ptr + ws + (j - 1) * N, mask=m2 & (j > 0), other=0.0)
            hp = tl.where(j > 0, hp, h0)
            uu = tl.load(u_ptr + row + t, mask=dmask, other=0.0).to(tl.float32)
            raw = tl.load(dl_ptr + row + t, mask=dmask, other=0.0).to(tl.float32)
            dt = _delta(raw, bias, HAS_BIAS, SOFTPLUS)
            Bt = tl.load(B_ptr + bc + t, mask=nmask, other=0.0).to(tl.float32)
            Ct = tl.load(C_ptr + bc + t, mask=nmask, other=0.0).to(tl.float32)
            gy = tl.load(gout_ptr + row + t, mask=dmask, other=0.0).to(tl.float32)
            if HAS_Z:
                # out = y · z σ(z): gz = gout · y · σ(z)(1 + z(1 − σ(z))).
                zz = tl.load(z_ptr + row + t, mask=dmask, other=0.0).to(tl.float32)
                sig = tl.sigmoid(zz)
                y = tl.sum(h * Ct[None, :], axis=1) + Dv * uu
                gz = gy * y * sig * (1.0 + zz * (1.0 - sig))
                tl.store(gz_ptr + row + t, gz.to(gz_ptr.dtype.element_ty), mask=dmask)
                gy = gy * zz * sig
            gD += gy * uu
            tl.store(gC_ptr + bcp + t, tl.sum(h * gy[:, None], axis=0), mask=nmask)
            gh = adj + gy[:, None] * Ct[None, :]  # dL/dh_t
            a = tl.exp(dt[:, None] * A)
            tl.store(gB_ptr + bcp + t, tl.sum(gh * (dt * uu)[:, None], axis=0), mask=nmask)
            gdu = tl.sum(gh * Bt[None, :], axis=1)  # dL/d(Δ u)
            gdA = gh * a * hp  # dL/d(Δ A)
            gdt = tl.sum(gdA * A, axis=1) + gdu * uu
            gA += gdA * dt[:, None]
            adj = gh * a
            gu = gdu * dt + gy * Dv
            if HAS_BIAS:
                pre = raw + bias
            else:
                pre = raw
            if SOFTPLUS:
                gdt = tl.where(pre <= 20.0, gdt * tl.sigmoid(pre), gdt)
            gbias += gdt
            tl.store(gu_ptr + row + t, gu.to(gu_ptr.dtype.element_ty), mask=dmask)
            tl.store(gdl_ptr + row + t, gdt.to(gdl_ptr.dtype.element_ty), mask=dmask)
    tl.store(gA_ptr + state, gA, mask=m2)
    tl.store(gh0_ptr + state, adj, mask=m2)
    tl.store(gD_ptr + pid_b * DIM + d, gD, mask=dmask)
    tl.store(gbias_ptr + pid_b * DIM + d, gbias, mask=dmask)
