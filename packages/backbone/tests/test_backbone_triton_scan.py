"""Triton selective scan against the float64 reference, and the scan dispatch.

CPU: the kernel runs under Triton's interpreter. ``@triton.jit`` reads TRITON_INTERPRET when
a module is executed, including triton.language's own functions at ``import triton``, so the
variable must be set before triton is first imported. Setting it for the whole test process
would make the ``cuda`` tests interpret too, so ``test_triton_kernel_under_interpreter``
runs this file's ``interpreted`` tests in one child pytest with TRITON_INTERPRET=1 (they
skip in the parent). ``cuda``-marked tests run the compiled kernel on a GPU.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from cinemamba_backbone import _kernels
from cinemamba_backbone._kernels import KernelUnavailableError, dispatch_plan, scan_path
from cinemamba_backbone.mixers import BiMamba
from cinemamba_backbone.ops import (
    causal_conv1d,
    causal_conv1d_ref,
    causal_conv1d_torch,
    selective_scan,
    selective_scan_ref,
    selective_scan_triton,
)

HAVE_TRITON = _kernels._triton() is not None
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interpreted_only = pytest.mark.skipif(
    not INTERPRETED, reason="runs in the child pytest of test_triton_kernel_under_interpreter"
)


@needs_triton
@pytest.mark.skipif(INTERPRETED, reason="this is the parent of the interpreted run")
def test_triton_kernel_under_interpreter():
    """Run the ``interpreted`` tests of this file in a child pytest with TRITON_INTERPRET=1."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
           "-k", "interpreted", "-m", "not cuda"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    report = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, report
    # Every interpreted case ran (none skipped, e.g. by a lost environment variable).
    assert f"{len(CASES) + 3} passed" in proc.stdout, report


