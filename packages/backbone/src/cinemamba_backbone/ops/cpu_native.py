"""Build and load the fused C kernels (``csrc/*.c``) through ctypes.

The sources are plain C (no torch headers): the row-wise selective scan and grouped conv of
``selective_scan.c`` and the channels-last bidirectional ones of ``channels_last.c`` (see
``ops/channels_last.py``), one library compiled on first use with the system compiler
(``$CC`` or ``cc``) in about a second and cached under a name that hashes the source, the
flags, the compiler and the CPU, so a new source, compiler or machine recompiles. Cache
directory: ``$CINEMAMBA_KERNEL_CACHE``, else ``$TORCH_EXTENSIONS_DIR/cinemamba``, else
``~/.cache/cinemamba/kernels``. ``CINEMAMBA_NATIVE_SCAN=0`` disables it. Without a working
compiler :func:`load` logs one line and returns None; callers then use the PyTorch path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch

logger = logging.getLogger("cinemamba_backbone.kernels")

CSRC = Path(__file__).with_name("csrc")
SOURCES = (CSRC / "selective_scan.c", CSRC / "channels_last.c")
HEADERS = (CSRC / "common.h",)  # hashed with the sources: a change recompiles
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fPIC", "-shared")
# GCC targets 256-bit vectors on AVX-512 CPUs unless told otherwise; with 512-bit ones the
# scan's loops over a 16-float state are one vector each. The option exists on x86 only.
if platform.machine().lower() in ("x86_64", "amd64"):
    FLAGS = (*FLAGS[:2], "-mprefer-vector-width=512", *FLAGS[2:])
# OpenMP for torch.get_num_threads() > 1; a compiler without it gets a single-threaded build.
OPENMP_FLAGS = ("-fopenmp",)
MAX_STATE = 256  # MAX_STATE in the C source: larger n stays on the PyTorch path
# State updates (b·d·l·n) per thread below which another thread costs more than it saves
# (a parallel region's start and barrier); torch's own grain is of the same order.
GRAIN = 1 << 16

_i64, _ptr = ctypes.c_int64, ctypes.c_void_p
_SIGNATURES = {
    # u, delta, A, B, C, h0, D, y, last, ckpt; batch, dim, groups, l, n, block, rev_from;
    # threads
    "cm_scan_forward": [_ptr] * 10 + [_i64] * 7 + [ctypes.c_int],
    # u, delta, A, B, C, ckpt, gy, glast, gu, gdelta, gA_rows, gB, gC, gh0, D; softplus;
    # gD_rows, work; the same seven sizes; threads
    "cm_scan_backward": [_ptr] * 15 + [ctypes.c_int] + [_ptr] * 2 + [_i64] * 7 + [ctypes.c_int],
    # x, its strides (b, d, l), w, bias, rev, y; activation; batch, dim, groups, l, k; work;
    # threads
    "cm_conv_forward": [_ptr]
    + [_i64] * 3
    + [_ptr] * 4
    + [ctypes.c_int]
    + [_i64] * 5
    + [_ptr, ctypes.c_int],
    # x, its strides, w, bias, rev, gy; activation; gx, gw_rows, gb_rows; the five sizes;
    # work; threads
    "cm_conv_backward": [_ptr]
    + [_i64] * 3
    + [_ptr] * 4
    + [ctypes.c_int]
    + [_ptr] * 3
    + [_i64] * 5
    + [_ptr, ctypes.c_int],
    # channels_last.c. x, its strides (b, l), w, bias, rev, y; activation; batch, dim,
    # groups, l, k; threads
    "cm_cl_conv_forward": [_ptr, _i64, _i64]
    + [_ptr] * 4
    + [ctypes.c_int]
    + [_i64] * 5
    + [ctypes.c_int],
    # x, its strides, w, bias, rev, gy; activation; gx, its strides (b, l), gw_rows, gb_rows;
    # five sizes; work; threads
    "cm_cl_conv_backward": [_ptr, _i64, _i64]
    + [_ptr] * 4
    + [ctypes.c_int]
    + [_ptr, _i64, _i64, _ptr, _ptr]
    + [_i64] * 5
    + [_ptr, ctypes.c_int],
    # u, x_dbl, W_T, bias, A_T, D, y, ckpt; batch, dim, groups, l, n, R, r, block, rev_from;
    # threads
    "cm_cl_scan_forward": [_ptr] * 8 + [_i64] * 9 + [ctypes.c_int],
    # u, x_dbl, W_T, bias, A_T, D, ckpt, gy; gy's group stride; gu, gx, param sums, work; the
    # nine sizes; threads
    "cm_cl_scan_backward": [_ptr] * 8 + [_i64] + [_ptr] * 4 + [_i64] * 9 + [ctypes.c_int],
    # y, z, z's strides (b, l), out, ysum; batch, l, dim; threads
    "cm_cl_gate_forward": [_ptr, _ptr, _i64, _i64, _ptr, _ptr] + [_i64] * 3 + [ctypes.c_int],
    # g, z, z's strides, ysum, gy, gz, gz's strides; batch, l, dim; threads
    "cm_cl_gate_backward": [_ptr, _ptr, _i64, _i64, _ptr, _ptr, _ptr, _i64, _i64]
    + [_i64] * 3
    + [ctypes.c_int],
}


def cache_dir() -> Path:
    """Where compiled kernels are kept (see the module docstring for the order)."""
    if os.environ.get("CINEMAMBA_KERNEL_CACHE"):
        return Path(os.environ["CINEMAMBA_KERNEL_CACHE"])
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"]) / "cinemamba"
    return Path.home() / ".cache" / "cinemamba" / "kernels"


def _cpu_id() -> str:
    # -march=native code is only valid on CPUs with the same instruction sets.
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.machine()


def _library_name(compiler: list[str], flags: tuple[str, ...]) -> str:
    version = subprocess.run(
        [*compiler, "--version"], capture_output=True, text=True, timeout=60
    ).stdout.splitlines()
    key = hashlib.sha256()
    sources = [path.read_bytes() for path in (*SOURCES, *HEADERS)]
    for part in (*sources, " ".join(flags).encode(), (version or [""])[0].encode()):
        key.update(part + b"\0")
    key.update(_cpu_id().encode())
    return f"selective_scan_{key.hexdigest()[:16]}.so"


def _compile(compiler: list[str], flags: tuple[str, ...], target: Path) -> str:
    """Compile to a temporary file beside `target` and rename it into place (atomic, so
    processes compiling at once all end with a whole library); return the error or ''."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.stem, suffix=".tmp")
    os.close(fd)
    try:
        out = subprocess.run(
            [*compiler, *flags, "-o", tmp, *map(str, SOURCES)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if out.returncode != 0:
            return (out.stderr or out.stdout).strip()
        os.replace(tmp, target)
        return ""
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fail(reason: str) -> None:
    logger.info("selective_scan: native CPU kernel unavailable (%s); using PyTorch", reason)


@functools.cache
def load() -> ctypes.CDLL | None:
    """The compiled kernel library (built on first use), or None, logged once, when it is
    disabled or cannot be built."""
    if os.environ.get("CINEMAMBA_NATIVE_SCAN", "1") == "0":
        _fail("CINEMAMBA_NATIVE_SCAN=0")
        return None
    compiler = shlex.split(os.environ.get("CC") or "cc")
    if not compiler or shutil.which(compiler[0]) is None:
        _fail(f"no C compiler {compiler[0] if compiler else '(empty $CC)'!r}")
        return None
    errors = []
    for flags in (FLAGS + OPENMP_FLAGS, FLAGS):
        try:
            lib = _build_and_open(compiler, flags)
        except (OSError, subprocess.SubprocessError, RuntimeError) as err:
            errors.append(str(err))
            continue
        for name, argtypes in _SIGNATURES.items():
            getattr(lib, name).argtypes = argtypes
            getattr(lib, name).restype = ctypes.c_int
        if lib.cm_max_state() == MAX_STATE:
            return lib
        errors.append(f"library built with MAX_STATE {lib.cm_max_state()}, not {MAX_STATE}")
    _fail("build failed: " + " | ".join(errors[0].splitlines()[:3]))
    return None


def _build_and_open(compiler: list[str], flags: tuple[str, ...]) -> ctypes.CDLL:
    """Open the cached library for these flags, compiling it first if it is not there."""
    path = cache_dir() / _library_name(compiler, flags)
    if not path.is_file():
        start = time.perf_counter()
        error = _compile(compiler, flags, path)
        if error:
            raise RuntimeError(error)
        logger.info(
            "selective_scan: compiled the native CPU kernel in %.1f s: %s",
            time.perf_counter() - start,
            path,
        )
    return ctypes.CDLL(str(path))


def usable(u: torch.Tensor, n: int) -> bool:
    """Whether the native kernel can serve a scan of these inputs: CPU, a float32 compute
    dtype (fp32, bf16, fp16 inputs; float64 stays on the PyTorch path), n <= MAX_STATE."""
    return (
        u.device.type == "cpu"
        and u.dtype in (torch.float32, torch.bfloat16, torch.float16)
        and n <= MAX_STATE
        and load() is not None
    )


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32).contiguous()


def _ptr_of(x: torch.Tensor | None) -> int | None:
    return None if x is None else x.data_ptr()


def _check_per_channel(d: int, delta_bias: torch.Tensor | None, D: torch.Tensor | None) -> None:
    for name, x in (("delta_bias", delta_bias), ("D", D)):
        if x is not None and x.shape != (d,):
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected ({d},)")


def _check_reverse(groups: int, reverse_groups: int) -> None:
    if not 0 <= reverse_groups <= groups:
        raise ValueError(f"reverse_groups={reverse_groups} for {groups} groups of B and C")


def _threads(tasks: int, updates: int) -> int:
    """OpenMP threads for a call: torch's setting, at most one per task and per GRAIN."""
    return max(1, min(torch.get_num_threads(), tasks, updates // GRAIN))


def _call(name: str, *args: int | None) -> None:
    # ctypes passes surplus arguments unconverted, so a count mismatch would not raise.
    fn = getattr(load(), name)
    if len(args) != len(fn.argtypes):
        raise TypeError(f"{name} takes {len(fn.argtypes)} arguments, got {len(args)}")
    if fn(*args) != 0:
        raise ValueError(f"{name}: unsupported shape for the native selective scan")


def scan_forward(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor | None,
    block: int,
    keep_checkpoints: bool,
    delta_bias: torch.Tensor | None = None,
    D: torch.Tensor | None = None,
    softplus: bool = False,
    reverse_groups: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Scan on the native kernel: u, delta (b, d, l); A (d, n); B, C (b, g, l, n) (time-major
    per group); h0 (b, d, n) or None. Returns fp32 y (b, d, l), last state (b, d, n) and, when
    `keep_checkpoints`, the state before every `block`-th step (b, d, ceil(l / block), n).

    ``delta`` is the raw Δ: Δ = softplus(delta + delta_bias) (``softplus``; bias (d,) or
    None) is made here in one vectorised pass, and the skip y += D·u (D (d,) or None) is
    fused into the kernel. The last ``reverse_groups`` groups of channels scan from the last
    step to the first. Returns, last, the Δ the scan used (the backward takes it)."""
    u, A, B, C = (_f32(x) for x in (u, A, B, C))
    h0, delta_bias, D = (None if x is None else _f32(x) for x in (h0, delta_bias, D))
    delta = effective_delta(delta, delta_bias, softplus)
    b, d, length = u.shape
    g, n = B.shape[1], B.shape[3]
    if delta.shape != u.shape or A.shape != (d, n) or B.shape != (b, g, length, n):
        raise ValueError(f"shapes u {u.shape} delta {delta.shape} A {A.shape} B {B.shape}")
    if C.shape != B.shape or (h0 is not None and h0.shape != (b, d, n)):
        raise ValueError(f"shapes C {C.shape} (B {B.shape}), h0 {None if h0 is None else h0.shape}")
    _check_per_channel(d, delta_bias, D)
    _check_reverse(g, reverse_groups)
    y = torch.empty(b, d, length)
    last = torch.empty(b, d, n)
    ckpt = torch.empty(b, d, -(-length // block), n) if keep_checkpoints else None
    _call(
        "cm_scan_forward",
        u.data_ptr(), delta.data_ptr(), A.data_ptr(), B.data_ptr(), C.data_ptr(),
        _ptr_of(h0), _ptr_of(D), y.data_ptr(), last.data_ptr(), _ptr_of(ckpt),
        b, d, g, length, n, block, g - reverse_groups, _threads(b * d, b * d * length * n),
    )  # fmt: skip
    return y, last, ckpt, delta


def effective_delta(
    delta: torch.Tensor, delta_bias: torch.Tensor | None, softplus: bool
) -> torch.Tensor:
    """Contiguous fp32 Δ = softplus(delta + bias) (or without either), as the scan uses it."""
    delta = delta.to(torch.float32)
    if delta_bias is not None:
        delta = delta + delta_bias.to(torch.float32)[:, None]
    if softplus:
        delta = torch.nn.functional.softplus(delta)
    return delta.contiguous()


def scan_backward(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    ckpt: torch.Tensor,
    grad_y: torch.Tensor,
    grad_last: torch.Tensor | None,
    block: int,
    want_h0: bool,
    delta_bias: torch.Tensor | None = None,
    D: torch.Tensor | None = None,
    softplus: bool = False,
    reverse_groups: int = 0,
) -> tuple[torch.Tensor, ...]:
    """Gradients of :func:`scan_forward` (same fused options) from its checkpoints; ``delta``
    is the Δ it returned (after bias and softplus): fp32 (gu, gdelta of the raw delta,
    gA (d, n), gB, gC (b, g, l, n), g_h0 (b, d, n) or None, gD (d,) or None, g_delta_bias
    (d,) or None)."""
    u, delta, A, B, C, ckpt, grad_y = (_f32(x) for x in (u, delta, A, B, C, ckpt, grad_y))
    grad_last, delta_bias, D = (None if x is None else _f32(x) for x in (grad_last, delta_bias, D))
    b, d, length = u.shape
    g, n = B.shape[1], B.shape[3]
    if ckpt.shape != (b, d, -(-length // block), n) or grad_y.shape != u.shape:
        raise ValueError(f"shapes ckpt {ckpt.shape} grad_y {grad_y.shape} for u {u.shape}")
    _check_per_channel(d, delta_bias, D)
    _check_reverse(g, reverse_groups)
    threads = _threads(b, b * d * length * n)  # backward threads split the batch
    gu, gdelta = torch.empty_like(u), torch.empty_like(u)
    gA_rows = torch.empty(b, d, n)
    gB, gC = torch.empty_like(B), torch.empty_like(C)
    g_h0 = torch.empty(b, d, n) if want_h0 else None
    gD_rows = torch.empty(b, d) if D is not None else None
    work = torch.empty(threads, 2, block, n)
    _call(
        "cm_scan_backward",
        u.data_ptr(), delta.data_ptr(), A.data_ptr(), B.data_ptr(), C.data_ptr(),
        ckpt.data_ptr(), grad_y.data_ptr(), _ptr_of(grad_last),
        gu.data_ptr(), gdelta.data_ptr(), gA_rows.data_ptr(), gB.data_ptr(), gC.data_ptr(),
        _ptr_of(g_h0), _ptr_of(D), int(softplus), _ptr_of(gD_rows),
        work.data_ptr(), b, d, g, length, n, block, g - reverse_groups, threads,
    )  # fmt: skip
    gD = None if gD_rows is None else gD_rows.sum(0)
    # The bias adds to every step of its channel: its gradient is that of delta, summed.
    g_bias = None if delta_bias is None else gdelta.sum((0, 2))
    return gu, gdelta, gA_rows.sum(0), gB, gC, g_h0, gD, g_bias


MAX_CONV_K = 16  # MAX_CONV_K in the C source


def conv_usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the native grouped conv can serve these inputs (CPU, float32, k <= 16)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and weight.shape[-1] <= MAX_CONV_K
        and load() is not None
    )


def _conv_args(x: torch.Tensor, weight: torch.Tensor, reverse: tuple[bool, ...]):  # noqa: ANN202
    b, d, length = x.shape
    groups, _, k = weight.shape
    rev = torch.tensor([int(r) for r in reverse], dtype=torch.int64)
    threads = _threads(b * d, b * d * length * groups * k)
    return (b, d, groups, length, k), rev, threads


def conv_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    reverse: tuple[bool, ...],
    activation: bool,
) -> torch.Tensor:
    """G depthwise convs of one (possibly strided) x (b, d, l), weight (G, d, k), bias (G, d):
    (b, G·d, l), group g anti-causal where ``reverse[g]``, SiLU if ``activation``."""
    weight = weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    sizes, rev, threads = _conv_args(x, weight, reverse)
    b, d, groups, length, _ = sizes
    y = torch.empty(b, groups * d, length)
    work = torch.empty(threads, length + 2 * (weight.shape[-1] - 1))  # a padded row each
    _call(
        "cm_conv_forward", x.data_ptr(), *x.stride(), weight.data_ptr(), _ptr_of(bias),
        rev.data_ptr(), y.data_ptr(), int(activation), *sizes, work.data_ptr(), threads,
    )  # fmt: skip
    return y


def conv_backward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    reverse: tuple[bool, ...],
    activation: bool,
    grad: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients of :func:`conv_forward` (pre-activations recomputed from x): gx (b, d, l),
    gw (G, d, k), gb (G, d) or None."""
    weight, grad = weight.contiguous(), grad.contiguous()
    bias = None if bias is None else bias.contiguous()
    sizes, rev, threads = _conv_args(x, weight, reverse)
    b, d, groups, length, k = sizes
    gx = torch.empty(b, d, length)
    gw_rows = torch.empty(b, groups, d, k)
    gb_rows = None if bias is None else torch.empty(b, groups, d)
    work = torch.empty(threads, 2, length + 2 * (k - 1))  # padded x and gradient rows
    _call(
        "cm_conv_backward", x.data_ptr(), *x.stride(), weight.data_ptr(), _ptr_of(bias),
        rev.data_ptr(), grad.data_ptr(), int(activation), gx.data_ptr(), gw_rows.data_ptr(),
        _ptr_of(gb_rows), *sizes, work.data_ptr(), threads,
    )  # fmt: skip
    return gx, gw_rows.sum(0), None if gb_rows is None else gb_rows.sum(0)
