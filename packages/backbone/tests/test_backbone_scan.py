"""Scan ops: fast CPU paths (C kernel and PyTorch) and chunked SSD against the float64
sequential references; the C kernel's exp, build cache and fallback without a compiler."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from cinemamba_backbone._kernels import KernelUnavailableError
from cinemamba_backbone.ops import (
    causal_conv1d,
    causal_conv1d_ref,
    causal_conv1d_torch,
    cpu_native,
    selective_scan,
    selective_scan_ref,
    selective_scan_torch,
    ssd_ref,
    ssd_torch,
)
from cinemamba_backbone.ops.conv import depthwise_conv_groups


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


def test_torch_scan_bf16_close_to_float64_reference():
    inputs = _scan_inputs(2, 8, 4, 17, 0, dtype=torch.bfloat16, seed=3)
    y, h, g = _run_scan(functools.partial(selective_scan_torch, native=False), inputs)
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


@pytest.mark.parametrize("native", [True, False])
def test_fast_scan_saves_at_most_4_bytes_per_state_element(native):
    b, d, n, length = 2, 16, 16, 256
    inputs = {k: v.float().requires_grad_() for k, v in _scan_inputs(b, d, n, length, 0).items()}
    elements = b * length * d * n
    # Checkpoints every K steps plus O(b·d·l) inputs; the reference keeps every ΔA and ΔBu.
    fast = functools.partial(selective_scan_torch, native=native)
    assert _saved_bytes(fast, inputs) <= 4 * elements
    assert _saved_bytes(selective_scan_ref, inputs) > 8 * elements


def test_scan_dispatch_arguments():
    x = _scan_inputs(1, 4, 2, 3, 0, dtype=torch.float32)
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"])
    torch.testing.assert_close(selective_scan(*args, kernels="torch"), selective_scan_ref(*args))
    with pytest.raises(KernelUnavailableError, match="selective_scan"):
        selective_scan(*args, require_kernels=True)
    with pytest.raises(ValueError, match="kernels"):
        selective_scan(*args, kernels="cuda")
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


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(("k", "length", "activation", "with_bias"),
                         [(4, 9, True, True), (2, 5, False, False), (4, 4, True, False)])  # fmt: skip
def test_depthwise_conv_function_gradients_match_conv1d_reference(
    k, length, activation, with_bias, reverse
):
    # The hand-written backward of the conv (both directions, with and without bias and
    # SiLU, length = k) against F.conv1d's autograd in float64; the anti-causal reference
    # is the flipped causal one.
    g = torch.Generator().manual_seed(k + length)
    x = torch.randn(3, 5, length, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, k, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    b = bias if with_bias else None
    leaves = (x, w, bias) if with_bias else (x, w)
    if reverse:
        want = causal_conv1d_ref(x.flip(-1), w, b, activation).flip(-1)
    else:
        want = causal_conv1d_ref(x, w, b, activation)
    got = causal_conv1d_torch(x, w, b, activation, reverse=reverse)
    assert got.grad_fn is not None and "DepthwiseConv" in type(got.grad_fn).__name__
    weights = torch.randn(got.shape, generator=g, dtype=torch.float64)
    g_want = torch.autograd.grad((want * weights).sum(), leaves)
    g_got = torch.autograd.grad((got * weights).sum(), leaves)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for name, a, e in zip(("x", "weight", "bias"), g_got, g_want, strict=False):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize(("k", "length", "activation", "with_bias"),
                         [(4, 9, True, True), (4, 3, True, True), (4, 2, True, False),
                          (3, 6, False, False), (4, 40, True, True)])  # fmt: skip
def test_grouped_conv_matches_per_group_conv1d_reference(
    k, length, activation, with_bias, native, monkeypatch: pytest.MonkeyPatch
):
    # BiMamba's stacked conv: G convs of one strided input, causal or anti-causal per group,
    # against F.conv1d's autograd per group in float64 (including sequences shorter than
    # the kernel, where the far taps see only padding and get a zero gradient): the PyTorch
    # path in float64, the C kernel (``native``) in float32.
    if native and not HAVE_CC:
        pytest.skip("no C compiler")
    calls = []
    monkeypatch.setattr(cpu_native, "conv_backward", _counted(cpu_native.conv_backward, calls))
    monkeypatch.setattr(cpu_native, "conv_forward", _counted(cpu_native.conv_forward, calls))
    g = torch.Generator().manual_seed(k * length)
    reverse = (False, True, False)
    base = torch.randn(3, length, 10, generator=g, dtype=torch.float64)
    x = base[..., :5].transpose(1, 2).requires_grad_()  # a strided (b, d, l) view
    w = torch.randn(3, 5, k, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = bias if with_bias else None
    leaves = (x, w, bias) if with_bias else (x, w)
    parts = []
    for i, rev in enumerate(reverse):
        bi = None if b is None else b[i]
        xi = x.flip(-1) if rev else x
        y = causal_conv1d_ref(xi, w[i], bi, activation)
        parts.append(y.flip(-1) if rev else y)
    want = torch.cat(parts, dim=1)
    dtype = torch.float32 if native else torch.float64
    cast = [t.to(dtype).detach().requires_grad_() for t in leaves]
    if native:  # the same strided layout in float32
        cast[0] = x.detach().transpose(1, 2).contiguous().to(dtype).transpose(1, 2)
        cast[0].requires_grad_()
    got = depthwise_conv_groups(
        cast[0], cast[1], cast[2] if with_bias else None, reverse, activation
    )
    assert got.shape == (3, 15, length) and got.is_contiguous() and got.dtype == dtype
    weights = torch.randn(got.shape, generator=g, dtype=torch.float64)
    g_want = torch.autograd.grad((want * weights).sum(), leaves)
    g_got = torch.autograd.grad((got * weights.to(dtype)).sum(), cast)
    assert len(calls) == (2 if native else 0)
    tol = 1e-12 if dtype == torch.float64 else 10 * torch.finfo(dtype).eps
    _assert_scaled_close(got, want, tol, "y")
    for name, a, e in zip(("x", "weight", "bias"), g_got, g_want, strict=False):
        _assert_scaled_close(a, e, tol * max(1, length**0.5), name)


def _counted(fn, calls):
    def counted(*args, **kwargs):
        calls.append(fn.__name__)
        return fn(*args, **kwargs)

    return counted


# ---- the C kernel (ops/cpu_native.py) ------------------------------------------------------
HAVE_CC = shutil.which(os.environ.get("CC") or "cc") is not None
needs_cc = pytest.mark.skipif(not HAVE_CC, reason="no C compiler ($CC or cc) to build the kernel")


@pytest.fixture
def fresh_load(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[None]:
    """An empty kernel cache and no cached load(); the real library is reloaded afterwards."""
    monkeypatch.setenv("CINEMAMBA_KERNEL_CACHE", str(tmp_path / "kernels"))
    cpu_native.load.cache_clear()
    yield
    cpu_native.load.cache_clear()


@pytest.fixture
def native_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts calls of the C kernel's forward and backward wrappers."""
    calls = {"scan_forward": 0, "scan_backward": 0}
    for name in calls:
        original = getattr(cpu_native, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(cpu_native, name, counted)
    return calls


def _assert_scaled_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, name: str):
    """max |actual - expected| <= tol · max |expected| (relative to the tensor's scale)."""
    err = (actual.double() - expected.double()).abs().max().item()
    scale = expected.double().abs().max().item()
    assert err <= tol * scale + 1e-12, f"{name}: error {err:.3g} vs scale {scale:.3g}"


