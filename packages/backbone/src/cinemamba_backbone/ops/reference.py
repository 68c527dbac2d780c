"""Plain sequential references for the scans: the ground truth for tests.

No optional imports, any dtype (float64 in tests). ``selective_scan_ref`` follows the
"build every ΔA, then loop" recipe of mamba's reference, so it also serves as the baseline
the fast CPU path is benchmarked against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import repeat


def _expand_groups(bc: torch.Tensor, dim: int) -> torch.Tensor:
    """(b, n, l) or (b, g, n, l) -> (b, dim, n, l), sharing each group over dim // g channels."""
    if bc.dim() == 3:
        return repeat(bc, "b n l -> b d n l", d=dim)
    groups = bc.shape[1]
    return repeat(bc, "b g n l -> b (g r) n l", r=dim // groups)


def selective_scan_ref(
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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan y = C·h, h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t (mamba layout).

    Shapes: u, delta, z (b, d, l); A (d, n); B, C (b, n, l) or grouped (b, g, n, l);
    D, delta_bias (d,); initial_state (b, d, n). Computes in the input dtype.
    """
    dim = u.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    Bx, Cx = _expand_groups(B, dim), _expand_groups(C, dim)
    # Everything materialised up front: (b, d, l, n) each.
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_b_u = torch.einsum("bdl,bdnl,bdl->bdln", delta, Bx, u)
    h = u.new_zeros(u.shape[0], dim, A.shape[1]) if initial_state is None else initial_state
    ys = []
    for t in range(u.shape[2]):
        h = delta_a[:, :, t] * h + delta_b_u[:, :, t]
        ys.append(torch.einsum("bdn,bdn->bd", h, Cx[:, :, :, t]))
    y = torch.stack(ys, dim=2)  # (b, d, l)
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z)
    return (y, h) if return_last_state else y


def ssd_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2 scan with one scalar decay per head, stepped one frame at a time.

    Shapes (mamba_chunk_scan_combined layout): x, z (b, l, h, p); dt (b, l, h); A, D,
    dt_bias (h,); B, C (b, l, g, n) with h divisible by g; initial_state (b, h, p, n).
    """
    heads = x.shape[2]
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = F.softplus(dt)
    groups = B.shape[2]
    Bh = repeat(B, "b l g n -> b l (g r) n", r=heads // groups)
    Ch = repeat(C, "b l g n -> b l (g r) n", r=heads // groups)
    b, length, _, p = x.shape
    state = x.new_zeros(b, heads, p, B.shape[-1]) if initial_state is None else initial_state
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, t] * A)  # (b, h)
        inp = torch.einsum("bh,bhp,bhn->bhpn", dt[:, t], x[:, t], Bh[:, t])
        state = decay[:, :, None, None] * state + inp
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    y = torch.stack(ys, dim=1)  # (b, l, h, p)
    if D is not None:
        y = y + x * (D[:, None] if D.dim() == 1 else D)
    if z is not None:
        y = y * F.silu(z)
    return (y, state) if return_final_state else y


def causal_conv1d_ref(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: bool = True
) -> torch.Tensor:
    """Depthwise causal conv over (b, d, l) with weight (d, k); optional SiLU."""
    k = weight.shape[1]
    y = F.conv1d(F.pad(x, (k - 1, 0)), weight[:, None, :], bias, groups=x.shape[1])
    return F.silu(y) if activation else y