def _inputs(b, d, n, length, *, groups=0, seed=0, device="cpu"):
    """Float64 scan inputs with the magnitudes of a trained layer (A < 0, Δ ~ softplus(·))."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device)

    bc = (b, groups, n, length) if groups else (b, n, length)
    return {
        "u": r(b, d, length),
        "delta": r(b, d, length, scale=0.5),
        "A": -torch.rand(d, n, generator=g, dtype=torch.float64).to(device) - 0.2,
        "B": r(*bc),
        "C": r(*bc),
        "D": r(d),
        "z": r(b, d, length),
        "delta_bias": r(d, scale=0.3),
        "initial_state": r(b, d, n),
    }


def _flip(x):
    return None if x is None else x.flip(-1)


def _reference(x, softplus, reverse):
    """float64 reference; ``reverse`` = flip time, scan, flip back (independent of the kernel)."""
    args = dict(x)
    if reverse:
        for k in ("u", "delta", "B", "C", "z"):
            args[k] = _flip(args.get(k))
    out, last = selective_scan_ref(**args, delta_softplus=softplus, return_last_state=True)
    return (out.flip(-1) if reverse else out), last


def _tol(dtype):
    """rtol for a result stored in ``dtype`` and computed with an fp32 state over ≤ 33 steps."""
    return 4 * max(torch.finfo(dtype).eps, 64 * torch.finfo(torch.float32).eps)


def _check(actual, expected, dtype, name):
    # Norm-scaled: bf16 rounding of a small element of a large tensor is relative to the scale.
    tol = _tol(dtype)
    scale = expected.abs().max().item()
    torch.testing.assert_close(
        actual.double(),
        expected,
        rtol=tol,
        atol=tol * max(scale, 1.0),
        msg=lambda m: f"{name}: {m}",
    )


def _run_parity(fn, x64, *, half, use, softplus, reverse, device="cpu"):
    """Run ``fn`` on the inputs cast as a mixed-precision layer does (u, Δ, B, C, z in
    ``half``; A, D, Δ bias, state in fp32), compare output, last state and all gradients to
    the float64 reference evaluated at exactly those (rounded) inputs."""
    cast = {
        k: v.to(half if k in ("u", "delta", "B", "C", "z") else torch.float32)
        for k, v in x64.items()
        if k in use
    }
    ref_in = {k: v.double().cpu().requires_grad_() for k, v in cast.items()}
    leaves = {k: v.detach().clone().to(device).requires_grad_() for k, v in cast.items()}
    out, last = fn(**leaves, delta_softplus=softplus, return_last_state=True, reverse=reverse)
    r_out, r_last = _reference(ref_in, softplus, reverse)
    assert out.dtype == half and last.dtype == torch.float32
    _check(out.cpu(), r_out.detach(), half, "out")
    _check(last.cpu(), r_last.detach(), torch.float32, "last_state")
    g = torch.Generator().manual_seed(7)
    # Representable in the output dtype: the incoming gradient of a bf16 output is bf16.
    w_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(half).double()
    w_last = torch.randn(last.shape, generator=g, dtype=torch.float64)
    keys = list(leaves)
    got = torch.autograd.grad(
        (out.double() * w_out.to(device)).sum() + (last.double() * w_last.to(device)).sum(),
        [leaves[k] for k in keys],
    )
    want = torch.autograd.grad(
        (r_out * w_out).sum() + (r_last * w_last).sum(), [ref_in[k] for k in keys]
    )
    for k, a, e in zip(keys, got, want, strict=True):
        assert a.dtype == leaves[k].dtype, k
        _check(a.cpu(), e, leaves[k].dtype, f"grad {k}")


ALL = set(NAMES)
CORE = {"u", "delta", "A", "B", "C"}
# (b, d, n, length, groups, features, softplus, reverse, dtype, block_d, chunk): odd lengths,
# channels not a multiple of the block, a last chunk shorter than the others, L < chunk.
CASES = [
    pytest.param(2, 10, 5, 13, 0, ALL, True, False, torch.float32, 4, 4, id="all-fwd-fp32"),
    pytest.param(2, 10, 5, 13, 0, ALL, True, True, torch.float32, 4, 4, id="all-rev-fp32"),
    pytest.param(1, 12, 4, 7, 2, CORE, False, True, torch.float32, 4, 16, id="core-rev-groups"),
    pytest.param(
        1, 6, 3, 9, 0, CORE | {"D", "z"}, False, False, torch.float32, 8, 3, id="Dz-fwd"
    ),
    pytest.param(1, 10, 4, 33, 0, ALL, True, False, torch.bfloat16, 8, 16, id="all-fwd-bf16"),
    pytest.param(
        1, 12, 4, 11, 3, ALL - {"initial_state"}, True, True, torch.bfloat16, 2, 4,
        id="rev-bf16-groups-no-h0",
    ),
]  # fmt: skip


@interpreted_only
@pytest.mark.parametrize(
    "b, d, n, length, groups, use, softplus, reverse, dtype, block_d, chunk", CASES
)
def test_triton_scan_interpreted_matches_float64_reference(
    b, d, n, length, groups, use, softplus, reverse, dtype, block_d, chunk
):
    x = _inputs(b, d, n, length, groups=groups, seed=length)

    def fn(**kw):
        return selective_scan_triton(**kw, block_d=block_d, chunk=chunk)

    _run_parity(fn, x, half=dtype, use=use, softplus=softplus, reverse=reverse)


@interpreted_only
def test_triton_scan_interpreted_backward_in_batch_slices(monkeypatch):
    """A 1-byte workspace cap: the backward runs one sequence per launch, same gradients."""
    from cinemamba_backbone.ops import triton_scan

    monkeypatch.setattr(triton_scan, "WORKSPACE_BYTES", 1)
    launches = []
    kernel = triton_scan._kernels_now().scan_bwd
    monkeypatch.setattr(
        triton_scan._kernels_now(), "scan_bwd", _Counting(kernel, launches), raising=True
    )
    x = _inputs(3, 5, 3, 6, seed=21)

    def fn(**kw):
        return selective_scan_triton(**kw, block_d=4, chunk=4)

    _run_parity(fn, x, half=torch.float32, use=ALL, softplus=True, reverse=False)
    assert launches == [1, 1, 1]  # grid rows per launch


class _Counting:
    """Wraps a kernel: records the first grid dimension of each launch."""

    def __init__(self, kernel, log):
        self.kernel, self.log = kernel, log

    def __getitem__(self, grid):
        self.log.append(grid[0])
        return self.kernel[grid]


@interpreted_only
def test_interpreted_dispatch_runs_triton_with_reverse(monkeypatch):
    """kernels="triton" on CPU under the interpreter reaches the kernel, reverse included."""
    from cinemamba_backbone.ops import triton_scan

    calls = []
    real = triton_scan._TritonScanFn.apply
    monkeypatch.setattr(triton_scan._TritonScanFn, "apply", lambda *a: calls.append(1) or real(*a))
    assert scan_path("cpu", torch.float32, kernels="triton", require_kernels=True) == "triton"
    x = _inputs(1, 4, 3, 5, seed=3)
    fn = _dispatching("triton", require=True)
    _run_parity(fn, x, half=torch.float32, use=ALL, softplus=True, reverse=True)
    assert calls


def _dispatching(kernels, require=False):
    def fn(**kw):
        return selective_scan(**kw, kernels=kernels, require_kernels=require)

    return fn


@pytest.mark.parametrize("kernels", ["auto", "torch"])
def test_dispatch_reverse_on_cpu_paths_matches_flipped_reference(kernels):
    """The C and PyTorch paths serve ``reverse`` by flipping inside the dispatcher."""
    x = _inputs(2, 6, 4, 9, seed=5)
    _run_parity(_dispatching(kernels), x, half=torch.float32, use=ALL, softplus=True, reverse=True)


def _has_nvidia_backend():
    if not HAVE_TRITON:
        return False
    from triton.backends import backends

    return "nvidia" in backends


@pytest.mark.skipif(not _has_nvidia_backend(), reason="triton without its NVIDIA backend")
@pytest.mark.skipif(INTERPRETED, reason="compiles; the interpreter would not")
@pytest.mark.parametrize(
    "kernel, dtype, feats, reverse",
    [("scan_fwd", "bf16", True, True), ("scan_bwd", "bf16", True, True), ("scan_bwd", "fp32", False, False)],
)  # fmt: skip
def test_triton_scan_compiles_for_sm90_without_a_gpu(
    kernel, dtype, feats, reverse, monkeypatch, tmp_path
):
    """The interpreter runs Python semantics; the compiler is stricter (e.g. loop-carried types,
    a name shadowing an argument), so both kernels are compiled to an H100/H200 cubin here."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from cinemamba_backbone.ops import _triton_scan_kernels as kernels

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    fn = getattr(kernels, kernel)
    consts = dict(
        HAS_D=feats, HAS_Z=feats, HAS_BIAS=feats, SOFTPLUS=feats, REVERSE=reverse, CHUNK=16,
        BLOCK_D=16, BLOCK_N=16,
    )  # fmt: skip
    consts.update(dict(HAS_H0=True, KEEP=True) if kernel == "scan_fwd" else dict(HAS_GLAST=True))
    halves = {"u_ptr", "dl_ptr", "B_ptr", "C_ptr", "z_ptr", "out_ptr", "gout_ptr", "gu_ptr",
              "gdl_ptr", "gz_ptr"}  # fmt: skip
    sig = {
        a: "constexpr" if a in consts else ("*" + (dtype if a in halves else "fp32"))
        if a.endswith("_ptr") else "i32"
        for a in fn.arg_names
    }  # fmt: skip
    src = ASTSource(
        fn=fn, signature=sig, constexprs={(fn.arg_names.index(c),): v for c, v in consts.items()}
    )
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    assert compiled.asm["cubin"]