SHAPES = [
    # (b, d, n, length, groups, block)
    (2, 6, 16, 1, 0, None),
    (2, 6, 16, 37, 2, None),
    (1, 4, 8, 70, 0, None),
    (3, 8, 5, 13, 2, 4),
    (2, 4, 16, 9, 0, 1),
]


@needs_cc
@pytest.mark.parametrize(("b", "d", "n", "length", "groups", "block"), SHAPES)
def test_native_scan_matches_float64_reference(b, d, n, length, groups, block, native_calls):
    inputs = _scan_inputs(b, d, n, length, groups, seed=length + n)
    y_ref, h_ref, g_ref = _run_scan(selective_scan_ref, inputs)
    f32 = {k: v.float() for k, v in inputs.items()}
    f32["u"] = f32["u"].transpose(1, 2).contiguous().transpose(1, 2)  # a strided view
    y, h, g = _run_scan(selective_scan_torch, f32, block=block)
    assert native_calls == {"scan_forward": 1, "scan_backward": 1}
    assert y.dtype == torch.float32 and h.dtype == torch.float32
    _assert_scaled_close(y, y_ref, 1e-5, "y")
    _assert_scaled_close(h, h_ref, 1e-5, "last state")
    for name in g_ref:
        _assert_scaled_close(g[name], g_ref[name], 2e-5, name)


