"""What every benchmark row is made of: repeated measurements against a reference.

A `Figure` holds, per repeat, the measured value and its reference measured in the same
repeat (a floor from measured machine rates, the straightforward implementation, or the
attention baseline); its ratio is the median of the per-repeat ratios and the spread is their
min-max. Times are process CPU time by default: with one torch thread that is the compute
time of the call, robust to other jobs taking the cores of a shared machine.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

MIN_REPEATS = 5  # the issue: "median of >= 5 repeats and the spread"


@dataclass
class Figure:
    """One row: measured vs reference per repeat, their ratio, and an optional target on it.

    `target` bounds the ratio (`ratio <= target`, or `>=` when `higher_is_better`).
    """

    section: str
    name: str
    unit: str
    measured: list[float]
    reference: list[float]
    reference_name: str
    target: float | None = None
    higher_is_better: bool = False
    note: str = ""
    exact: bool = False  # deterministic (peak tensor bytes): one measurement is the value

    def __post_init__(self) -> None:
        if len(self.measured) != len(self.reference) or not self.measured:
            raise ValueError(
                f"figure {self.name!r}: {len(self.measured)} measured values and "
                f"{len(self.reference)} reference values; need the same non-zero count"
            )

    @property
    def ratios(self) -> list[float]:
        """measured / reference, per repeat."""
        return [
            m / r if r else math.inf for m, r in zip(self.measured, self.reference, strict=True)
        ]

    @property
    def ratio(self) -> float:
        """Median of the per-repeat ratios."""
        return statistics.median(self.ratios)

    @property
    def spread(self) -> tuple[float, float]:
        """(min, max) of the per-repeat ratios."""
        return min(self.ratios), max(self.ratios)

    @property
    def repeats(self) -> int:
        """How many repeats the median is over."""
        return len(self.measured)

    @property
    def passed(self) -> bool | None:
        """Whether the median ratio meets the target (None without a target)."""
        if self.target is None:
            return None
        return self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target


@dataclass
class Section:
    """A benchmark's result: its figures, detail tables (markdown lines) and notes."""

    key: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the benchmark
    cpu_seconds: float = 0.0  # CPU time of this process (spawned cases not counted)


def cpu_timed(fn: Callable[[], object]) -> float:
    """Process CPU seconds of one call."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def repeat_times(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """CPU seconds of `repeats` calls after `warmup` untimed ones (one-time allocations)."""
    for _ in range(warmup):
        fn()
    return [cpu_timed(fn) for _ in range(repeats)]


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matmuls, convolutions and attention products `fn` runs (torch's counter).

    Elementwise work is not counted, so a time floor made from it is a lower bound.
    """
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def gemm_rate(size: int = 512, repeats: int = 5) -> float:
    """Measured fp32 matmul throughput (FLOP/s of CPU time) at the current thread count."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    times = repeat_times(lambda: torch.mm(a, b, out=out), repeats, warmup=2)
    return 2 * size**3 / statistics.median(times)


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(x) (the exponent of the growth)."""
    if len(xs) < 2 or len(xs) != len(ys):
        raise ValueError(f"a log-log slope needs >= 2 paired points, got {len(xs)} and {len(ys)}")
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-300)) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    den = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / den


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def machine_description() -> dict[str, str]:
    """CPU model, cores, RAM, Python / torch / DeepSpeed versions, threads, load average."""
    try:
        import deepspeed

        ds = deepspeed.__version__
    except ImportError:  # the runner works without it; the train section then fails alone
        ds = "not installed"
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "CPU": cpu_model(),
        "cores (os.cpu_count)": str(os.cpu_count()),
        "RAM": f"{_ram_gib():.1f} GiB",
        "Python": platform.python_version(),
        "torch": torch.__version__,
        "DeepSpeed": ds,
        "torch threads": str(torch.get_num_threads()),
        "load average at start (1/5/15 min)": " / ".join(f"{x:.2f}" for x in load),
    }