# ---- dispatch decisions, with the optional packages mocked ---------------------------------


@pytest.fixture
def fake_packages(monkeypatch):
    """Set which of mamba_ssm / triton 'import' (loaders are looked up per call)."""

    def install(mamba: bool, triton: bool, interpreting: bool = False):
        monkeypatch.setattr(
            _kernels, "_selective_scan_fn", lambda: (lambda *a: None) if mamba else None
        )  # noqa: E501
        monkeypatch.setattr(_kernels, "_triton", lambda: object() if triton else None)
        monkeypatch.setattr(_kernels, "_triton_interpreting", lambda: interpreting)

    return install


@pytest.mark.parametrize(
    "mamba, triton, kw, expected",
    [
        (True, True, {}, "mamba_ssm"),
        (True, False, {}, "mamba_ssm"),
        (True, True, {"initial_state": True}, "triton"),
        (True, True, {"reverse": True}, "triton"),
        (True, True, {"last_state_grad": True}, "triton"),
        (True, True, {"kernels": "triton"}, "triton"),
        (False, True, {}, "triton"),
        (False, False, {}, "torch"),
        (True, False, {"initial_state": True}, "torch"),
        (True, True, {"kernels": "torch"}, "torch"),
    ],
)
def test_scan_path_on_cuda(fake_packages, mamba, triton, kw, expected):
    fake_packages(mamba, triton)
    assert scan_path("cuda", torch.bfloat16, **kw) == expected
    assert dispatch_plan("cuda", torch.bfloat16, **kw)["selective_scan"] == expected


