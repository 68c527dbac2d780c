"""Fast CPU selective scan: a lean recurrence with a checkpointing reverse-scan backward.

One autograd function, two implementations of the same algorithm. On CPU with a float32
compute dtype (fp32, bf16 and fp16 inputs) it runs the fused C kernel of ``cpu_native``
(``csrc/selective_scan.c``, compiled on first use): each sequence's state stays in
registers for all its steps, one fused pass per step instead of six PyTorch calls. Without
a C compiler, with ``native=False`` and for float64 it runs the PyTorch code below.

PyTorch path: forward walks time one step at a time over tiles of sequences small enough
that the state stays in L2: per step one exp(Δ A), an in-place state update
h = a ⊙ h + Δ u B and the readout Σ_n h C. Only the state at every K-th step is kept
(checkpoints), so memory is O(b·d·n·(L/K + K)) instead of the O(b·d·n·L) of the
"materialise every ΔA" reference. Backward recomputes one block of K steps at a time from
those checkpoints (batched exp, all K states of the block in one buffer), runs the adjoint
recurrence backwards, and forms the parameter gradients of the block with batched
multiply-and-sum reductions.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch.autograd.function import FunctionCtx, once_differentiable

from cinemamba_backbone.ops import cpu_native

TILE_BYTES = 1024 * 1024  # forward state tile: larger tiles, fewer ops per step (in L2)
# Checkpoint interval of the C kernel: 4/32 bytes of checkpoints per state element, and a
# block's decays and states (4 KB at n = 16) stay in L1 while its adjoint runs.
NATIVE_BLOCK = 32
# Fuse the Δ bias + softplus and the D skip into the C kernel. False keeps them as autograd
# ops around it (the implementation before the fusion), for before/after benchmarks in one
# run (scripts/profile_block.py --ratio) and parity tests; the result is the same math.
FUSE_ELEMENTWISE = True


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


def _bc_row_major(x: torch.Tensor) -> torch.Tensor:
    """(b, n, l) or (b, g, n, l) -> contiguous fp32 (b, g, l, n), the C kernel's layout."""
    if x.dim() == 3:
        x = x[:, None]
    return rearrange(x, "b g n l -> b g l n").to(torch.float32).contiguous()


