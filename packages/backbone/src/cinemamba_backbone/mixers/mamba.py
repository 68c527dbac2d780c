"""Mamba-1 temporal mixers: causal ``Mamba`` and bidirectional ``BiMamba``.

``SelectiveSSM`` is the causal core (depthwise causal conv1d -> selective scan) on the
expanded channels. ``Mamba`` wraps one core with the input/output projections, with
parameter names and shapes of ``mamba_ssm.modules.mamba_simple.Mamba`` so state dicts move
both ways. ``BiMamba`` composes two cores and a flip (the paper's best variant).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from cinemamba_backbone.mixers.base import CausalConv1d, MixerOptions, MixerState, TemporalMixer
from cinemamba_backbone.ops import channels_last, selective_scan
from cinemamba_backbone.ops.conv import depthwise_conv_groups


class DeltaProjection(nn.Linear):
    """Mamba's Δ projection ``dt_proj``: returns W·dt and, apart, the bias in fp32.

    The bias is not added here: the scan adds it in fp32 before the softplus (``delta_bias``),
    as Mamba does, which keeps Δ accurate under bf16 weights. It leaves as a copy made inside
    this module's forward, so a per-module parameter partitioner (ZeRO-3) sees both parameters
    used by their owner (see ``CausalConv1d``).
    """

    def forward(  # type: ignore[override]
        self, dt: torch.Tensor | None, *, copy_params: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """dt (b, r, l) channels first -> (W·dt (b, d, l), bias (d,) in fp32); with
        ``copy_params``, (a copy of W (d, r), the fp32 bias) for a parent's fused op."""
        bias = self.bias.to(torch.float32, copy=True)
        return (self.weight.clone() if copy_params else self.weight @ dt), bias


class ChannelProjection(nn.Linear):
    """Mamba's ``x_proj`` applied channels first: (b, d, l) -> W·x (b, out, l).

    The conv output is channels first; a token-major Linear would need a permuted copy of
    it (and of its gradient), and its result permuted back for Δ, B and C.
    """

    def forward(self, x: torch.Tensor | None, *, copy_params: bool = False) -> torch.Tensor:  # type: ignore[override]
        """x (b, d, l) -> W·x (+ bias) (b, out, l); with ``copy_params``, a copy of W
        (bias-free projections only) for a parent's fused op."""
        if copy_params:
            if self.bias is not None:
                raise ValueError("copy_params is for bias-free projections")
            return self.weight.clone()
        y = self.weight @ x
        return y if self.bias is None else y + self.bias[:, None]


class CoreParams(NamedTuple):
    """Copies of one ``SelectiveSSM``'s parameters, as a fused op takes them."""

    conv_weight: torch.Tensor  # (d, k)
    conv_bias: torch.Tensor  # (d,)
    x_proj: torch.Tensor  # (r + 2n, d)
    dt_weight: torch.Tensor  # (d, r)
    dt_bias: torch.Tensor  # (d,) fp32
    A: torch.Tensor  # (d, n) fp32
    D: torch.Tensor  # (d,) fp32


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
        self.conv1d = CausalConv1d(d_inner, d_conv)
        self.x_proj = ChannelProjection(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = DeltaProjection(dt_rank, d_inner, bias=True)
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
        """Conv + projections: x (b, d_inner, l) -> (u, Δ, B, C, Δ bias) in scan layout.

        With ``conv_tail`` (b, d_inner, k-1) the conv continues a previous chunk; ``reverse``
        makes the conv anti-causal (the core run backwards in time). Every child runs through
        its own forward (see ``CausalConv1d`` for why).
        """
        x = self.conv1d(x, conv_tail, reverse=reverse, **self.kernel_kwargs)
        x_dbl = self.x_proj(x)  # (b, r + 2n, l), channels first as the scan takes them
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=1)
        dt, dt_bias = self.dt_proj(dt)
        return x, dt, B.contiguous(), C.contiguous(), dt_bias

    def scan_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, D) in fp32, as the scan takes them."""
        return -torch.exp(self.A_log.float()), self.D.float()

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
            u, dt, B, C, dt_bias = self.scan_inputs(x, tail)
        else:
            u, dt, B, C, dt_bias = self.scan_inputs(x, reverse=reverse)
        A, D = self.scan_params()
        out = selective_scan(
            u, dt, A, B, C, D, z, dt_bias, True, return_state, ssm_state, reverse,
            **self.kernel_kwargs,
        )  # fmt: skip
        if not return_state:
            return out, None
        y, ssm_state = out
        return y, (conv_state, ssm_state)

    def forward(
        self,
        x: torch.Tensor | None,
        z: torch.Tensor | None = None,
        reverse: bool = False,
        inputs_only: bool = False,
        copy_params: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The core alone: x, z (b, d_inner, l) -> y (b, d_inner, l), backwards in time if
        ``reverse`` (``Mamba`` overrides this with the whole mixer).

        For a parent that batches several cores into one op (``BiMamba``): ``inputs_only``
        returns the scan's inputs (u, Δ, B, C, Δ bias, A, D) instead; ``copy_params``
        returns copies of all parameters (``CoreParams``; x unused). Both are made here
        and in the children's forwards, so every parameter is read inside its owner's
        forward (see ``CausalConv1d``).
        """
        if copy_params:
            conv_w, conv_b = self.conv1d(None, copy_params=True)
            dt_w, dt_b = self.dt_proj(None, copy_params=True)
            A, D = self.scan_params()
            return CoreParams(conv_w, conv_b, self.x_proj(None, copy_params=True), dt_w, dt_b, A, D)
        if inputs_only:
            return (*self.scan_inputs(x, reverse=reverse), *self.scan_params())
        return self.ssm(x, z, reverse=reverse)[0]

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