def test_scan_path_float64_on_cuda_falls_back(fake_packages):
    fake_packages(True, True)
    assert scan_path("cuda", torch.float64) == "torch"
    with pytest.raises(KernelUnavailableError, match="float64"):
        scan_path("cuda", torch.float64, require_kernels=True)


def test_scan_path_on_cpu(fake_packages, monkeypatch):
    from cinemamba_backbone.ops import cpu_native

    fake_packages(True, True)
    monkeypatch.setattr(cpu_native, "load", lambda: object())
    assert scan_path("cpu", torch.float32) == "native"
    assert scan_path("cpu", torch.float64) == "torch"  # the C kernel is fp32-only
    assert scan_path("cpu", torch.float32, kernels="torch") == "torch"
    # "triton" on CPU needs the interpreter; without it the CPU path runs (or an error).
    assert scan_path("cpu", torch.float32, kernels="triton") == "native"
    with pytest.raises(KernelUnavailableError, match="TRITON_INTERPRET"):
        scan_path("cpu", torch.float32, kernels="triton", require_kernels=True)
    with pytest.raises(KernelUnavailableError, match="cpu"):
        scan_path("cpu", torch.float32, require_kernels=True)
    fake_packages(True, True, interpreting=True)
    assert scan_path("cpu", torch.float32, kernels="triton") == "triton"
    assert scan_path("cpu", torch.float32) == "native"  # "auto" never interprets
    monkeypatch.setattr(cpu_native, "load", lambda: None)  # no C compiler
    assert scan_path("cpu", torch.float32) == "torch"
    assert dispatch_plan("cpu", torch.float32) == {
        "selective_scan": "torch",
        "ssd": "torch",
        "causal_conv1d": "torch",
        "attention": "sdpa",
    }


