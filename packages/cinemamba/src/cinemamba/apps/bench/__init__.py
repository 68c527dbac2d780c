"""Benchmarks of the whole framework on this machine, each figure a ratio to a reference.

`cinemamba bench` (commands/bench.py) runs them through `bench()` and regenerates
docs/benchmarks.md; see that page for what each figure means.
"""

from cinemamba.apps.bench.measure import Figure, Section, machine_description, slope
from cinemamba.apps.bench.runner import BENCHMARKS, SCALES, Scale, bench, render, run_benchmarks

__all__ = [
    "BENCHMARKS",
    "SCALES",
    "Figure",
    "Scale",
    "Section",
    "bench",
    "machine_description",
    "render",
    "run_benchmarks",
    "slope",
]
