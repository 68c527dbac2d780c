"""BiMamba's channels-last core (ops/channels_last.py) against a float64 reference.

The reference is plain PyTorch in float64 on the other layout: ``F.conv1d``, matmuls and
``selective_scan_ref`` per direction (the backward one on time-flipped input), with autograd
for every gradient; and the mixer's row-kernel path for the whole layer.
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


PARAMS = ("conv_weight", "conv_bias", "x_proj", "dt_weight", "dt_bias", "A", "D")


def _core_ref(xz, *params):
    """float64 BiMamba core from plain ops: per direction F.conv1d + SiLU, x_proj and dt_proj
    as matmuls, selective_scan_ref (bias + softplus, D skip); the backward direction on
    time-flipped input with its output flipped back; then (y_f + y_b) ⊙ SiLU(z)."""
    d = xz.shape[-1] // 2
    x, z = xz[..., :d].transpose(1, 2), xz[..., d:]  # x (b, d, l)
    total = 0
    for g, core in enumerate((params[:7], params[7:])):
        conv_weight, conv_bias, x_proj, dt_weight, dt_bias, A, D = core
        r, n, k = dt_weight.shape[-1], A.shape[-1], conv_weight.shape[-1]
        xi = x.flip(-1) if g else x
        u = F.silu(F.conv1d(F.pad(xi, (k - 1, 0)), conv_weight[:, None], conv_bias, groups=d))
        x_dbl = torch.einsum("od,bdl->bol", x_proj, u)  # (b, r + 2n, l)
        delta = torch.einsum("dr,brl->bdl", dt_weight, x_dbl[:, :r])
        y = selective_scan_ref(u, delta, A, x_dbl[:, r : r + n], x_dbl[:, r + n :], D, None,
                               dt_bias, True)  # fmt: skip
        total = total + (y.flip(-1) if g else y)
    return total.transpose(1, 2) * F.silu(z)


def _core_inputs(b, length, d, n, r, k, seed):
    """xz (a slice of a wider tensor: strided rows) and two cores' parameters, float64."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    def core():
        dt_weight = rnd(d, r, scale=0.5)
        dt_weight[:2] = 8.0  # a few Δ past softplus's linear threshold (20)
        return [
            rnd(d, k, scale=0.5), rnd(d, scale=0.5), rnd(r + 2 * n, d, scale=0.5), dt_weight,
            rnd(d, scale=0.5) - 3.0,  # most Δ small, as at Mamba's init
            -torch.rand(d, n, generator=g, dtype=torch.float64) * 2 - 0.1, rnd(d),
        ]  # fmt: skip

    return rnd(b, length, 2 * d + 8)[..., : 2 * d], core() + core()


@pytest.mark.parametrize(("b", "length", "d", "n", "r", "k"), [
    (3, 8, 32, 16, 4, 4),  # a short clip, the case
    (2, 70, 16, 16, 3, 4),  # more than one checkpoint block (32)
    (2, 2, 16, 8, 2, 4),  # shorter than the conv
    (1, 13, 16, 5, 1, 3),  # the generic state size and conv width
])  # fmt: skip
def test_core_matches_float64_reference(b, length, d, n, r, k):
    """Outputs and the gradients of xz and of both cores' parameters against the reference."""
    xz, params = _core_inputs(b, length, d, n, r, k, seed=b * length + d + n)
    gout = torch.randn(b, length, d, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64)  # fmt: skip

    def run(fn, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (xz, *params)]
        out = fn(*leaves) if fn is _core_ref else fn(leaves[0], leaves[1:8], leaves[8:])
        return out, torch.autograd.grad((out * gout.to(dtype)).sum(), leaves)

    y_ref, g_ref = run(_core_ref, torch.float64)
    y, grads = run(channels_last.bimamba_core, torch.float32)
    # exp(Δ·A) in fp32 is off by about eps·|Δ·A|: the tolerance grows with the largest Δ
    # (about 25 here, on the channels whose dt_weight is 8).
    tol = 100 * torch.finfo(torch.float32).eps * 25
    _scaled_close(y, y_ref, tol, "out")
    names = ["xz"] + [f"{core}.{p}" for core in ("forward", "backward") for p in PARAMS]
    for name, a, e in zip(names, grads, g_ref, strict=True):
        assert a.shape == e.shape, name
        _scaled_close(a, e, 2 * tol, name)


def test_core_rejects_bad_inputs_by_name():
    xz, params = _core_inputs(1, 4, 16, 16, 4, 4, seed=0)
    xz, params = xz.float(), [p.float() for p in params]
    fw, bw = params[:7], params[7:]
    with pytest.raises(ValueError, match="backward core's A has shape"):
        channels_last.bimamba_core(xz, fw, [*bw[:5], bw[5][:8], bw[6]])
    with pytest.raises(ValueError, match="forward core's x_proj has shape"):
        channels_last.bimamba_core(xz, [*fw[:2], fw[2][:-1], *fw[3:]], bw)
    with pytest.raises(ValueError, match="forward core's D is torch.bfloat16"):
        channels_last.bimamba_core(xz, [*fw[:6], fw[6].bfloat16()], bw)
    with pytest.raises(ValueError, match="each core takes 7 parameters"):
        channels_last.bimamba_core(xz, fw[:6], bw)
    with pytest.raises(ValueError, match="multiple of 16"):
        channels_last.bimamba_core(
            xz[..., :16],
            *[[p[:8] if p.shape[0] == 16 else p[:, :8] for p in core] for core in (fw, bw)],
        )


def test_usable_needs_float32_and_whole_vectors_of_channels():
    x = torch.zeros(1, 2, 16)
    assert channels_last.usable(x, 32)
    assert not channels_last.usable(x, 24)
    assert not channels_last.usable(x.double(), 32)


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
