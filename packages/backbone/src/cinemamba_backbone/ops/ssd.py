"""Chunked SSD (Mamba-2 state-space duality) in plain PyTorch.

With one scalar decay per head, a chunk of Q frames is a masked (Q, Q) matmul (tensor-core
friendly on GPU, a few large GEMMs on CPU); chunks pass a (h, p, n) state along with a short
recurrence over L/Q chunks. Autograd handles the backward: nothing here is O(L·h·p·n).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat


def _segsum_exp(a: torch.Tensor) -> torch.Tensor:
    """exp of segment sums: out[..., i, j] = exp(sum_{j<s<=i} a_s) for i >= j, else 0."""
    q = a.shape[-1]
    cs = torch.cumsum(a, dim=-1)
    diff = cs[..., :, None] - cs[..., None, :]
    keep = torch.ones(q, q, dtype=torch.bool, device=a.device).tril()
    return torch.exp(diff.masked_fill(~keep, float("-inf")))


def ssd_torch(
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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``reference.ssd_ref``; computes half inputs in fp32."""
    in_dtype = x.dtype
    cdt = torch.float64 if in_dtype == torch.float64 else torch.float32
    x, dt, A, B, C = (v.to(cdt) for v in (x, dt, A, B, C))
    if dt_bias is not None:
        dt = dt + dt_bias.to(cdt)
    if dt_softplus:
        dt = F.softplus(dt)
    b, length, h, p = x.shape
    g = B.shape[2]
    Bh = repeat(B, "b l g n -> b l (g r) n", r=h // g)
    Ch = repeat(C, "b l g n -> b l (g r) n", r=h // g)
    q = min(chunk_size, length)
    pad = (-length) % q
    xdt = x * dt[..., None]
    if pad:
        # Zero-padded frames have dt = 0: no decay, no input, so they change nothing.
        xdt, dt = F.pad(xdt, (0, 0, 0, 0, 0, pad)), F.pad(dt, (0, 0, 0, pad))
        Bh, Ch = F.pad(Bh, (0, 0, 0, 0, 0, pad)), F.pad(Ch, (0, 0, 0, 0, 0, pad))
    xc = rearrange(xdt, "b (c q) h p -> b c q h p", q=q)
    Bc = rearrange(Bh, "b (c q) h n -> b c q h n", q=q)
    Cc = rearrange(Ch, "b (c q) h n -> b c q h n", q=q)
    a = rearrange(dt * A, "b (c q) h -> b h c q", q=q)  # log decay per frame
    a_cum = torch.cumsum(a, dim=-1)  # (b, h, c, q)
    # 1. Within each chunk: y = (C Bᵀ ⊙ decay mask) (x Δ).
    decay = _segsum_exp(a)  # (b, h, c, q, q)
    scores = torch.einsum("bclhn,bcshn->bhcls", Cc, Bc) * decay
    y = torch.einsum("bhcls,bcshp->bclhp", scores, xc)
    # 2. State each chunk adds by its end.
    to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (b, h, c, q)
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, to_end, xc)
    # 3. Carry states across chunks (short loop over L/Q chunks).
    chunk_decay = torch.exp(a_cum[..., -1])  # (b, h, c)
    state = x.new_zeros(b, h, p, B.shape[-1]) if initial_state is None else initial_state.to(cdt)
    entering = []
    for c in range(xc.shape[1]):
        entering.append(state)
        state = state * chunk_decay[:, :, c, None, None] + chunk_states[:, c]
    states_in = torch.stack(entering, dim=1)  # (b, c, h, p, n)
    # 4. Contribution of the entering state to every frame of the chunk.
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, states_in, torch.exp(a_cum))
    y = rearrange(y, "b c q h p -> b (c q) h p")[:, :length]
    if D is not None:
        y = y + x * (D[:, None] if D.dim() == 1 else D).to(cdt)
    if z is not None:
        y = y * F.silu(z.to(cdt))
    y = y.to(in_dtype)
    # The final state stays in the compute dtype (fp32 for half inputs) for streaming.
    return (y, state) if return_final_state else y
