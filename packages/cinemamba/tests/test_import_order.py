"""Every module of the `cinemamba` package imports on its own, in a fresh interpreter.

The test session imports `cinemamba.latents` early (conftest), which hides import cycles that
only bite when another module is imported first: `import cinemamba.data.buckets` before
`cinemamba.latents` failed with a circular ImportError and `cinemamba --help` did not start.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "cinemamba.data.buckets",
        "cinemamba.tasks.backbone",
        "cinemamba.latents.export",
        "cinemamba.cli",
    ],
)
def test_module_imports_first(module: str) -> None:
    """Importing `module` first in a fresh interpreter succeeds (no import cycle)."""
    proc = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_cli_help_starts() -> None:
    """`cinemamba --help` runs (it imports every command module)."""
    proc = subprocess.run(
        [sys.executable, "-m", "cinemamba.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "export-latents" in proc.stdout
