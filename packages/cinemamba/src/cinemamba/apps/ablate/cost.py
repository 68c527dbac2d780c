"""Cost of a backbone for the ablation: parameters, counted training FLOPs per step, measured
step time, and matching a candidate's cost to a reference's (`match: params | flops`).

FLOPs are counted, not estimated from a formula of the architecture, so the matching works
for any mixer the config can build: `torch.utils.flop_counter.FlopCounterMode` counts the
matmuls, convolutions and scaled-dot-product attention of one forward + backward; the
selective scan (a custom autograd function FlopCounterMode does not see) is added by the
formula in `scan_flops`, and BiMamba's channels-last CPU core (scans and dt_proj inside a C
kernel) by `core_flops`. Elementwise ops (norms, activations, adaLN modulation) are not counted.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from cinemamba.config import ConfigError
from cinemamba_backbone import BackboneConfig, VideoDiT

MATCH_MODES = ("none", "params", "flops")
TOLERANCE = 0.02  # relative cost difference a matched candidate may keep
WIDTH_RANGE = (0.25, 4.0)  # searched hidden sizes, as multiples of the reference's
MLP_RANGE = (0.25, 8.0)  # searched MLP hidden sizes, as multiples of the width

Shapes = tuple[tuple[int, ...], tuple[int, int], int]  # latent (C, t, h, w), text (L, D), batch


def check_match(mode: str) -> None:
    """Raise a ConfigError naming the valid values when `mode` is not one of them."""
    if mode not in MATCH_MODES:
        raise ConfigError(f"ablation `match`={mode!r} is not valid; valid: {list(MATCH_MODES)}")


def count_params(arch: BackboneConfig) -> int:
    """Parameters of a VideoDiT built from `arch`."""
    return sum(p.numel() for p in VideoDiT(arch).parameters())


def scan_flops(u: torch.Tensor, B: torch.Tensor) -> int:
    """FLOPs of one selective scan call, forward + backward: 9·b·d·l·n forward (mamba_ssm's
    count: exp(Δ·A), Δ·B·u, the state update h = dA·h + dBu and the C·h readout per state
    element) and twice that backward, the convention FlopCounterMode uses for matmuls."""
    b, d, length = u.shape
    n = B.shape[-2]
    return 3 * 9 * b * d * length * n


def core_flops(xz: torch.Tensor, forward_core: Sequence[torch.Tensor]) -> int:
    """FLOPs of BiMamba's channels-last core that FlopCounterMode cannot see, forward +
    backward: both directions' scans (`scan_flops` over 2·d channels) and their dt_proj
    matmuls, fused into the C kernel (2·b·l·r·d forward and twice that backward each, as
    FlopCounterMode counts the same matmul on the other paths). Its x_proj is a counted bmm."""
    b, length, two_d = xz.shape
    d, r, n = two_d // 2, forward_core[3].shape[-1], forward_core[5].shape[-1]
    return 3 * 9 * b * two_d * length * n + 2 * 3 * 2 * b * length * r * d


@contextlib.contextmanager
def _counting_scans(counter: list[int]) -> Iterator[None]:
    """Add every selective scan call's `scan_flops`, and every channels-last BiMamba core's
    `core_flops`, to `counter[0]` while active. The mixers call them through
    `cinemamba_backbone.mixers.mamba` (`selective_scan`) and the `channels_last` module
    (`bimamba_core`), so those names are wrapped."""
    from cinemamba_backbone.mixers import mamba
    from cinemamba_backbone.ops import channels_last

    original, original_core = mamba.selective_scan, channels_last.bimamba_core

    def counted(u, delta, A, B, C, *args, **kwargs):
        counter[0] += scan_flops(u, B)
        return original(u, delta, A, B, C, *args, **kwargs)

    def counted_core(xz, forward_core, backward_core):
        counter[0] += core_flops(xz, forward_core)
        return original_core(xz, forward_core, backward_core)

    mamba.selective_scan, channels_last.bimamba_core = counted, counted_core
    try:
        yield
    finally:
        mamba.selective_scan, channels_last.bimamba_core = original, original_core


def _inputs(arch: BackboneConfig, shapes: Shapes, batch: int) -> tuple[torch.Tensor, ...]:
    latent, text, _ = shapes
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(batch, *latent, generator=g),
        torch.rand(batch, generator=g),
        torch.randn(batch, *text, generator=g),
        torch.ones(batch, text[0], dtype=torch.bool),
        torch.randn(batch, text[1], generator=g),
    )


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:  # noqa: ANN001
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flops(
    grad_shape, query_shape, key_shape, value_shape, *args, **kwargs
) -> int:  # noqa: ANN001, E501
    return sdpa_backward_flop_count(grad_shape, query_shape, key_shape, value_shape)


# FlopCounterMode has formulas for the CUDA attention kernels but not for the CPU flash kernel
# SDPA takes here, whose calls it would count as 0 (the attention core of every attention
# mixer, the spatial attention and the full-3D block went uncounted): the same formulas as
# for the CUDA kernels (4·b·h·Lq·Lk·d forward; backward 10·b·h·Lq·Lk·d, as flash attention
# recomputes Q·K^T).
ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops,
}


def count_flops(fn: Callable[[], None]) -> int:
    """FLOPs FlopCounterMode counts in `fn()` (with `ATTENTION_FLOPS`), plus the selective
    scans' (`scan_flops`)."""
    scans = [0]
    with (
        FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOPS) as mode,
        _counting_scans(scans),
    ):
        fn()
    return int(mode.get_total_flops()) + scans[0]