def _group_matmul(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """weight (g, o, i) @ x (b, g, i, l) -> (b, g, o, l), one weight per group.

    For long sequences a batched matmul over (b, g) is fastest; for short ones those b·g
    products are too small to run efficiently, and one matmul per group over all b·l columns
    (einsum permutes x) is faster, forward and backward. The switch at l = 64 is where the two
    were about equal on the CPU this was written on.
    """
    if x.shape[-1] >= 64:
        return weight @ x
    return torch.einsum("goi,bgil->bgol", weight, x)


class BiMamba(TemporalMixer):
    """Bidirectional Mamba: shared projections, a forward and a time-flipped causal core.

    in_proj (2x expansion) -> [core(x) + flip(core_b(flip(x)))] ⊙ SiLU(z) -> out_proj.

    Both cores run in one selective-scan call (issue 20): their inputs are stacked along the
    channels, as two groups of B/C, with the backward core fed the time-flipped sequence, so
    one flip in and one out replace the reverse scan's four input flips and output flip, and
    the scan's per-call costs are paid once. ``fused = False`` (a runtime attribute, never
    saved) keeps the two per-direction calls, so a benchmark measures both in one run.

    On CPU the fused path is also flip-free (``_both_directions_stacked``); ``stacked =
    False`` (runtime, never saved) keeps the flipped one-call path there, for the same kind
    of comparison. Other devices always take the flipped path, whose conv and scan run on
    the CUDA kernels.

    On CPU in float32 the flip-free path runs channels-last (``ops.channels_last``): convs
    and scans read in_proj's token-major output as it is and write what out_proj takes, so
    no (b, d, l) layout is made, and the kernels vectorise over channels, which keeps short
    clips cheap. ``channels_last = False`` (runtime, never saved) keeps the row kernels.
    """

    fused: bool = True
    stacked: bool = True
    channels_last: bool = True

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
        xz = self.in_proj(x)  # (N, T, 2·d_inner), token-major
        if self._channels_last_serves(xz):
            return self.out_proj(self._core_channels_last(xz))
        xz = rearrange(xz, "b l e -> b e l")
        xs, z = xz.chunk(2, dim=1)
        # The cores run through their forward (not `.ssm`): see CausalConv1d for why.
        if self.fused and self.stacked and xs.device.type == "cpu":
            y = self._both_directions_stacked(xs)
        elif self.fused:
            y = self._both_directions(xs)
        else:
            y_fwd = self.forward_ssm(xs)
            y_bwd = self.backward_ssm(xs, reverse=True)  # the backward core runs back in time
            y = y_fwd + y_bwd
        y = y * F.silu(z)
        return self.out_proj(rearrange(y, "b e l -> b l e"))

    def _channels_last_serves(self, xz: torch.Tensor) -> bool:
        """Whether this call takes the channels-last path (see the class docstring)."""
        core = self.forward_ssm
        return (
            self.fused
            and self.stacked
            and self.channels_last
            and self.kernels != "torch"
            # Only xz is looked at here: a parameter is read in its owner's forward only (see
            # CausalConv1d); float32 xz means float32 weights outside autocast, and the ops
            # reject any other dtype by name.
            and channels_last.usable(xz, core.d_inner)
        )

    def _core_channels_last(self, xz: torch.Tensor) -> torch.Tensor:
        """xz (b, l, 2·d_inner), in_proj's output -> [core(x) + flip(core_b(flip(x)))] ⊙
        SiLU(z) (b, l, d_inner): everything up to out_proj in one op
        (``ops.channels_last.bimamba_core``)."""
        f = self.forward_ssm(None, copy_params=True)
        r = self.backward_ssm(None, copy_params=True)
        return channels_last.bimamba_core(xz, f, r)

    def _both_directions_stacked(self, xs: torch.Tensor) -> torch.Tensor:
        """xs (b, d, l) -> core(xs) + flip(core_b(flip(xs))) (b, d, l), flip-free (CPU).

        The backward core is run as what it is, an anti-causal conv and a scan from the last
        step to the first (``reverse_groups``, index arithmetic in the C kernel), on the
        unflipped input. Both cores' convs write one stacked (b, 2d, l) tensor and their
        x/Δ projections are one batched matmul each, so there are no flipped copies and no
        channel concatenations of (b, d, l) tensors, forward or backward.
        """
        f = self.forward_ssm(None, copy_params=True)
        r = self.backward_ssm(None, copy_params=True)
        b, d, length = xs.shape
        u = depthwise_conv_groups(
            xs, torch.stack([f.conv_weight, r.conv_weight]),
            torch.stack([f.conv_bias, r.conv_bias]), (False, True),
            native=self.kernels != "torch",
        )  # fmt: skip
        x_dbl = _group_matmul(torch.stack([f.x_proj, r.x_proj]), u.view(b, 2, d, length))
        core = self.forward_ssm
        dt, B, C = torch.split(x_dbl, [core.dt_rank, core.d_state, core.d_state], dim=2)
        dt = _group_matmul(torch.stack([f.dt_weight, r.dt_weight]), dt).reshape(b, 2 * d, length)
        y = selective_scan(
            u, dt, torch.cat([f.A, r.A]), B.contiguous(), C.contiguous(),
            torch.cat([f.D, r.D]), None, torch.cat([f.dt_bias, r.dt_bias]), True,
            reverse_groups=1, **self.kernel_kwargs,
        )  # fmt: skip
        return y.view(b, 2, d, length).sum(1)

    def _both_directions(self, xs: torch.Tensor) -> torch.Tensor:
        """xs (b, d, l) -> core(xs) + flip(core_b(flip(xs))) (b, d, l) in one scan call."""
        u_f, dt_f, B_f, C_f, bias_f, A_f, D_f = self.forward_ssm(xs, inputs_only=True)
        u_b, dt_b, B_b, C_b, bias_b, A_b, D_b = self.backward_ssm(xs.flip(-1), inputs_only=True)
        y = selective_scan(
            torch.cat([u_f, u_b], dim=1),  # (b, 2d, l): channel group 0 forward, 1 backward
            torch.cat([dt_f, dt_b], dim=1),
            torch.cat([A_f, A_b]),
            torch.stack([B_f, B_b], dim=1),  # (b, 2, n, l)
            torch.stack([C_f, C_b], dim=1),
            torch.cat([D_f, D_b]),
            None,
            torch.cat([bias_f, bias_b]),
            True,
            **self.kernel_kwargs,
        )
        # chunk, not two slices: its backward is one cat, a slice's a zero fill and a copy.
        y_f, y_b = y.chunk(2, dim=1)
        return y_f + y_b.flip(-1)
