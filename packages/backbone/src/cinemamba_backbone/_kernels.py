"""The one place optional kernels are imported (mamba_ssm, causal_conv1d, xformers, triton).

Every import is lazy and guarded by ``ImportError`` so the package works on a bare CPU
install. Dispatchers ask here per call; the first fallback of each operation is logged once,
and ``require_kernels=True`` turns a fallback into :class:`KernelUnavailableError`.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger("cinemamba_backbone.kernels")

# "auto": the best path per call; "torch": pure PyTorch everywhere; "triton": as "auto", but
# the selective scan runs our Triton kernel (never mamba_ssm), also on CPU when
# TRITON_INTERPRET=1 (the interpreter: how CI checks the kernel without a GPU).
KERNEL_CHOICES = ("auto", "torch", "triton")
SCAN_PATHS = ("mamba_ssm", "triton", "native", "torch")
_logged_fallbacks: set[str] = set()


class KernelUnavailableError(RuntimeError):
    """Raised when ``require_kernels=True`` and a fused kernel cannot serve a call."""


def check_kernels_arg(kernels: str) -> None:
    """Validate a runtime ``kernels`` argument, naming the valid choices."""
    if kernels not in KERNEL_CHOICES:
        raise ValueError(f"kernels={kernels!r} is not one of {list(KERNEL_CHOICES)}")


@functools.cache
def _selective_scan_fn() -> Callable[..., Any] | None:
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None
    return selective_scan_fn


@functools.cache
def _ssd_fn() -> Callable[..., Any] | None:
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError:
        return None
    return mamba_chunk_scan_combined


@functools.cache
def _causal_conv1d_fn() -> Callable[..., Any] | None:
    try:
        from causal_conv1d import causal_conv1d_fn
    except ImportError:
        return None
    return causal_conv1d_fn


@functools.cache
def _triton() -> Any | None:
    """The ``triton`` module (our own scan kernel, ops/triton_scan.py), or None."""
    try:
        import triton
        import triton.language  # noqa: F401
    except ImportError:
        return None
    return triton


@functools.cache
def _xformers_ops() -> Any | None:
    try:
        import xformers
        import xformers.ops as xops
    except ImportError:
        return None
    # A wheel built for another torch/Python imports, warns, and has no compiled ops: its
    # attention would fail at the first CUDA call, so treat it as not installed.
    if not getattr(xformers, "_has_cpp_library", True):
        logger.warning(
            "xformers %s is installed but its compiled ops do not load (built for another "
            "torch or Python); attention uses SDPA",
            getattr(xformers, "__version__", "?"),
        )
        return None
    return xops


_LOADERS: dict[str, Callable[[], Any]] = {
    "selective_scan": _selective_scan_fn,
    "ssd": _ssd_fn,
    "causal_conv1d": _causal_conv1d_fn,
    "xformers_attention": _xformers_ops,
}
_CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def kernel_for(
    op: str,
    tensor: torch.Tensor,
    *,
    kernels: str = "auto",
    require_kernels: bool = False,
    supported: bool = True,
    why_not: str = "",
) -> Any | None:
    """Return the fused kernel for ``op`` if it can serve this call, else ``None``.

    ``supported=False`` lets the caller veto a call the kernel cannot express (e.g. an
    initial state); ``why_not`` says why, for the fallback log line.
    """
    check_kernels_arg(kernels)
    if kernels == "torch":
        if require_kernels:
            raise KernelUnavailableError(f"{op}: kernels='torch' conflicts with require_kernels")
        return None
    reason = ""
    fn = None
    if not tensor.is_cuda:
        reason = f"tensor on {tensor.device.type}"
    elif tensor.dtype not in _CUDA_DTYPES:
        reason = f"dtype {tensor.dtype} unsupported"
    elif not supported:
        reason = why_not or "call not supported by the kernel"
    else:
        fn = _LOADERS[op]()
        if fn is None:
            reason = "package not installed (pip install 'cinemamba-backbone[cuda]')"
    if fn is not None:
        return fn
    if require_kernels:
        raise KernelUnavailableError(f"{op}: fused kernel unavailable ({reason})")
    if op not in _logged_fallbacks:
        _logged_fallbacks.add(op)
        # A CPU run is expected to use the CPU path (for the scan: the native C kernel when it
        # builds, see ops/cpu_native.py); on CUDA a fallback is worth a warning.
        if tensor.is_cuda:
            logger.warning("%s: using the PyTorch fallback (%s); logged once", op, reason)
        else:
            logger.info("%s: no CUDA kernel (%s): CPU implementation; logged once", op, reason)
    return None


def available() -> dict[str, bool]:
    """Which optional kernel packages import on this machine."""
    return {op: loader() is not None for op, loader in _LOADERS.items()}


def triton_interpret_mode() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    triton = _triton()
    knobs = getattr(triton, "knobs", None)  # Triton < 3.4 has no knobs: read the variable
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_interpreting() -> bool:
    return _triton() is not None and triton_interpret_mode()


def scan_path(
    device: torch.device | str,
    dtype: torch.dtype,
    *,
    kernels: str = "auto",
    require_kernels: bool = False,
    initial_state: bool = False,
    reverse: bool = False,
    last_state_grad: bool = False,
    native_cpu: bool = True,
    log: bool = True,
) -> str:
    """Which implementation serves a selective scan: one of ``SCAN_PATHS``.

    CUDA: mamba_ssm when installed and it can serve the call (no initial state, no reverse,
    no gradient through the last state, which mamba_ssm drops), else our Triton kernel, else PyTorch. CPU: the C kernel (``native``, when it builds and
    ``native_cpu``) else PyTorch, or Triton under ``TRITON_INTERPRET=1`` with
    ``kernels="triton"``. A non-fused path with ``require_kernels`` raises.
    """
    check_kernels_arg(kernels)
    if kernels == "torch":
        if require_kernels:
            raise KernelUnavailableError(
                "selective_scan: kernels='torch' conflicts with require_kernels"
            )
        return "torch"
    device_type = torch.device(device).type
    path, reason = "", ""
    if device_type == "cuda":
        if dtype not in _CUDA_DTYPES:
            reason = f"dtype {dtype} unsupported"
        elif (
            kernels == "auto"
            and not (initial_state or reverse or last_state_grad)
            and _selective_scan_fn()
        ):
            path, reason = "mamba_ssm", "installed"
        elif _triton() is not None:
            path = "triton"
            reason = "installed" if kernels == "triton" else "mamba_ssm absent or cannot serve"
        else:
            reason = "neither mamba_ssm (for this call) nor triton is installed"
    elif kernels == "triton" and _triton_interpreting():
        path, reason = "triton", "TRITON_INTERPRET=1"
    else:
        reason = f"tensor on {device_type}"
        if kernels == "triton":
            reason += " and TRITON_INTERPRET is not 1"
    if not path:
        if require_kernels:
            raise KernelUnavailableError(f"selective_scan: fused kernel unavailable ({reason})")
        path = "torch"
        if device_type == "cpu" and native_cpu and dtype in _CUDA_DTYPES:
            from cinemamba_backbone.ops import cpu_native  # local: ops imports this module

            path = "native" if cpu_native.load() is not None else "torch"
    if log:
        # Falling back on CUDA costs speed: a warning; on CPU the C/PyTorch path is the norm.
        _log_path("selective_scan", path, reason, device_type == "cuda" and path == "torch")
    return path


_logged_paths: set[tuple[str, str]] = set()


def _log_path(op: str, path: str, reason: str, warn: bool) -> None:
    """Say once per (op, path) which implementation runs and why."""
    if (op, path) in _logged_paths:
        return
    _logged_paths.add((op, path))
    level = logging.WARNING if warn else logging.INFO
    logger.log(level, "%s: %s path (%s); logged once", op, path, reason)


def dispatch_plan(
    device: torch.device | str,
    dtype: torch.dtype,
    *,
    kernels: str = "auto",
    initial_state: bool = False,
    reverse: bool = False,
    last_state_grad: bool = False,
) -> dict[str, str]:
    """For (device, dtype, installed packages): the path each op takes (no tensors, no logs)."""
    check_kernels_arg(kernels)
    cuda = torch.device(device).type == "cuda" and dtype in _CUDA_DTYPES
    fused = kernels != "torch" and cuda

    def pick(loader: Callable[[], Any], name: str, fallback: str) -> str:
        return name if fused and loader() is not None else fallback

    scan = scan_path(
        device,
        dtype,
        kernels=kernels,
        initial_state=initial_state,
        reverse=reverse,
        last_state_grad=last_state_grad,
        log=False,
    )
    return {
        "selective_scan": scan,
        "ssd": pick(_ssd_fn, "mamba_ssm", "torch"),
        "causal_conv1d": pick(_causal_conv1d_fn, "causal_conv1d", "torch"),
        "attention": pick(_xformers_ops, "xformers", "sdpa"),
    }