def train_flops(arch: BackboneConfig, shapes: Shapes) -> int:
    """Counted FLOPs of one training micro-batch (forward + backward of the MSE of the
    output). Counted at batch 1 and multiplied by the micro-batch: every counted op is linear
    in the batch, and batch 1 keeps the count (run at every search step) cheap."""
    torch.manual_seed(0)
    model = VideoDiT(arch)
    x, t, tokens, mask, pooled = _inputs(arch, shapes, 1)

    def step() -> None:
        model(x, t, tokens, mask, pooled).pow(2).mean().backward()

    return count_flops(step) * shapes[2]


def step_seconds(arch: BackboneConfig, shapes: Shapes, repeats: int = 5) -> float:
    """Median wall seconds of a training micro-batch's forward + backward (after one warm-up
    step), in this process, with its current torch threads."""
    torch.manual_seed(0)
    model = VideoDiT(arch)
    inputs = _inputs(arch, shapes, shapes[2])
    times = []
    for i in range(repeats + 1):
        started = time.perf_counter()
        model(*inputs).pow(2).mean().backward()
        if i:  # the first step allocates and picks kernels
            times.append(time.perf_counter() - started)
        model.zero_grad(set_to_none=True)
    return statistics.median(times)


# -------------------------------------------------------------------------------- matching


@dataclass
class Matched:
    """A candidate's matched architecture and how close it got."""

    arch: BackboneConfig
    cost: int
    target: int

    @property
    def error(self) -> float:
        """Relative cost difference to the reference."""
        return self.cost / self.target - 1


def _width_step(arch: BackboneConfig) -> int:
    """Widths must split into whole heads of even size (rotary positions rotate pairs)."""
    heads = {arch.num_heads, arch.temporal_heads or arch.num_heads}
    return math.lcm(*(2 * h for h in heads))


def _with(arch: BackboneConfig, width: int, mlp_hidden: int) -> BackboneConfig:
    # +0.5 so that int(width * mlp_ratio) (layers.Mlp) gives mlp_hidden despite float rounding.
    return replace(arch, hidden_size=width, mlp_ratio=(mlp_hidden + 0.5) / width)