def _bc_grad(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Gradient (b, g, l, n) of the C kernel back to the layout and dtype of B or C."""
    grad = rearrange(grad, "b g l n -> b g n l")
    return (grad[:, 0] if like.dim() == 3 else grad).to(like.dtype)


def _torch_forward(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor | None,
    block: int,
    keep: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PyTorch forward: y (b, d, l) and last state (b, d, n) in the compute dtype, and the
    checkpoints (n_blocks, b, g, e, n), empty unless `keep`."""
    cdt = _compute_dtype(u.dtype)
    ut, dt = _time_major(u, cdt), _time_major(delta, cdt)  # (L, b, d)
    Bt, Ct = _bc_time_major(B, cdt), _bc_time_major(C, cdt)  # (L, b, g, n)
    length, b, d = ut.shape
    g, n = Bt.shape[2], Bt.shape[3]
    e = d // g
    Ag = A.to(cdt).reshape(g, e, n)
    du = (dt * ut).view(length, b, g, e, 1)
    # Checkpoints only when a backward will need them (inference skips the copies).
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
    y = rearrange(y, "l b g e -> b (g e) l")
    return y, last.view(b, d, n), ckpts


def _torch_backward(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    ckpts: torch.Tensor,
    grad_y: torch.Tensor,
    grad_last: torch.Tensor | None,
    block: int,
) -> tuple[torch.Tensor, ...]:
    """PyTorch backward from the checkpoints: gradients of u, Δ, A, B, C (in their layouts,
    compute dtype) and of the initial state (b, d, n)."""
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
    g_u, g_dt = rearrange(g_u, "l b d -> b d l"), rearrange(g_dt, "l b d -> b d l")
    return g_u, g_dt, gA, g_B, g_C, adj.view(b, d, n)


class _SelectiveScanFn(torch.autograd.Function):
    """Core scan y_t = C_t·h_t with h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t.

    ``native=True`` runs forward and backward on the C kernel when it can serve the call
    (CPU, float32 compute dtype, kernel built), else on the PyTorch path above.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        h0: torch.Tensor | None,
        block: int | None,
        native: bool,
        D: torch.Tensor | None = None,
        delta_bias: torch.Tensor | None = None,
        softplus: bool = False,
        reverse_groups: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        length, n = u.shape[2], A.shape[1]
        native = native and length > 0 and cpu_native.usable(u, n)
        if not native and (D is not None or delta_bias is not None or softplus or reverse_groups):
            raise ValueError(
                "D, delta_bias, softplus and reverse_groups are fused on the native kernel only"
            )
        block = block or (min(NATIVE_BLOCK, length) if native else default_block(length))
        ctx.delta_dtype = delta.dtype  # the native path saves Δ after softplus, in fp32
        keep = any(ctx.needs_input_grad)  # checkpoints only when a backward will need them
        if native:
            Bn, Cn = _bc_row_major(B), _bc_row_major(C)
            y, last, ckpts, delta = cpu_native.scan_forward(
                u, delta, A, Bn, Cn, h0, block, keep, delta_bias, D, softplus, reverse_groups
            )  # the backward takes Δ after bias and softplus
            ckpts = torch.empty(0) if ckpts is None else ckpts
        else:
            y, last, ckpts = _torch_forward(u, delta, A, B, C, h0, block, keep)
        ctx.save_for_backward(u, delta, A, B, C, ckpts, D, delta_bias)
        ctx.block, ctx.native, ctx.softplus = block, native, softplus
        ctx.reverse_groups = reverse_groups
        ctx.h0_dtype = None if h0 is None else h0.dtype
        # The carried state stays in the compute dtype (fp32 for half inputs), as in mamba.
        return y.to(u.dtype), last

    @staticmethod
    @once_differentiable
    def backward(
        ctx: FunctionCtx, grad_y: torch.Tensor, grad_last: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        u, delta, A, B, C, ckpts, D, delta_bias = ctx.saved_tensors
        want_h0 = ctx.h0_dtype is not None
        gD = g_bias = None
        if ctx.native:
            Bn, Cn = _bc_row_major(B), _bc_row_major(C)
            g_u, g_dt, gA, gB, gC, g_h0, gD, g_bias = cpu_native.scan_backward(
                u, delta, A, Bn, Cn, ckpts, grad_y, grad_last, ctx.block, want_h0,
                delta_bias, D, ctx.softplus, ctx.reverse_groups,
            )  # fmt: skip
            gB, gC = _bc_grad(gB, B), _bc_grad(gC, C)
        else:
            g_u, g_dt, gA, gB, gC, g_h0 = _torch_backward(
                u, delta, A, B, C, ckpts, grad_y, grad_last, ctx.block
            )
        return (
            g_u.to(u.dtype),
            g_dt.to(ctx.delta_dtype),
            gA.to(A.dtype),
            gB.to(B.dtype),
            gC.to(C.dtype),
            g_h0.to(ctx.h0_dtype) if want_h0 else None,
            None,
            None,
            None if gD is None else gD.to(D.dtype),
            None if g_bias is None else g_bias.to(delta_bias.dtype),
            None,
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
    *,
    native: bool = True,
    reverse_groups: int = 0,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan with the same signature and layout as ``selective_scan_ref``.

    The O(b·d·l·n) recurrence is the checkpointed custom function, on the C kernel when
    ``native`` and it can serve the call, else in PyTorch. On the C kernel the Δ bias +
    softplus and the D skip are fused into the scan (no separate passes over b·d·l, forward
    or backward); elsewhere they, and always the SiLU(z) gate, run as ordinary autograd ops.
    ``block`` is the checkpoint interval (default: 32 on the C kernel, √(l/4) in PyTorch).
    The last ``reverse_groups`` groups of B/C (and their channels) scan from the last step
    to the first: by index arithmetic in the C kernel, with flipped copies elsewhere.
    """
    if FUSE_ELEMENTWISE and native and u.shape[2] > 0 and cpu_native.usable(u, A.shape[1]):
        y, last = _SelectiveScanFn.apply(
            u, delta, A, B, C, initial_state, block, True, D, delta_bias, delta_softplus,
            reverse_groups,
        )  # fmt: skip
        if z is not None:
            y = y * torch.nn.functional.silu(z)
        return (y, last) if return_last_state else y
    if reverse_groups:
        return with_flipped_groups(
            selective_scan_torch, reverse_groups, u, delta, A, B, C, D, z, delta_bias,
            delta_softplus, return_last_state, initial_state, block, native=native,
        )  # fmt: skip
    if delta_bias is not None:
        delta = delta + delta_bias[:, None].to(delta.dtype)
    if delta_softplus:
        delta = torch.nn.functional.softplus(delta)
    y, last = _SelectiveScanFn.apply(u, delta, A, B, C, initial_state, block, native)
    if D is not None:
        y = y + u * D[:, None].to(u.dtype)
    if z is not None:
        y = y * torch.nn.functional.silu(z)
    return (y, last) if return_last_state else y


def _flip_groups(x: torch.Tensor | None, groups: int, reverse_groups: int) -> torch.Tensor | None:
    """Time-flip the last ``reverse_groups`` of ``groups`` equal parts of dim 1 of x."""
    if x is None:
        return None
    parts = x.chunk(groups, dim=1)
    keep = groups - reverse_groups
    return torch.cat([*parts[:keep], *(p.flip(-1) for p in parts[keep:])], dim=1)


def with_flipped_groups(scan, reverse_groups: int, u, delta, A, B, C, D, z, *args, **kwargs):  # noqa: ANN001, ANN201
    """A scan with ``reverse_groups`` done as flipped copies of those groups' inputs and of
    their output (for paths without index-reversed rows); ``scan`` takes the selective-scan
    signature, reverse_groups=0. The last state of a reversed group is that after its first
    step in time, the end of its scan, as on the C kernel."""
    groups = 1 if B.dim() == 3 else B.shape[1]
    if not 0 < reverse_groups <= groups:
        raise ValueError(f"reverse_groups={reverse_groups} for {groups} groups of B and C")
    flip = [_flip_groups(x, groups, reverse_groups) for x in (u, delta, z)]
    if B.dim() == 3:
        B, C = B.flip(-1), C.flip(-1)
    else:
        B, C = _flip_groups(B, groups, reverse_groups), _flip_groups(C, groups, reverse_groups)
    out = scan(flip[0], flip[1], A, B, C, D, flip[2], *args, **kwargs)
    if isinstance(out, tuple):
        return _flip_groups(out[0], groups, reverse_groups), out[1]
    return _flip_groups(out, groups, reverse_groups)
