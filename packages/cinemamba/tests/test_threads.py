"""The CLI makes idle OpenMP threads sleep instead of spin (issue 14: contention).

libgomp reads its wait policy once, when torch is imported; with its default spin, a demo
training step ran 25x slower next to one other process. `OMP_DISPLAY_ENV=VERBOSE` makes libgomp
print the settings it actually initialised with, so the check reads the runtime's own report
rather than our environment. `scripts/bench_contention.py` measures the slowdown itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys


def _libgomp_settings(**env: str) -> dict[str, str]:
    """The settings libgomp reports at start-up in a `cinemamba --help` process."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    out = subprocess.run(
        [sys.executable, "-m", "cinemamba.cli", "--help"],
        env={**base, "OMP_DISPLAY_ENV": "VERBOSE", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    settings = dict(re.findall(r"^\s+(\w+) = '([^']*)'", out.stderr, flags=re.M))
    assert "GOMP_SPINCOUNT" in settings, out.stderr[-2000:]  # torch's OpenMP was initialised
    return settings


def test_cli_starts_openmp_with_sleeping_idle_threads() -> None:
    settings = _libgomp_settings()
    assert settings["OMP_WAIT_POLICY"] == "PASSIVE"
    assert settings["GOMP_SPINCOUNT"] == "0"  # libgomp's own default is 300000


def test_cli_keeps_a_wait_policy_the_user_set() -> None:
    settings = _libgomp_settings(OMP_WAIT_POLICY="ACTIVE")
    assert settings["OMP_WAIT_POLICY"] == "ACTIVE"
    assert int(settings["GOMP_SPINCOUNT"]) > 0


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
