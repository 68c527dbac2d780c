"""Mamba-1 temporal mixers: causal ``Mamba`` and bidirectional ``BiMamba``.

``SelectiveSSM`` is the causal core (depthwise causal conv1d -> selective scan) on the
expanded channels. ``Mamba`` wraps one core with the input/output projections, with
parameter names and shapes of ``mamba_ssm.modules.mamba_simple.Mamba`` so state dicts move
both ways. ``BiMamba`` composes a causal and an anti-causal core (the paper's best variant);
the anti-causal one runs its conv and scan with ``reverse=True`` instead of flipped copies.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from cinemamba_backbone.mixers.base import MixerOptions, MixerState, TemporalMixer
from cinemamba_backbone.ops import causal_conv1d, causal_conv1d_torch, selective_scan


class SelectiveSSM(TemporalMixer):
    """Causal selective-SSM core over (b, d_inner, l): conv1d(k) + SiLU + selective scan."""

    def __init__(
        self,
        d_inner: int,
        d_state: int = 16,
        d_conv: int = 4,
        dt_rank: int = 8,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
    ) -> None:
        super().__init__()
        self.d_inner, self.d_state, self.d_conv, self.dt_rank = d_inner, d_state, d_conv, dt_rank
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        # S4D-real init A = -(1..N) and Δ log-uniform in [dt_min, dt_max], as in Mamba.
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state))
        self.D = nn.Parameter(torch.empty(d_inner))
        self._dt_range = (dt_min, dt_max, dt_init_floor)
        self.reset_ssm_parameters()

    def reset_ssm_parameters(self) -> None:
        """Mamba's Δ projection init (also called by ``VideoDiT.initialize_weights``)."""
        dt_min, dt_max, floor = self._dt_range
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(
            torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            self.A_log.copy_(torch.log(torch.arange(1.0, self.d_state + 1)).expand_as(self.A_log))
            self.D.fill_(1.0)
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

    def scan_inputs(
        self, x: torch.Tensor, conv_tail: torch.Tensor | None = None, reverse: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """Conv + projections: x (b, d_inner, l) -> (u, Δ, B, C) in scan layout.

        With ``conv_tail`` (b, d_inner, k-1) the conv continues a previous chunk;
        ``reverse`` makes the conv anti-causal (the core run backwards in time).
        """
        length = x.shape[-1]
        weight = rearrange(self.conv1d.weight, "d 1 k -> d k")
        if conv_tail is None:
            x = causal_conv1d(
                x.contiguous(), weight, self.conv1d.bias, True, reverse, **self.kernel_kwargs
            )
        else:
            x = causal_conv1d_torch(x, weight, self.conv1d.bias, True, initial=conv_tail)
        x_dbl = self.x_proj(rearrange(x, "b d l -> (b l) d"))
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = rearrange(self.dt_proj.weight @ dt.t(), "d (b l) -> b d l", l=length)
        B = rearrange(B, "(b l) n -> b n l", l=length).contiguous()
        C = rearrange(C, "(b l) n -> b n l", l=length).contiguous()
        return x, dt, B, C

    def scan_params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(A, D, Δ bias) in fp32, as the scan takes them."""
        return -torch.exp(self.A_log.float()), self.D.float(), self.dt_proj.bias.float()

    def ssm(
        self,
        x: torch.Tensor,
        z: torch.Tensor | None = None,
        state: MixerState | None = None,
        return_state: bool = False,
        reverse: bool = False,
    ) -> tuple[torch.Tensor, MixerState | None]:
        """x, z (b, d_inner, l) -> y (b, d_inner, l) [gated by SiLU(z) if given], new state.

        ``reverse=True`` runs the core backwards in time (= flip, run, flip back; no state).
        """
        conv_state = ssm_state = None
        if reverse and (state is not None or return_state):
            raise ValueError("reverse=True has no carried state (streaming is causal)")
        if state is not None or return_state:
            if state is None:
                state = self.init_state(x.shape[0], x.device, x.dtype)
            tail, ssm_state = state
            xp = torch.cat([tail.to(x.dtype), x], dim=-1)  # (b, d, k-1+l)
            conv_state = xp[..., xp.shape[-1] - (self.d_conv - 1) :]
            u, dt, B, C = self.scan_inputs(x, tail)
        else:
            u, dt, B, C = self.scan_inputs(x, reverse=reverse)
        A, D, dt_bias = self.scan_params()
        out = selective_scan(
            u, dt, A, B, C, D, z, dt_bias, True, return_state, ssm_state, reverse,
            **self.kernel_kwargs,
        )  # fmt: skip
        if not return_state:
            return out, None
        y, ssm_state = out
        return y, (conv_state, ssm_state)

    def init_state(
        self, batch: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> MixerState:
        """Zero conv tail (b, d_inner, k-1) and SSM state (b, d_inner, n)."""
        conv = torch.zeros(batch, self.d_inner, self.d_conv - 1, device=device, dtype=dtype)
        ssm = torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=torch.float32)
        return conv, ssm


class Mamba(SelectiveSSM):
    """Causal Mamba mixer; parameter names/shapes match ``mamba_ssm``'s ``Mamba``."""

    causal = True

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2) -> None:
        d_inner = expand * dim
        super().__init__(d_inner, d_state, d_conv, dt_rank=math.ceil(dim / 16))
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)

    @classmethod
    def build(cls, dim: int, opts: MixerOptions) -> Mamba:
        """Construct from the shared options."""
        return cls(dim, opts.d_state, opts.d_conv, opts.expand)

    def _run(
        self, x: torch.Tensor, state: MixerState | None, stream: bool
    ) -> tuple[torch.Tensor, MixerState | None]:
        xz = rearrange(self.in_proj(x), "b l e -> b e l")
        xs, z = xz.chunk(2, dim=1)
        y, new_state = self.ssm(xs, z, state, stream)
        return self.out_proj(rearrange(y, "b e l -> b l e")), new_state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, D) -> (N, T, D), causal along T."""
        return self._run(x, None, False)[0]

    def forward_chunk(self, x: torch.Tensor, state: MixerState) -> tuple[torch.Tensor, MixerState]:
        """Continue from ``state`` (conv tail, SSM state); memory does not grow with time."""
        return self._run(x, state, True)


class BiMamba(TemporalMixer):
    """Bidirectional Mamba: shared projections, a forward and a time-reversed causal core.

    in_proj (2x expansion) -> [core(x) + flip(core_b(flip(x)))] ⊙ SiLU(z) -> out_proj, where
    flip(core_b(flip(x))) runs as core_b(x, reverse=True) (no flipped copies on Triton).
    """

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2) -> None:
        super().__init__()
        d_inner = expand * dim
        dt_rank = math.ceil(dim / 16)
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.forward_ssm = SelectiveSSM(d_inner, d_state, d_conv, dt_rank)
        self.backward_ssm = SelectiveSSM(d_inner, d_state, d_conv, dt_rank)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)

    @classmethod
    def build(cls, dim: int, opts: MixerOptions) -> BiMamba:
        """Construct from the shared options."""
        return cls(dim, opts.d_state, opts.d_conv, opts.expand)

    def set_kernels(self, kernels: str = "auto", require_kernels: bool = False) -> None:
        """Propagate the runtime kernel choice to both cores."""
        super().set_kernels(kernels, require_kernels)
        self.forward_ssm.set_kernels(kernels, require_kernels)
        self.backward_ssm.set_kernels(kernels, require_kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, D) -> (N, T, D); every output frame sees the whole sequence."""
        xz = rearrange(self.in_proj(x), "b l e -> b e l")
        xs, z = xz.chunk(2, dim=1)
        y_fwd, _ = self.forward_ssm.ssm(xs)
        y_bwd, _ = self.backward_ssm.ssm(xs, reverse=True)  # the backward core runs back in time
        y = (y_fwd + y_bwd) * F.silu(z)
        return self.out_proj(rearrange(y, "b e l -> b l e"))
