"""Fast CPU selective scan: a lean recurrence with a checkpointing reverse-scan backward.

Forward walks time one step at a time over tiles of sequences small enough that the
state stays in L2: per step one exp(Δ A), an in-place state update h = a ⊙ h + Δ u B and
the readout Σ_n h C. Only the state at every K-th step is kept (checkpoints), so memory is
O(b·d·n·(L/K + K)) instead of the O(b·d·n·L) of the "materialise every ΔA" reference.
Backward recomputes one block of K steps at a time from those checkpoints (batched exp,
all K states of the block in one buffer), runs the adjoint recurrence backwards, and forms
the parameter gradients of the block with batched multiply-and-sum reductions.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch.autograd.function import FunctionCtx, once_differentiable

TILE_BYTES = 1024 * 1024  # forward state tile (measured: 1 MB beats 128-512 KB, as op count drops)


def default_block(length: int) -> int:
    """Checkpoint interval K minimising checkpoints (L/K) + backward buffers (4K states)."""
    return max(1, min(length, round(math.sqrt(length / 4))))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision inputs accumulate in fp32, as the CUDA kernel does.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _time_major(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(b, d, l) -> contiguous (l, b, d) in the compute dtype."""
    return rearrange(x, "b d l -> l b d").to(dtype).contiguous()


