"""Peak tensor memory of a call, on CPU as well as CUDA (for long-video memory checks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch.profiler import ProfilerActivity, profile

T = TypeVar("T")


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
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
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