def test_scan_path_logs_each_path_once(fake_packages, monkeypatch, caplog):
    fake_packages(False, False)
    monkeypatch.setattr(_kernels, "_logged_paths", set())
    with caplog.at_level(logging.INFO, logger="cinemamba_backbone.kernels"):
        for _ in range(3):
            scan_path("cuda", torch.float32)
    lines = [r for r in caplog.records if "selective_scan: torch path" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING


def test_ops_import_and_run_without_triton():
    """`import triton` is optional: with it blocked, ops import, dispatch and run on CPU."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from cinemamba_backbone import _kernels\n"
        "from cinemamba_backbone.ops import selective_scan, selective_scan_ref\n"
        "assert _kernels._triton() is None\n"
        "assert _kernels.scan_path('cuda', torch.bfloat16) in ('mamba_ssm', 'torch')\n"
        "a = [torch.randn(1, 3, 5), torch.rand(1, 3, 5), -torch.rand(3, 2),"
        " torch.randn(1, 2, 5), torch.randn(1, 2, 5)]\n"
        "y = selective_scan(*a, reverse=True, kernels='torch')\n"
        "r = selective_scan_ref(*[t.flip(-1) if t.dim() == 3 else t for t in a]).flip(-1)\n"
        "torch.testing.assert_close(y, r)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.skipif(INTERPRETED, reason="checks the compiled mode's device error too")
def test_triton_scan_names_bad_inputs():
    x = _inputs(2, 6, 4, 5)
    core = [x[k].float() for k in ("u", "delta", "A", "B", "C")]
    with pytest.raises(ValueError, match="A must have shape"):
        selective_scan_triton(core[0], core[1], core[2][:, :3], *core[3:])
    with pytest.raises(ValueError, match="initial_state must have shape"):
        selective_scan_triton(*core, initial_state=torch.zeros(2, 6, 5))
    with pytest.raises(ValueError, match="z must have shape"):
        selective_scan_triton(*core, z=core[0][:, :, :4])
    with pytest.raises(ValueError, match="groups"):
        selective_scan_triton(*core[:3], core[3].view(2, 1, 4, 5).expand(2, 4, 4, 5), core[4])
    with pytest.raises(ValueError, match="CUDA tensors"):
        selective_scan_triton(*core)


def test_kernels_argument_is_validated():
    with pytest.raises(ValueError, match="kernels"):
        scan_path("cpu", torch.float32, kernels="cuda")


# ---- on a GPU ------------------------------------------------------------------------------


@pytest.mark.cuda
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reverse", [False, True])
def test_triton_scan_cuda_matches_reference(dtype, reverse):
    """The compiled kernel (default block and chunk) on a realistic video shape."""
    x = _inputs(3, 80, 16, 37, seed=11, device="cuda")
    _run_parity(
        selective_scan_triton, x, half=dtype, use=ALL, softplus=True, reverse=reverse,
        device="cuda",
    )  # fmt: skip


@pytest.mark.cuda
@needs_triton
def test_triton_scan_cuda_matches_mamba_ssm():
    pytest.importorskip("mamba_ssm")
    x = _inputs(4, 64, 16, 45, seed=12, device="cuda")
    args = {k: v.float().requires_grad_() for k, v in x.items() if k != "initial_state"}
    ours = selective_scan_triton(**args, delta_softplus=True)
    g_ours = torch.autograd.grad(ours.sum(), list(args.values()))
    theirs = _kernels._selective_scan_fn()(**args, delta_softplus=True)
    g_theirs = torch.autograd.grad(theirs.sum(), list(args.values()))
    # Two fp32 implementations with different summation orders: fp32-level, scale-relative.
    _check(ours, theirs.double(), torch.float32, "out vs mamba_ssm")
    for k, a, e in zip(args, g_ours, g_theirs, strict=True):
        _check(a, e.double(), torch.float32, f"grad {k} vs mamba_ssm")


@pytest.mark.cuda
def test_videodit_bf16_forward_backward_on_cuda():
    """A small bimamba VideoDiT in bf16 with dispatch "auto": finite output and gradients."""
    from cinemamba_backbone import BackboneConfig, VideoDiT

    torch.manual_seed(0)
    cfg = BackboneConfig.from_preset("tiny", in_channels=4, text_dim=16, mixer="bimamba")
    model = VideoDiT(cfg).to("cuda", torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 4, 9, 8, 8, device="cuda", dtype=torch.bfloat16)
    t = torch.rand(2, device="cuda")
    text = torch.randn(2, 6, 16, device="cuda", dtype=torch.bfloat16)
    pooled = torch.randn(2, 16, device="cuda", dtype=torch.bfloat16)
    out = model(x, t, text, pooled=pooled)
    assert out.shape == x.shape and out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


# ---- reverse through the mixer -------------------------------------------------------------


def _bimamba_by_flips(m, x):
    """BiMamba written with explicit flips: the backward core on the time-flipped input."""
    xs, z = rearrange(m.in_proj(x), "b l e -> b e l").chunk(2, dim=1)
    y_fwd, _ = m.forward_ssm.ssm(xs)
    y_bwd, _ = m.backward_ssm.ssm(xs.flip(-1))
    return m.out_proj(rearrange((y_fwd + y_bwd.flip(-1)) * F.silu(z), "b e l -> b l e"))


def _bimamba_matches_flips(kernels, fused=True, length=11, stacked=True, channels_last=True):
    torch.manual_seed(0)
    m = BiMamba(8, d_state=4)
    m.fused, m.stacked, m.channels_last = fused, stacked, channels_last
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(3, length, 8)
    m.set_kernels(kernels)
    out = m(x)
    got = torch.autograd.grad(out.square().sum(), list(m.parameters()))
    m.set_kernels("torch")
    ref = _bimamba_by_flips(m, x)
    want = torch.autograd.grad(ref.square().sum(), list(m.parameters()))
    for a, e in zip([out, *got], [ref, *want], strict=True):
        _check(a, e.double(), torch.float32, "bimamba")


# BiMamba's CPU forms as (fused, stacked, channels_last): the channels-last core (the
# default), flip-free on the row kernels, one scan call over the flipped input, two calls.
FORMS = [(True, True, True), (True, True, False), (True, False, False), (False, True, False)]


@pytest.mark.parametrize("length", [11, 70])  # both sides of _group_matmul's switch at 64
@pytest.mark.parametrize(("fused", "stacked", "channels_last"), FORMS)
@pytest.mark.parametrize("kernels", ["auto", "torch"])
def test_bimamba_reverse_matches_explicit_flips(kernels, fused, stacked, channels_last, length):
    """The anti-causal core (reverse conv + reverse scan, both cores in one batched scan over
    the flipped input, flip-free with reversed scan groups and the stacked conv, or the
    channels-last core) is the flipped causal core: outputs and all gradients."""
    _bimamba_matches_flips(kernels, fused, length, stacked, channels_last)


@pytest.mark.parametrize("length", [13, 70])  # both sides of _group_matmul's switch at 64
@pytest.mark.parametrize(("fused", "stacked", "channels_last"), FORMS)
def test_bimamba_cpu_variants_match_float64(
    fused, stacked, channels_last, length, monkeypatch: pytest.MonkeyPatch
):
    """BiMamba (flip-free stacked, one flipped scan call, or two calls) on the C kernel with
    its fused D skip and softplus slope, with them unfused (``FUSE_ELEMENTWISE = False``, the implementation
    before) and without the kernel (``CINEMAMBA_NATIVE_SCAN=0``): output and every
    parameter's gradient against a float64 copy of the module."""
    import copy

    from cinemamba_backbone.ops import cpu_native, cpu_scan

    torch.manual_seed(1)
    m = BiMamba(16, d_state=8)
    m.fused, m.stacked, m.channels_last = fused, stacked, channels_last
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, length, 16)
    m64 = copy.deepcopy(m).double()
    ref = m64(x.double())
    want = torch.autograd.grad((ref * ref.detach().cos()).sum(), list(m64.parameters()))

    def check(label):
        out = m(x)
        got = torch.autograd.grad((out * out.detach().cos()).sum(), list(m.parameters()))
        for (name, _), a, e in zip(m.named_parameters(), got, want, strict=True):
            _check(a, e, torch.float32, f"{label} {name}")
        _check(out, ref, torch.float32, f"{label} output")

    check("fused kernel")
    monkeypatch.setattr(cpu_scan, "FUSE_ELEMENTWISE", False)
    check("unfused ops")
    monkeypatch.setenv("CINEMAMBA_NATIVE_SCAN", "0")
    cpu_native.load.cache_clear()
    try:
        assert cpu_native.load() is None
        check("no native kernel")
    finally:
        monkeypatch.delenv("CINEMAMBA_NATIVE_SCAN")
        cpu_native.load.cache_clear()


@interpreted_only
def test_interpreted_bimamba_on_triton_matches_explicit_flips():
    _bimamba_matches_flips("triton")


@pytest.mark.parametrize("k", [2, 4])
def test_anticausal_conv_is_flipped_causal_conv(k):
    x, w, bias = torch.randn(2, 3, 9, dtype=torch.float64), torch.randn(3, k), torch.randn(3)
    w, bias = w.double(), bias.double()
    want = causal_conv1d_ref(x.flip(-1), w, bias).flip(-1)
    torch.testing.assert_close(causal_conv1d(x, w, bias, True, True), want)
    with pytest.raises(ValueError, match="initial"):
        causal_conv1d_torch(x, w, bias, initial=torch.zeros(2, 3, k - 1), reverse=True)
