"""Fit torch's intra-op thread count to the CPU cores other processes leave free (issue 14).

torch's OpenMP runtime (libgomp) keeps idle threads spinning after every parallel region,
which makes a lone run faster than with idle threads asleep (`OMP_WAIT_POLICY=PASSIVE`).
When another busy process shares the cores, the spinning threads hold cores that threads with
work need, and the same step takes several times longer than alone. No fixed OpenMP setting
is good at both, so the trainer measures instead: every few seconds it reads how much CPU time the machine spent outside this
process (/proc/stat minus /proc/self/stat) and sets the thread count to the cores left over,
never above the count it started with. One thread runs no parallel region, so nothing spins;
two governed runs settle at one thread each. `scripts/bench_contention.py` measures it (the
step times alone and under contention are its to report, not this docstring's).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

Sample = tuple[float, float]  # (CPU seconds busy on the whole machine, by this process)


def cpu_seconds() -> Sample | None:
    """Busy CPU seconds since boot of the whole machine and of this process (None off Linux)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    v = [int(x) for x in fields] + [0] * 8
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]  # user nice system irq softirq steal
    # after the ')' of the command name: state is field 3, utime/stime are fields 14/15
    return busy / ticks, (int(own[11]) + int(own[12])) / ticks


def threads_for(other_cores: float, cores: int, most: int) -> int:
    """Threads to use when other processes keep `other_cores` cores busy: the cores left,
    rounded to the nearest whole one, between 1 and `most`."""
    return max(1, min(most, int(cores - other_cores + 0.5)))


class ThreadGovernor:
    """Call `poll()` once per training step; every `interval` seconds it re-fits
    `torch.set_num_threads` to the cores other processes leave free."""

    def __init__(
        self,
        interval: float = 2.0,
        *,
        cores: int | None = None,
        sample: Callable[[], Sample | None] = cpu_seconds,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.most = torch.get_num_threads()  # the user's (or torch's) count: never exceeded
        self.cores = cores or len(os.sched_getaffinity(0))
        self.interval, self.sample, self.clock = interval, sample, clock
        first = sample() if self.most > 1 else None
        self.active = first is not None
        self._last = (clock(), first)

    def poll(self) -> int | None:
        """Re-fit the thread count when `interval` has passed; the new count if it changed."""
        if not self.active:
            return None
        now = self.clock()
        then, before = self._last
        if now - then < self.interval:
            return None
        after = self.sample()
        self._last = (now, after)
        if after is None or before is None:
            return None
        others = max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / (now - then)
        want = threads_for(others, self.cores, self.most)
        if want == torch.get_num_threads():
            return None
        log.info(
            "other processes keep %.1f of %d cores busy: torch threads %d -> %d",
            others, self.cores, torch.get_num_threads(), want,
        )  # fmt: skip
        torch.set_num_threads(want)
        return want

    def close(self) -> None:
        """Give back the thread count the run started with."""
        if self.active:
            torch.set_num_threads(self.most)
