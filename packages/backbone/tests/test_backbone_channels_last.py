"""The channels-last C kernels of BiMamba (ops/channels_last.py) against float64 references.

References are plain PyTorch in float64 on the other layout: ``F.conv1d`` per group (the
anti-causal one on time-flipped input) and ``selective_scan_ref`` per group (the reversed one
on time-flipped input), with autograd for every gradient.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from cinemamba_backbone.mixers import MixerOptions, build_mixer
from cinemamba_backbone.ops import channels_last, selective_scan_ref

needs_cc = pytest.mark.skipif(
    shutil.which(os.environ.get("CC") or "cc") is None, reason="no C compiler to build kernels"
)
pytestmark = needs_cc


def _scaled_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, name: str) -> None:
    """max |actual - expected| <= tol · max |expected|."""
    err = (actual.double() - expected.double()).abs().max().item()
    scale = expected.double().abs().max().item()
    assert err <= tol * scale + 1e-12, f"{name}: error {err:.3g} vs scale {scale:.3g}"


def _conv_ref(x, weight, bias, reverse, activation):
    """float64 F.conv1d per group on (b, d, l); anti-causal = flip, causal conv, flip."""
    xt = x.transpose(1, 2)  # (b, d, l)
    outs = []
    for g, rev in enumerate(reverse):
        xi = xt.flip(-1) if rev else xt
        k = weight.shape[-1]
        y = F.conv1d(F.pad(xi, (k - 1, 0)), weight[g][:, None], bias[g] if bias is not None else None,
                     groups=weight.shape[1])  # fmt: skip
        y = F.silu(y) if activation else y
        outs.append((y.flip(-1) if rev else y).transpose(1, 2))
    return torch.stack(outs)  # (G, b, l, d)


@pytest.mark.parametrize(("b", "length", "d", "k", "reverse", "bias", "activation"), [
    (3, 8, 32, 4, (False, True), True, True),
    (2, 5, 16, 3, (True, False, True), False, True),
    (1, 2, 16, 4, (False, True), True, False),  # shorter than the kernel
    (2, 37, 48, 4, (False,), True, True),
])  # fmt: skip
def test_conv_groups_match_float64_conv1d(b, length, d, k, reverse, bias, activation):
    g = torch.Generator().manual_seed(length + d)
    groups = len(reverse)
    # x is a channel slice of a wider token-major tensor, as in_proj's output is.
    wide = torch.randn(b, length, 2 * d, generator=g, dtype=torch.float64)
    w = torch.randn(groups, d, k, generator=g, dtype=torch.float64) * 0.5
    bvec = torch.randn(groups, d, generator=g, dtype=torch.float64) if bias else None
    gy = torch.randn(groups, b, length, d, generator=g, dtype=torch.float64)

    def run(fn, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (wide, w) + ((bvec,) if bias else ())]
        x = leaves[0][..., :d]
        out = fn(x, leaves[1], leaves[2] if bias else None, reverse, activation)
        grads = torch.autograd.grad((out * gy.to(dtype)).sum(), leaves)
        return out, grads

    y_ref, g_ref = run(_conv_ref, torch.float64)
    y, grads = run(channels_last.conv_groups, torch.float32)
    assert y.shape == (groups, b, length, d)
    tol = 20 * torch.finfo(torch.float32).eps
    _scaled_close(y, y_ref, tol, "y")
    names = ("x", "weight", "bias")[: len(g_ref)]
    for name, a, e in zip(names, grads, g_ref, strict=True):
        _scaled_close(a, e, tol * max(1, length), name)


def _scan_ref(u, x_dbl, dt_weight, dt_bias, A, D, reverse_groups):
    """float64 per group: Δ = dt_weight @ x_dbl[:r] in plain matmul, then selective_scan_ref
    (bias + softplus) on (b, d, l), reversed groups on time-flipped inputs."""
    groups, n, r = u.shape[0], A.shape[-1], dt_weight.shape[-1]
    outs = []
    for g in range(groups):
        rev = g >= groups - reverse_groups

        def lay(t, rev=rev):  # (b, l, c) -> (b, c, l), flipped in time if reversed
            t = t.transpose(1, 2)
            return t.flip(-1) if rev else t

        delta = x_dbl[g, ..., :r] @ dt_weight[g].T  # (b, l, d)
        B, C = x_dbl[g, ..., r : r + n], x_dbl[g, ..., r + n : r + 2 * n]
        y = selective_scan_ref(lay(u[g]), lay(delta), A[g], lay(B), lay(C), D[g], None,
                               dt_bias[g], True)  # fmt: skip
        outs.append((y.flip(-1) if rev else y).transpose(1, 2))
    return torch.stack(outs)


@pytest.mark.parametrize(("groups", "reverse_groups", "b", "length", "d", "n", "r"), [
    (2, 1, 3, 8, 32, 16, 4),
    (2, 1, 2, 70, 16, 16, 3),  # more than one checkpoint block (32)
    (3, 2, 2, 13, 16, 8, 2),
    (1, 0, 2, 1, 16, 5, 1),  # one step; the generic state size
])  # fmt: skip
def test_scan_groups_match_float64_reference(groups, reverse_groups, b, length, d, n, r):
    g = torch.Generator().manual_seed(b * length + d + n)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    u = rnd(groups, b, length, d)
    x_dbl = rnd(groups, b, length, r + 2 * n + 2)  # two trailing columns the scan never reads
    x_dbl[0, 0, ::3, 0] += 30.0  # Δ past softplus's linear threshold (20) at some steps
    dt_weight = rnd(groups, d, r, scale=0.5)
    dt_weight[0, :2, 0] = 1.0
    A = -torch.rand(groups, d, n, generator=g, dtype=torch.float64) * 2 - 0.1
    D, dt_bias = rnd(groups, d), rnd(groups, d, scale=0.5) - 3.0  # most Δ small, as in Mamba
    gy = rnd(groups, b, length, d)

    def run(fn, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (u, x_dbl, dt_weight, dt_bias, A, D)]
        y = fn(*leaves, reverse_groups)
        return y, torch.autograd.grad((y * gy.to(dtype)).sum(), leaves)

    y_ref, g_ref = run(_scan_ref, torch.float64)
    y, grads = run(channels_last.scan_groups, torch.float32)
    # exp(Δ·A) in fp32 is off by about eps·|Δ·A|: the tolerance grows with the largest Δ.
    raw = torch.einsum("gblr,gdr->gbld", x_dbl[..., :r], dt_weight) + dt_bias[:, None, None]
    big = max(1.0, F.softplus(raw).max().item())
    tol = 100 * torch.finfo(torch.float32).eps * big
    _scaled_close(y, y_ref, tol, "y")
    names = ("u", "x_dbl", "dt_weight", "dt_bias", "A", "D")
    for name, a, e in zip(names, grads, g_ref, strict=True):
        _scaled_close(a, e, 2 * tol, name)
    assert grads[1][..., r + 2 * n :].abs().max() == 0  # the columns the scan never reads


def test_scan_groups_rejects_bad_shapes():
    u = torch.zeros(2, 1, 4, 16)
    x_dbl = torch.zeros(2, 1, 4, 4 + 32)
    w, A, D = torch.zeros(2, 16, 4), -torch.ones(2, 16, 16), torch.zeros(2, 16)
    with pytest.raises(ValueError, match="x_dbl"):
        channels_last.scan_groups(u, x_dbl[..., :20], w, D, A, D)
    with pytest.raises(ValueError, match="reverse_groups=3"):
        channels_last.scan_groups(u, x_dbl, w, D, A, D, reverse_groups=3)
    with pytest.raises(ValueError, match="D has shape"):
        channels_last.scan_groups(u, x_dbl, w, D, A, D[:1])
    with pytest.raises(ValueError, match="dt_weight"):
        channels_last.scan_groups(u, x_dbl, w[:, :8], D, A, D)


def test_usable_needs_float32_and_whole_vectors_of_channels():
    x = torch.zeros(1, 2, 16)
    assert channels_last.usable(x, 32)
    assert not channels_last.usable(x, 24)
    assert not channels_last.usable(x.double(), 32)
    with pytest.raises(ValueError, match="weight is torch.bfloat16"):
        channels_last.conv_groups(x, torch.zeros(2, 16, 4, dtype=torch.bfloat16), None,
                                  (False, True))  # fmt: skip


@pytest.mark.parametrize("length", [8, 40])
def test_bimamba_channels_last_matches_its_row_kernel_path(length):
    """One BiMamba, the channels-last path against its flip-free row-kernel path (the same
    math on the other layout): outputs and every parameter's gradient."""
    torch.manual_seed(0)
    mixer = build_mixer("bimamba", 32, MixerOptions())
    with torch.no_grad():  # D and the conv bias away from their init, so their paths count
        for core in (mixer.forward_ssm, mixer.backward_ssm):
            core.D.uniform_(-1, 1)
            core.conv1d.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, length, 32)

    def run(channels_last_path):
        mixer.channels_last = channels_last_path
        mixer.zero_grad()
        y = mixer(x)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        return y.detach(), {k: p.grad.clone() for k, p in mixer.named_parameters()}

    y_rows, g_rows = run(False)
    y_cl, g_cl = run(True)
    tol = 100 * torch.finfo(torch.float32).eps
    _scaled_close(y_cl, y_rows, tol, "y")
    for name in g_rows:
        _scaled_close(g_cl[name], g_rows[name], tol, name)