@needs_cc
@pytest.mark.parametrize("softplus", [False, True])
def test_native_fused_delta_bias_softplus_and_d_skip(softplus, native_calls):
    # The kernel fuses Δ = softplus(delta + bias) and y += D·u: checked against the float64
    # reference with and without softplus, and with some Δ past softplus's linear threshold
    # (20), where the kernel must pass the value and a slope of 1 through as torch does.
    inputs = _scan_inputs(2, 6, 16, 29, 2, seed=11)
    inputs["delta"][0, :2, ::3] += 24.0
    if not softplus:  # positive Δ without the softplus (a small bias keeps it positive)
        inputs["delta"] = inputs["delta"].abs() * 0.2
        inputs["delta_bias"] = inputs["delta_bias"].abs() * 0.1
    args = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")

    def run(fn, x):
        leaves = {k: x[k].clone().requires_grad_() for k in args}
        y = fn(*leaves.values(), softplus)
        grads = torch.autograd.grad((y * y.detach().sin()).sum(), list(leaves.values()))
        return y, dict(zip(args, grads, strict=True))

    y_ref, g_ref = run(selective_scan_ref, inputs)
    y, g = run(selective_scan_torch, {k: v.float() for k, v in inputs.items()})
    assert native_calls == {"scan_forward": 1, "scan_backward": 1}
    # exp(Δ·A) in fp32 has a relative error of about eps·|Δ·A|, so the tolerance grows with
    # the largest Δ (about 25 here under softplus; the torch path's error is the same).
    big = max(1.0, (inputs["delta"] + inputs["delta_bias"][:, None]).max().item())
    _assert_scaled_close(y, y_ref, 1e-5 * big, "y")
    for name in args:
        _assert_scaled_close(g[name], g_ref[name], 2e-5 * big, name)


def _scan_by_groups(reverse_groups):
    """A selective_scan_ref per group of B/C, the last ``reverse_groups`` groups run on
    time-flipped inputs with their output flipped back (the definition of reverse_groups)."""

    def scan(u, delta, A, B, C, D, z, bias, softplus, return_last, h0):
        groups = 1 if B.dim() == 3 else B.shape[1]
        e = u.shape[1] // groups
        ys, hs = [], []
        for i in range(groups):
            ch = slice(i * e, (i + 1) * e)
            flip = (lambda t: t.flip(-1)) if i >= groups - reverse_groups else (lambda t: t)
            Bi, Ci = (B, C) if B.dim() == 3 else (B[:, i], C[:, i])
            y, h = selective_scan_ref(
                flip(u[:, ch]), flip(delta[:, ch]), A[ch], flip(Bi), flip(Ci), D[ch],
                flip(z[:, ch]), bias[ch], softplus, return_last, h0[:, ch],
            )  # fmt: skip
            ys.append(flip(y))
            hs.append(h)
        return torch.cat(ys, 1), torch.cat(hs, 1)

    return scan


@needs_cc
@pytest.mark.parametrize(("groups", "reverse_groups"), [(2, 1), (3, 2), (0, 1), (2, 2)])
@pytest.mark.parametrize("native", [True, False])
def test_scan_reverse_groups_match_per_group_flipped_reference(
    groups, reverse_groups, native, native_calls
):
    """Groups scanned backwards in time (one bidirectional call): the C kernel by index
    arithmetic, the PyTorch path by flipped copies, against a float64 reference per group."""
    inputs = _scan_inputs(2, 6, 16, 21, groups, seed=3 + groups)
    y_ref, h_ref, g_ref = _run_scan(_scan_by_groups(reverse_groups), inputs)
    x = {k: v.float() for k, v in inputs.items()} if native else inputs
    y, h, g = _run_scan(selective_scan_torch, x, native=native, reverse_groups=reverse_groups)
    calls = 1 if native else 0
    assert native_calls == {"scan_forward": calls, "scan_backward": calls}
    tol = 2e-5 if native else 1e-10
    _assert_scaled_close(y, y_ref, tol, "y")
    _assert_scaled_close(h, h_ref, tol, "last state")
    for name in g_ref:
        _assert_scaled_close(g[name], g_ref[name], tol, name)


