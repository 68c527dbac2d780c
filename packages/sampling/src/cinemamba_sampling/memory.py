"""Peak tensor memory of a call, on CPU as well as CUDA (for long-video memory checks)."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch.profiler import ProfilerActivity, profile

T = TypeVar("T")

# Kineto (the profiler's C++ side) writes progress lines straight to file descriptor 2:
# `USDT:... profiler_start`, `STAGE:... Completed Stage: ...`, and on a machine without a GPU
# `ERROR:... gpuGetDeviceCount failed with code 35`. None needs action, all look like failures.
_KINETO_LINE = re.compile(rb"^(?:USDT|STAGE|INFO):\S+ \S+ \S+ \S+\.cpp:\d+\]")
_KINETO_NO_GPU = re.compile(rb"^ERROR:\S+ \S+ \S+ \S+\.cpp:\d+\] gpuGetDeviceCount failed")


def _is_chatter(line: bytes, gpu: bool) -> bool:
    return bool(_KINETO_LINE.match(line) or (not gpu and _KINETO_NO_GPU.match(line)))


@contextmanager
def _kineto_chatter_filtered() -> Iterator[None]:
    """Hold back what native code writes to stderr meanwhile; pass on all but kineto's chatter.

    A GPU-count failure is only dropped where torch sees no GPU (then it is expected); where a
    GPU is visible it is passed on, as is every line that is not kineto's.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            gpu = torch.cuda.is_available()
            kept = [ln for ln in held.read().splitlines(True) if not _is_chatter(ln, gpu)]
            if kept:
                os.write(2, b"".join(kept))


def peak_memory(fn: Callable[[], T], device: torch.device | str = "cpu") -> tuple[T, int]:
    """Run `fn()` and return its result with the peak bytes of tensors allocated during it.

    CUDA uses the allocator's peak counter. CPU has none, so the profiler records every
    allocation and free inside `fn` and the running sum gives the peak (tensors that were
    alive before the call are not counted).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - before
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _kineto_chatter_filtered():
        prof.start()
    try:
        result = fn()  # outside the filter: what fn prints reaches the user as it happens
    finally:
        with _kineto_chatter_filtered():
            prof.stop()
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return result, peak
