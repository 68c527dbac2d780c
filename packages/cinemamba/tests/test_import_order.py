"""Each module of the cinemamba package imports on its own, as the first cinemamba import: an
import cycle (e.g. the bucket sampler imports the latents package, whose export takes the
bucket config) fails only for some first-import orders, which the rest of the suite may never
happen to use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"

# One interpreter: before each module, every cinemamba.* module is dropped from sys.modules
# (third-party ones stay loaded, so this takes seconds, not an interpreter per module).
CHECK = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "cinemamba" or m.startswith("cinemamba.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc(limit=2).splitlines()[-1])
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_first() -> None:
    modules = sorted(
        ".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        for p in (SRC / "cinemamba").rglob("*.py")
    )
    assert "cinemamba.data.buckets" in modules and "cinemamba.latents.export" in modules
    out = subprocess.run([sys.executable, "-c", CHECK, *modules], capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


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