@needs_cc
def test_native_softplus_slope_elementwise(native_calls):
    # With T = 1, A = 0, u = B = C = 1 and no initial state, y = softplus(x) + D, so the
    # gradient of the raw Δ is exactly the slope sigmoid(x), which the kernel forms from Δ
    # alone (series below Δ = 1/4, 1 - e^-Δ above): elementwise against float64 sigmoid,
    # across both branches and past the threshold 20.
    x = torch.linspace(-30.0, 30.0, 1201)
    d = x.numel()
    raw = x.view(1, d, 1).clone().requires_grad_()
    ones = torch.ones(1, 4, 1)
    y = selective_scan_torch(
        torch.ones(1, d, 1), raw, torch.zeros(d, 4), ones, ones / 4, torch.ones(d),
        delta_softplus=True,
    )  # fmt: skip
    (g,) = torch.autograd.grad(y.sum(), raw)
    assert native_calls == {"scan_forward": 1, "scan_backward": 1}
    want = torch.sigmoid(x.double())
    rel = ((g.flatten().double() - want) / want).abs()
    assert rel.max() < 8 * torch.finfo(torch.float32).eps, (rel.max(), x[rel.argmax()])


@needs_cc
def test_native_scan_without_initial_state_matches_torch_path(native_calls):
    x = {k: v.float() for k, v in _scan_inputs(3, 8, 16, 45, 2, seed=1).items()}
    outs = []
    for native in (True, False):
        leaves = {k: v.clone().requires_grad_() for k, v in x.items() if k != "initial_state"}
        y = selective_scan_torch(**leaves, delta_softplus=True, native=native)
        grads = torch.autograd.grad((y * y.detach().sin()).sum(), list(leaves.values()))
        outs.append((y, dict(zip(leaves, grads, strict=True))))
    assert native_calls == {"scan_forward": 1, "scan_backward": 1}
    (y_n, g_n), (y_t, g_t) = outs
    _assert_scaled_close(y_n, y_t, 1e-5, "y")
    for name in g_t:
        _assert_scaled_close(g_n[name], g_t[name], 2e-5, name)


@needs_cc
def test_native_scan_bf16_close_to_float64_reference(native_calls):
    inputs = _scan_inputs(2, 8, 16, 17, 0, dtype=torch.bfloat16, seed=3)
    y, h, g = _run_scan(selective_scan_torch, inputs)
    assert native_calls["scan_forward"] == 1
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32  # state kept in fp32
    y_ref, h_ref, g_ref = _run_scan(selective_scan_ref, {k: v.double() for k, v in inputs.items()})
    torch.testing.assert_close(y.double(), y_ref, rtol=3e-2, atol=3e-2)
    for name in g_ref:
        assert g[name].dtype == torch.bfloat16, name
        _assert_scaled_close(g[name], g_ref[name], 3e-2, name)


@needs_cc
def test_native_scan_threads_agree(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(cpu_native, "GRAIN", 1)  # threads even for this small call
    x = {k: v.float() for k, v in _scan_inputs(4, 8, 16, 40, 2, seed=5).items()}
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)  # the conftest fixture restores the setting
        results.append(_run_scan(selective_scan_torch, x))
    (y1, h1, g1), (y2, h2, g2) = results
    assert torch.equal(y1, y2) and torch.equal(h1, h2)  # rows never depend on the split
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-6, atol=1e-6, msg=name)


@needs_cc
def test_native_exp_accuracy_and_special_values():
    # With T = 1, h0 = 1 and u = 0 the last state is exactly exp(Δ·A) per state element.
    grid = torch.linspace(-86.9, 88.7, 4096, dtype=torch.float64)
    special = torch.tensor([0.0, -0.0, -87.2, -100.0, -1e30, -torch.inf, 88.9, 1e30, torch.inf])
    values = torch.cat([grid, special.double(), torch.tensor([torch.nan], dtype=torch.float64)])
    values = torch.cat([values, values.new_zeros(-values.numel() % 16)]).float()
    A = values.view(-1, 16)
    d = A.shape[0]
    ones, zeros = torch.ones(1, d, 1), torch.zeros(1, d, 1)
    _, last = selective_scan_torch(
        zeros, ones, A, torch.zeros(1, 16, 1), torch.ones(1, 16, 1),
        return_last_state=True, initial_state=torch.ones(1, d, 16),
    )  # fmt: skip
    got = last.flatten()[: values.numel()]
    want = torch.exp(values.double())
    rel = ((got[: grid.numel()].double() - want[: grid.numel()]) / want[: grid.numel()]).abs()
    assert rel.max() < 3e-7, rel.max()
    tail = got[grid.numel() : grid.numel() + len(special) + 1].tolist()
    assert tail[:2] == [1.0, 1.0]
    assert all(0.0 <= v < 1.7e-38 for v in tail[2:6])  # below -87: 0 (true value < 1.7e-38)
    assert tail[6:9] == [torch.inf] * 3
    assert tail[9] != tail[9]  # NaN stays NaN


