"""Mamba-2 temporal mixers: causal ``Mamba2`` and bidirectional ``BiMamba2``.

One scalar decay per head and the chunked SSD algorithm (``ops.ssd_scan``). The layout
follows ``mamba_ssm``'s ``Mamba2``: one input projection to (z, xBC, dt), a depthwise causal
conv over xBC, the scan, a gated RMSNorm, the output projection.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from cinemamba_backbone.mixers.base import CausalConv1d, MixerOptions, MixerState, TemporalMixer
from cinemamba_backbone.ops import ssd_scan


class GatedRMSNorm(nn.Module):
    """RMSNorm(y ⊙ SiLU(z)) · weight, Mamba-2's output norm."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Gate, then normalise over the last axis."""
        y = (y * F.silu(z)).float()
        y = y * torch.rsqrt(y.square().mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(z.dtype)


class SSDCore(TemporalMixer):
    """Causal core over xBC (b, l, d_inner + 2·g·n) and raw dt (b, l, h) -> y (b, l, d_inner)."""

    def __init__(
        self,
        d_inner: int,
        headdim: int,
        d_state: int = 16,
        ngroups: int = 1,
        d_conv: int = 4,
        chunk_size: int = 64,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
    ) -> None:
        super().__init__()
        if d_inner % headdim:
            raise ValueError(f"headdim={headdim} must divide the expanded width {d_inner}")
        self.d_inner, self.headdim, self.d_state, self.ngroups = d_inner, headdim, d_state, ngroups
        self.nheads, self.d_conv, self.chunk_size = d_inner // headdim, d_conv, chunk_size
        self.conv_dim = d_inner + 2 * ngroups * d_state
        self.conv1d = CausalConv1d(self.conv_dim, d_conv)
        self.dt_bias = nn.Parameter(torch.empty(self.nheads))
        self.A_log = nn.Parameter(torch.empty(self.nheads))
        self.D = nn.Parameter(torch.empty(self.nheads))
        self._dt_range = (dt_min, dt_max)
        self.reset_ssm_parameters()

    def reset_ssm_parameters(self) -> None:
        """Mamba-2 init: Δ log-uniform via its bias, A uniform in [1, 16], D = 1."""
        dt_min, dt_max = self._dt_range
        dt = torch.exp(
            torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=1e-4)
        with torch.no_grad():
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            self.A_log.copy_(torch.log(torch.empty(self.nheads).uniform_(1, 16)))
            self.D.fill_(1.0)
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True

    def ssd(
        self, xbc: torch.Tensor, dt: torch.Tensor, state: MixerState | None, return_state: bool
    ) -> tuple[torch.Tensor, MixerState | None]:
        """Conv + SSD over one direction; returns y (b, l, d_inner) and the new state."""
        xbc = rearrange(xbc, "b l c -> b c l")
        if state is None and not return_state:
            xbc = self.conv1d(xbc, None, **self.kernel_kwargs)
            conv_state = ssm_state = None
        else:
            if state is None:
                state = self.init_state(xbc.shape[0], xbc.device, xbc.dtype)
            conv_state, ssm_state = state
            tail = conv_state
            xp = torch.cat([tail.to(xbc.dtype), xbc], dim=-1)
            conv_state = xp[..., xp.shape[-1] - (self.d_conv - 1) :]
            xbc = self.conv1d(xbc, tail)
        xbc = rearrange(xbc, "b c l -> b l c")
        gn = self.ngroups * self.d_state
        x, B, C = torch.split(xbc, [self.d_inner, gn, gn], dim=-1)
        out = ssd_scan(
            rearrange(x, "b l (h p) -> b l h p", p=self.headdim),
            dt,
            -torch.exp(self.A_log.float()),
            rearrange(B, "b l (g n) -> b l g n", g=self.ngroups),
            rearrange(C, "b l (g n) -> b l g n", g=self.ngroups),
            self.chunk_size,
            D=self.D,
            dt_bias=self.dt_bias,
            dt_softplus=True,
            initial_state=ssm_state,
            return_final_state=return_state,
            **self.kernel_kwargs,
        )
        y, ssm_state = out if return_state else (out, None)
        y = rearrange(y, "b l h p -> b l (h p)")
        return y, None if not return_state else (conv_state, ssm_state)

    def forward(self, xbc: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """The core alone: xbc (b, l, conv_dim), dt (b, l, h) -> y (b, l, d_inner) (``Mamba2``
        overrides this with the whole mixer)."""
        return self.ssd(xbc, dt, None, False)[0]

    def init_state(
        self, batch: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> MixerState:
        """Zero conv tail (b, conv_dim, k-1) and SSD state (b, h, p, n)."""
        conv = torch.zeros(batch, self.conv_dim, self.d_conv - 1, device=device, dtype=dtype)
        shape = (batch, self.nheads, self.headdim, self.d_state)
        return conv, torch.zeros(shape, device=device, dtype=torch.float32)


def _projection_sizes(dim: int, opts: MixerOptions) -> tuple[int, int, int]:
    """(d_inner, nheads, in_proj width) for a Mamba-2 block of width ``dim``."""
    d_inner = opts.expand * dim
    headdim = min(opts.headdim, d_inner)
    nheads = d_inner // headdim
    return d_inner, nheads, 2 * d_inner + 2 * opts.d_state + nheads


class Mamba2(SSDCore):
    """Causal Mamba-2 mixer (one B/C group)."""

    causal = True

    def __init__(self, dim: int, opts: MixerOptions) -> None:
        d_inner, nheads, proj = _projection_sizes(dim, opts)
        super().__init__(d_inner, d_inner // nheads, opts.d_state, 1, opts.d_conv, opts.chunk_size)
        self.in_proj = nn.Linear(dim, proj, bias=False)
        self.norm = GatedRMSNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)

    @classmethod
    def build(cls, dim: int, opts: MixerOptions) -> Mamba2:
        """Construct from the shared options."""
        return cls(dim, opts)

    def _run(
        self, x: torch.Tensor, state: MixerState | None, stream: bool
    ) -> tuple[torch.Tensor, MixerState | None]:
        z, xbc, dt = torch.split(self.in_proj(x), [self.d_inner, self.conv_dim, self.nheads], -1)
        y, new_state = self.ssd(xbc, dt, state, stream)
        return self.out_proj(self.norm(y, z)), new_state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, D) -> (N, T, D), causal along T."""
        return self._run(x, None, False)[0]

    def forward_chunk(self, x: torch.Tensor, state: MixerState) -> tuple[torch.Tensor, MixerState]:
        """Continue from ``state`` (conv tail, SSD state); memory does not grow with time."""
        return self._run(x, state, True)


class BiMamba2(TemporalMixer):
    """Bidirectional Mamba-2: shared projections, a forward and a time-flipped SSD core."""

    def __init__(self, dim: int, opts: MixerOptions) -> None:
        super().__init__()
        d_inner, nheads, proj = _projection_sizes(dim, opts)
        headdim = d_inner // nheads
        self.d_inner, self.nheads = d_inner, nheads
        self.in_proj = nn.Linear(dim, proj, bias=False)
        args = (d_inner, headdim, opts.d_state, 1, opts.d_conv, opts.chunk_size)
        self.forward_ssm, self.backward_ssm = SSDCore(*args), SSDCore(*args)
        self.conv_dim = self.forward_ssm.conv_dim
        self.norm = GatedRMSNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)

    @classmethod
    def build(cls, dim: int, opts: MixerOptions) -> BiMamba2:
        """Construct from the shared options."""
        return cls(dim, opts)

    def set_kernels(self, kernels: str = "auto", require_kernels: bool = False) -> None:
        """Propagate the runtime kernel choice to both cores."""
        super().set_kernels(kernels, require_kernels)
        self.forward_ssm.set_kernels(kernels, require_kernels)
        self.backward_ssm.set_kernels(kernels, require_kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, D) -> (N, T, D); every output frame sees the whole sequence."""
        z, xbc, dt = torch.split(self.in_proj(x), [self.d_inner, self.conv_dim, self.nheads], -1)
        # The cores run through their forward (not `.ssd`): see CausalConv1d for why.
        y_fwd = self.forward_ssm(xbc, dt)
        y_bwd = self.backward_ssm(xbc.flip(1), dt.flip(1))
        return self.out_proj(self.norm(y_fwd + y_bwd.flip(1), z))
