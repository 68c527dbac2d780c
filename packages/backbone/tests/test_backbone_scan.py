"""Scan ops: fast CPU path and chunked SSD against the float64 sequential references."""

from __future__ import annotations

import pytest
import torch

from cinemamba_backbone._kernels import KernelUnavailableError
from cinemamba_backbone.ops import (
    causal_conv1d,
    causal_conv1d_ref,
    causal_conv1d_torch,
    selective_scan,
    selective_scan_ref,
    selective_scan_torch,
    ssd_ref,
    ssd_torch,
)


def _scan_inputs(b, d, n, length, groups, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    bc_shape = (b, n, length) if groups == 0 else (b, groups, n, length)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    return {
        "u": r(b, d, length),
        "delta": r(b, d, length, scale=0.5),
        "A": (-torch.rand(d, n, generator=g, dtype=torch.float64) * 2 - 0.1).to(dtype),
        "B": r(*bc_shape),
        "C": r(*bc_shape),
        "D": r(d),
        "z": r(b, d, length),
        "delta_bias": r(d, scale=0.5),
        "initial_state": r(b, d, n),
    }


def _run_scan(fn, inputs, **kw):
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    y, last = fn(
        leaves["u"],
        leaves["delta"],
        leaves["A"],
        leaves["B"],
        leaves["C"],
        leaves["D"],
        leaves["z"],
        leaves["delta_bias"],
        True,
        True,
        leaves["initial_state"],
        **kw,
    )
    # A loss that weights every output and the final state differently.
    w = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view_as(y)
    loss = (y.double() * w).sum() + (last.double() ** 2).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return y, last, dict(zip(leaves, grads, strict=True))


SHAPES = [
    # (b, d, n, length, groups, block)
    (2, 6, 4, 7, 0, None),
    (1, 4, 3, 1, 0, None),
    (3, 8, 5, 13, 2, 4),
    (2, 6, 16, 32, 3, 5),
    (1, 5, 2, 9, 0, 1),
]


@pytest.mark.parametrize(("b", "d", "n", "length", "groups", "block"), SHAPES)
def test_fast_scan_matches_reference_outputs_and_gradients(b, d, n, length, groups, block):
    inputs = _scan_inputs(b, d, n, length, groups, seed=length)
    y_ref, h_ref, g_ref = _run_scan(selective_scan_ref, inputs)
    y, h, g = _run_scan(selective_scan_torch, inputs, block=block)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-9, atol=1e-9, msg=name)


def test_fast_scan_bf16_close_to_float64_reference():
    inputs = _scan_inputs(2, 8, 4, 17, 0, dtype=torch.bfloat16, seed=3)
    y, h, g = _run_scan(selective_scan_torch, inputs)
    assert y.dtype == torch.bfloat16
    y_ref, h_ref, g_ref = _run_scan(selective_scan_ref, {k: v.double() for k, v in inputs.items()})
    torch.testing.assert_close(y.double(), y_ref, rtol=3e-2, atol=3e-2)
    for name in ("u", "delta", "B", "C", "z"):
        scale = g_ref[name].abs().max()
        err = (g[name].double() - g_ref[name]).abs().max()
        assert err <= 3e-2 * scale + 1e-2, name


def _saved_bytes(fn, inputs) -> int:
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(
            *(inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")),
            True,
        )
    return sum(saved)


def test_fast_scan_saves_at_most_4_bytes_per_state_element():
    b, d, n, length = 2, 16, 16, 256
    inputs = {k: v.float().requires_grad_() for k, v in _scan_inputs(b, d, n, length, 0).items()}
    elements = b * length * d * n
    # Checkpoints every K steps plus O(b·d·l) inputs; the reference keeps every ΔA and ΔBu.
    assert _saved_bytes(selective_scan_torch, inputs) <= 4 * elements
    assert _saved_bytes(selective_scan_ref, inputs) > 8 * elements


def test_scan_dispatch_arguments():
    x = _scan_inputs(1, 4, 2, 3, 0, dtype=torch.float32)
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"])
    torch.testing.assert_close(selective_scan(*args, kernels="torch"), selective_scan_ref(*args))
    with pytest.raises(KernelUnavailableError, match="selective_scan"):
        selective_scan(*args, require_kernels=True)
    with pytest.raises(ValueError, match="kernels"):
        selective_scan(*args, kernels="triton")
    with pytest.raises(KernelUnavailableError):
        causal_conv1d(x["u"], torch.randn(4, 4), None, require_kernels=True)


def _ssd_inputs(b, length, h, p, g, n, seed):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    return {
        "x": r(b, length, h, p),
        "dt": r(b, length, h, scale=0.5),
        "A": -torch.rand(h, generator=gen, dtype=torch.float64) * 2 - 0.1,
        "B": r(b, length, g, n),
        "C": r(b, length, g, n),
        "D": r(h),
        "z": r(b, length, h, p),
        "dt_bias": r(h, scale=0.5),
        "initial_state": r(b, h, p, n),
    }


@pytest.mark.parametrize(
    ("b", "length", "h", "p", "g", "n", "chunk"),
    [(2, 11, 4, 3, 2, 5, 4), (1, 1, 2, 4, 1, 3, 8), (2, 16, 2, 2, 1, 4, 16), (1, 9, 3, 2, 3, 2, 2)],
)
def test_chunked_ssd_matches_sequential_reference(b, length, h, p, g, n, chunk):
    inputs = _ssd_inputs(b, length, h, p, g, n, seed=length)
    results = []
    for fn, kw in ((ssd_ref, {}), (ssd_torch, {"chunk_size": chunk})):
        leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        y, s = fn(**leaves, dt_softplus=True, return_final_state=True, **kw)
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum() + (s**2).sum()
        results.append((y, s, torch.autograd.grad(loss, list(leaves.values()))))
    (y_ref, s_ref, g_ref), (y, s, grads) = results
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(s, s_ref, rtol=1e-9, atol=1e-9)
    for name, a, e in zip(inputs, grads, g_ref, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-8, atol=1e-8, msg=name)


def test_shift_add_causal_conv_matches_conv1d_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 9, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    results = []
    for fn in (causal_conv1d_ref, causal_conv1d_torch):
        y = fn(x, w, bias, True)
        results.append((y, torch.autograd.grad(y.sin().sum(), (x, w, bias))))
    torch.testing.assert_close(results[1][0], results[0][0])
    for a, e in zip(results[1][1], results[0][1], strict=True):
        torch.testing.assert_close(a, e)
    # A chunk with the previous tail equals the same frames of the full sequence.
    tail_out = causal_conv1d_torch(x[..., 5:], w, bias, True, initial=x[..., 2:5])
    torch.testing.assert_close(tail_out, results[0][0][..., 5:])