@needs_cc
def test_large_state_float64_and_empty_stay_on_the_torch_path(native_calls):
    for x in (
        _scan_inputs(1, 2, cpu_native.MAX_STATE + 1, 3, 0, dtype=torch.float32),
        _scan_inputs(1, 2, 4, 3, 0),
        _scan_inputs(1, 2, 4, 0, 0, dtype=torch.float32),
    ):
        y = selective_scan_torch(x["u"], x["delta"], x["A"], x["B"], x["C"])
        assert y.shape == x["u"].shape
    assert native_calls["scan_forward"] == 0


def _native_log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "native CPU kernel" in r.getMessage()]


def test_missing_compiler_falls_back_to_torch_and_logs_once(
    monkeypatch: pytest.MonkeyPatch, fresh_load, caplog, native_calls
):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    x = _scan_inputs(2, 4, 16, 9, 0, dtype=torch.float32)
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"])
    with caplog.at_level(logging.INFO, logger="cinemamba_backbone.kernels"):
        y = selective_scan(*args)
        selective_scan(*args)
    assert native_calls["scan_forward"] == 0
    torch.testing.assert_close(y, selective_scan(*args, kernels="torch"), rtol=0, atol=0)
    lines = _native_log_lines(caplog)
    assert len(lines) == 1 and "/nonexistent/cc" in lines[0], lines


def test_native_scan_can_be_disabled(monkeypatch: pytest.MonkeyPatch, fresh_load, caplog):
    monkeypatch.setenv("CINEMAMBA_NATIVE_SCAN", "0")
    with caplog.at_level(logging.INFO, logger="cinemamba_backbone.kernels"):
        assert cpu_native.load() is None
        assert cpu_native.load() is None
    assert len(_native_log_lines(caplog)) == 1


@needs_cc
def test_compile_failure_logs_the_compiler_error(
    monkeypatch: pytest.MonkeyPatch, fresh_load, caplog, tmp_path
):
    broken = tmp_path / "broken.c"
    broken.write_text("this is not C;\n")
    monkeypatch.setattr(cpu_native, "SOURCES", (broken,))
    with caplog.at_level(logging.INFO, logger="cinemamba_backbone.kernels"):
        assert cpu_native.load() is None
    lines = _native_log_lines(caplog)
    assert len(lines) == 1 and "build failed" in lines[0] and "error" in lines[0], lines
    assert not list((tmp_path / "kernels").glob("*.tmp"))  # no temporary files left behind


@needs_cc
def test_second_load_reuses_the_cached_library(fresh_load, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="cinemamba_backbone.kernels"):
        assert cpu_native.load() is not None
    (library,) = (tmp_path / "kernels").glob("selective_scan_*.so")
    mtime = library.stat().st_mtime_ns
    assert [r for r in _native_log_lines(caplog) if "compiled" in r]
    cpu_native.load.cache_clear()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cinemamba_backbone.kernels"):
        assert cpu_native.load() is not None
    assert library.stat().st_mtime_ns == mtime
    assert not _native_log_lines(caplog)  # no recompilation
    assert [p.name for p in (tmp_path / "kernels").iterdir()] == [library.name]


@needs_cc
def test_builds_racing_for_one_library_all_end_with_a_whole_one(tmp_path):
    # Two ranks compiling at once: each writes its own temporary file, then renames it over
    # the library, so every rename leaves a complete library in place.
    compiler = [os.environ.get("CC") or "cc"]
    target = tmp_path / "selective_scan_test.so"
    with ThreadPoolExecutor(2) as pool:
        errors = list(
            pool.map(lambda _: cpu_native._compile(compiler, cpu_native.FLAGS, target), [0, 1])
        )
    assert errors == ["", ""]
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    assert ctypes.CDLL(str(target)).cm_max_state() == cpu_native.MAX_STATE


def test_xformers_without_compiled_ops_counts_as_missing(monkeypatch):
    """An xformers wheel built for another torch imports but has no compiled ops: attention
    must not pick it (it would fail at the first CUDA call)."""
    import sys
    import types

    from cinemamba_backbone import _kernels

    broken = types.ModuleType("xformers")
    broken._has_cpp_library = False
    broken.ops = types.ModuleType("xformers.ops")
    monkeypatch.setitem(sys.modules, "xformers", broken)
    monkeypatch.setitem(sys.modules, "xformers.ops", broken.ops)
    _kernels._xformers_ops.cache_clear()
    try:
        assert _kernels._xformers_ops() is None
        broken._has_cpp_library = True
        _kernels._xformers_ops.cache_clear()
        assert _kernels._xformers_ops() is broken.ops
    finally:
        _kernels._xformers_ops.cache_clear()
