"""The trainer fits torch's thread count to the cores other processes leave free (issue 14:
contention). `scripts/bench_contention.py` measures the slowdown itself."""

from __future__ import annotations

import time

import pytest
import torch

from cinemamba.train import threads


@pytest.mark.parametrize(
    ("others", "cores", "most", "want"),
    [(0.0, 2, 2, 2), (0.4, 2, 2, 2), (0.6, 2, 2, 1), (1.0, 2, 2, 1), (3.0, 2, 2, 1),
     (0.0, 8, 4, 4), (5.2, 8, 8, 3)],
)  # fmt: skip
def test_threads_are_the_cores_left_over(others, cores, most, want) -> None:
    assert threads.threads_for(others, cores, most) == want


def test_governor_follows_the_load_of_other_processes() -> None:
    """Fake /proc readings: a competitor keeping one of two cores busy drops this run to one
    thread; when it goes, the run gets its two threads back; polls between intervals do
    nothing; close() restores the starting count."""
    now = [0.0]
    readings = iter([(0.0, 0.0), (4.0, 2.0), (6.0, 3.0), (7.8, 4.7)])
    torch.set_num_threads(2)
    gov = threads.ThreadGovernor(2.0, cores=2, sample=lambda: next(readings), clock=lambda: now[0])
    now[0] = 1.0
    assert gov.poll() is None  # interval not over: no reading taken
    now[0] = 2.0
    assert gov.poll() == 1 and torch.get_num_threads() == 1  # others: (4-2)/2 = 1 core
    now[0] = 4.0
    assert gov.poll() == 2 and torch.get_num_threads() == 2  # others: (2-1)/2 = 0.5 core
    now[0] = 6.0
    assert gov.poll() is None  # others: (1.8-1.7)/2 = 0.05 core: still 2
    torch.set_num_threads(1)
    gov.close()
    assert torch.get_num_threads() == 2


def test_governor_is_off_at_one_thread() -> None:
    torch.set_num_threads(1)
    gov = threads.ThreadGovernor(0.0, cores=2, sample=lambda: (0.0, 0.0), clock=time.monotonic)
    assert not gov.active and gov.poll() is None


def test_cpu_seconds_counts_this_process_like_process_time() -> None:
    """This process's CPU seconds from /proc agree with Python's own clock (to the kernel's
    tick), and the machine's busy time includes them."""
    before, t0 = threads.cpu_seconds(), time.process_time()
    if before is None:
        pytest.skip("no /proc")
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    after, t1 = threads.cpu_seconds(), time.process_time()
    own = after[1] - before[1]
    assert own == pytest.approx(t1 - t0, abs=0.05)
    assert after[0] - before[0] >= own - 0.05


def test_contention_benchmark_block_lands_below_the_bench_block_and_is_replaced() -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "scripts" / "bench_contention.py"
    spec = importlib.util.spec_from_file_location("bench_contention", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    page = f"# Benchmarks\n\n{bench.AFTER}\n\n## Backbone\nhand notes\n"
    first = bench.merge(page, f"{bench.BEGIN}\nold\n{bench.END}")
    assert (
        first
        == f"# Benchmarks\n\n{bench.AFTER}\n\n{bench.BEGIN}\nold\n{bench.END}\n\n## Backbone\nhand notes\n"
    )
    second = bench.merge(first, f"{bench.BEGIN}\nnew\n{bench.END}")
    assert second == first.replace("\nold\n", "\nnew\n")