def _bc_time_major(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(b, n, l) or (b, g, n, l) -> contiguous (l, b, g, n)."""
    if x.dim() == 3:
        x = x[:, None]
    return rearrange(x, "b g n l -> l b g n").to(dtype).contiguous()


class _SelectiveScanFn(torch.autograd.Function):
    """Core scan y_t = C_t·h_t with h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        h0: torch.Tensor | None,
        block: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cdt = _compute_dtype(u.dtype)
        ut, dt = _time_major(u, cdt), _time_major(delta, cdt)  # (L, b, d)
        Bt, Ct = _bc_time_major(B, cdt), _bc_time_major(C, cdt)  # (L, b, g, n)
        length, b, d = ut.shape
        g, n = Bt.shape[2], Bt.shape[3]
        e = d // g
        Ag = A.to(cdt).reshape(g, e, n)
        du = (dt * ut).view(length, b, g, e, 1)
        # Checkpoints only when a backward will need them (inference skips the copies).
        keep = any(ctx.needs_input_grad)
        n_blocks = -(-length // block) if keep else 0
        ckpts = torch.empty(n_blocks, b, g, e, n, dtype=cdt, device=u.device)
        y = torch.empty(length, b, g, e, dtype=cdt, device=u.device)
        last = torch.empty(b, g, e, n, dtype=cdt, device=u.device)
        rows = max(1, min(b, TILE_BYTES // (d * n * ut.element_size())))
        decay = torch.empty(rows, g, e, n, dtype=cdt, device=u.device)
        scratch = torch.empty_like(decay)
        # Tiles of sequences whose state (+ two scratch buffers) stays in L2 for all L steps;
        # per step: exp(Δ A), h = a ⊙ h + Δ u B in place, y = Σ_n h C.
        for r0 in range(0, b, rows):
            r = min(rows, b - r0)
            tile = slice(r0, r0 + r)
            if h0 is None:
                state = torch.zeros(r, g, e, n, dtype=cdt, device=u.device)
            else:
                state = h0[tile].to(cdt).reshape(r, g, e, n).clone()
            dt_r = dt[:, tile].view(length, r, g, e, 1)
            du_r = du[:, tile]
            B_r = Bt[:, tile].view(length, r, g, 1, n)
            C_r = Ct[:, tile].view(length, r, g, 1, n)
            y_r, ck_r = y[:, tile], ckpts[:, tile]
            a, sc = decay[:r], scratch[:r]
            for t in range(length):
                if keep and t % block == 0:
                    ck_r[t // block].copy_(state)
                torch.mul(dt_r[t], Ag, out=a).exp_()
                state.mul_(a).addcmul_(du_r[t], B_r[t])
                torch.sum(torch.mul(state, C_r[t], out=sc), dim=-1, out=y_r[t])
            last[tile] = state
        state = last
        ctx.save_for_backward(u, delta, A, B, C, ckpts)
        ctx.block = block
        ctx.h0_dtype = None if h0 is None else h0.dtype
        y = rearrange(y, "l b g e -> b (g e) l").to(u.dtype)
        # The carried state stays in the compute dtype (fp32 for half inputs), as in mamba.
        return y, state.view(b, d, n)

    @staticmethod
    @once_differentiable
    def backward(
        ctx: FunctionCtx, grad_y: torch.Tensor, grad_last: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        u, delta, A, B, C, ckpts = ctx.saved_tensors
        block = ctx.block
        cdt = _compute_dtype(u.dtype)
        # Only Δ is copied time-major; u is read through a strided view (saves one O(b·d·l)).
        dt = _time_major(delta, cdt)
        u_view = rearrange(u, "b d l -> l b d").to(cdt)
        Bt, Ct = _bc_time_major(B, cdt), _bc_time_major(C, cdt)
        gy = _time_major(grad_y, cdt)
        length, b, d = dt.shape
        g, n = Bt.shape[2], Bt.shape[3]
        e = d // g
        Ag = A.to(cdt).reshape(g, e, n)
        du = (dt * u_view).view(length, b, g, e, 1)
        gy5 = gy.view(length, b, g, e, 1)
        adj = torch.zeros(b, g, e, n, dtype=cdt, device=u.device)
        if grad_last is not None:
            adj += grad_last.to(cdt).view(b, g, e, n)
        H = torch.empty(block, b, g, e, n, dtype=cdt, device=u.device)
        dA = torch.empty_like(H)
        G = torch.empty_like(H)
        scratch = torch.empty_like(H)
        g_du = torch.empty(length, b, g, e, dtype=cdt, device=u.device)
        g_dt = torch.empty(length, b, d, dtype=cdt, device=u.device)
        gB = torch.empty(length, b, g, n, dtype=cdt, device=u.device)
        gC = torch.empty_like(gB)
        gA = torch.zeros(d, n, dtype=cdt, device=u.device)
        starts = list(range(0, length, block))
        for i in reversed(range(len(starts))):
            s = starts[i]
            k = min(block, length - s)
            sl = slice(s, s + k)
            # Recompute the block's decays and states from its checkpoint.
            torch.mul(dt[sl].view(k, b, g, e, 1), Ag, out=dA[:k])
            dA[:k].exp_()
            prev = ckpts[i]
            for j in range(k):
                torch.mul(dA[j], prev, out=H[j]).addcmul_(du[s + j], Bt[s + j].view(b, g, 1, n))
                prev = H[j]
            # Adjoint recurrence backwards: G_j = adj + C_j gy_j; adj <- G_j ⊙ a_j.
            for j in reversed(range(k)):
                torch.addcmul(adj, gy5[s + j], Ct[s + j].view(b, g, 1, n), out=G[j])
                dA[j].mul_(G[j])  # dA now holds G ⊙ a
                adj = dA[j]
            adj = adj.clone()
            # dL/d(ΔA)_j = G_j ⊙ a_j ⊙ h_{j-1}, in place in dA.
            if k > 1:
                dA[1:k].mul_(H[: k - 1])
            dA[0].mul_(ckpts[i])
            # Reductions as multiply-into-scratch + sum: no permuted copies, no tiny GEMVs.
            g_dA, tmp = dA[:k], scratch[:k]
            torch.sum(torch.mul(g_dA, Ag, out=tmp), dim=-1, out=g_dt[sl].view(k, b, g, e))
            gA += torch.mul(g_dA, dt[sl].view(k, b, g, e, 1), out=tmp).sum((0, 1)).view(d, n)
            torch.sum(torch.mul(H[:k], gy5[sl], out=tmp), dim=-2, out=gC[sl])
            torch.sum(torch.mul(G[:k], du[sl], out=tmp), dim=-2, out=gB[sl])
            torch.sum(torch.mul(G[:k], Bt[sl].view(k, b, g, 1, n), out=tmp), dim=-1, out=g_du[sl])
        g_du = g_du.view(length, b, d)
        g_dt.addcmul_(g_du, u_view)
        g_u = g_du.mul_(dt)  # in place: g_du is not needed any more
        g_B = rearrange(gB, "l b g n -> b g n l")
        g_C = rearrange(gC, "l b g n -> b g n l")
        if B.dim() == 3:
            g_B, g_C = g_B[:, 0], g_C[:, 0]
        g_h0 = None if ctx.h0_dtype is None else adj.view(b, d, n).to(ctx.h0_dtype)
        return (
            rearrange(g_u, "l b d -> b d l").to(u.dtype),
            rearrange(g_dt, "l b d -> b d l").to(delta.dtype),
            gA.to(A.dtype),
            g_B.to(B.dtype),
            g_C.to(C.dtype),
            g_h0,
            None,
        )


def selective_scan_torch(
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
    block: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan with the same signature and layout as ``selective_scan_ref``.

    The O(b·d·l) parts (Δ bias + softplus, the D skip, the SiLU(z) gate) run as ordinary
    autograd ops; the O(b·d·l·n) recurrence is the checkpointed custom function.
    """
    if delta_bias is not None:
        delta = delta + delta_bias[:, None].to(delta.dtype)
    if delta_softplus:
        delta = torch.nn.functional.softplus(delta)
    length = u.shape[2]
    y, last = _SelectiveScanFn.apply(
        u, delta, A, B, C, initial_state, block or default_block(length)
    )
    if D is not None:
        y = y + u * D[:, None].to(u.dtype)
    if z is not None:
        y = y * torch.nn.functional.silu(z)
    return (y, last) if return_last_state else y
