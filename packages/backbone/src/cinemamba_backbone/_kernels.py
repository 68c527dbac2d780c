"""The one place optional CUDA kernels are imported (mamba_ssm, causal_conv1d, xformers).

Every import is lazy and guarded by ``ImportError`` so the package works on a bare CPU
install. Dispatchers ask here per call; the first fallback of each operation is logged once,
and ``require_kernels=True`` turns a fallback into :class:`KernelUnavailableError`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger("cinemamba_backbone.kernels")

KERNEL_CHOICES = ("auto", "torch")
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
        import xformers.ops as xops
    except ImportError:
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