def _valid(arch: BackboneConfig) -> bool:
    """Whether a VideoDiT of this width can be built (e.g. Mamba-2's head width must divide
    the expanded width): checked on a one-block-per-mixer model, to keep it cheap."""
    try:
        VideoDiT(replace(arch, depth=len(set(arch.block_mixers()))))
    except ValueError:
        return False
    return True


def _runs(arch: BackboneConfig, shapes: Shapes) -> bool:
    """Whether a batch-1 forward of the training clip works (some blocks check their sizes
    only there, e.g. how a head splits between rotary axes)."""
    x, t, tokens, mask, pooled = _inputs(arch, shapes, 1)
    try:
        with torch.no_grad():
            VideoDiT(arch)(x, t, tokens, mask, pooled)
    except (ValueError, RuntimeError):
        return False
    return True


def match_cost(reference: BackboneConfig, candidate: BackboneConfig, mode: str,
               shapes: Shapes | None = None) -> Matched:  # fmt: skip
    """`candidate` with its width (coarse) and MLP hidden size (fine) set so that its
    parameters (`mode="params"`) or counted training FLOPs per step (`"flops"`, needs `shapes`)
    are within 2 % of `reference`'s; with `shapes`, the match must also run a forward of that
    clip. Raises ValueError when no searched setting gets there."""
    check_match(mode)
    if mode == "flops" and shapes is None:
        raise ValueError("match='flops' needs the training clip shapes")
    cache: dict[tuple[int, int], int] = {}

    def cost(width: int, mlp_hidden: int) -> int:
        key = (width, mlp_hidden)
        if key not in cache:
            arch = _with(candidate, width, mlp_hidden)
            cache[key] = count_params(arch) if mode == "params" else train_flops(arch, shapes)
        return cache[key]

    target = count_params(reference) if mode == "params" else train_flops(reference, shapes)
    step = _width_step(candidate)
    ratio = reference.mlp_ratio
    widths = [
        w
        for w in range(step, int(reference.hidden_size * WIDTH_RANGE[1]) + 1, step)
        if w >= reference.hidden_size * WIDTH_RANGE[0] and _valid(replace(candidate, hidden_size=w))
    ]
    if not widths:
        raise ValueError(
            f"no valid width for {candidate.block_mixers()} near {reference.hidden_size}"
        )
    # Coarse: the widest width whose cost at the reference's MLP ratio stays under the target
    # (cost grows with width), then its neighbours, nearest first.
    lo, hi = 0, len(widths) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost(widths[mid], int(widths[mid] * ratio)) <= target:
            lo = mid
        else:
            hi = mid - 1
    order = sorted(range(len(widths)), key=lambda i: (abs(i - lo), i < lo))[:6]
    best: Matched | None = None
    for i in order:
        w = widths[i]
        # Fine: the MLP hidden size whose cost is nearest the target (cost grows with it).
        a, b = max(1, int(w * MLP_RANGE[0])), int(w * MLP_RANGE[1])
        while a < b:
            mid = (a + b) // 2
            if cost(w, mid) < target:
                a = mid + 1
            else:
                b = mid
        m = min((a, max(1, a - 1)), key=lambda k: abs(cost(w, k) - target))
        found = Matched(_with(candidate, w, m), cost(w, m), target)
        if best is None or abs(found.error) < abs(best.error):
            best = found
        if abs(found.error) <= TOLERANCE and (shapes is None or _runs(found.arch, shapes)):
            return found
    raise ValueError(
        f"match={mode}: no width in {widths[0]}..{widths[-1]} (step {step}) with MLP hidden "
        f"{MLP_RANGE[0]}..{MLP_RANGE[1]} x width brings {'+'.join(candidate.block_mixers())} "
        f"within {TOLERANCE:.0%} of the reference's {target}; nearest: {best.cost} "
        f"(width {best.arch.hidden_size}, {best.error:+.1%})"
    )
