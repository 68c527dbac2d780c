"""scripts/gpu_install.sh (the install step of scripts/gpu_check.sh) on this CPU machine.

The interpreter running the tests stands in for a GPU image's python that holds its own
torch: the script must install our five packages on top of it from a local wheel folder
without replacing that torch, even when the folder offers a newer one, and must fail rather
than replace it when a requested wheel wants another torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "scripts" / "gpu_install.sh"
PROBE = "import torch, cinemamba; print(torch.__version__); print(torch.__file__); print(cinemamba.__file__)"


def _wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
    """A minimal valid pure-Python wheel: one module and its dist-info."""
    dist = f"{name.replace('-', '_')}-{version}"
    meta = "Metadata-Version: 2.1\n" + f"Name: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {
        f"{name.replace('-', '_')}_fake.py": "",
        f"{dist}.dist-info/METADATA": meta,
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{dist}.dist-info/RECORD,,\n"
    with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
        zf.writestr(f"{dist}.dist-info/RECORD", record)


def _install(tmp_path: Path, extra: str = "") -> subprocess.CompletedProcess:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "torch", "99.0.0")  # a "newer torch" that must never be picked
    _wheel(wheels, "needs-new-torch", "1.0", ("torch>=99",))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHON=sys.executable, GPU_INSTALL_EXTRA=extra)
    return subprocess.run(
        ["bash", str(SCRIPT), str(wheels), str(tmp_path / "venv")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _probe(python: Path | str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(python), "-c", PROBE], env=env, cwd="/", capture_output=True,
                         text=True, check=True)  # fmt: skip
    return out.stdout.split()


def test_install_keeps_the_host_torch_and_imports_this_checkout(tmp_path: Path) -> None:
    """Our packages import from this checkout, torch is the host's own (same version, same
    file), and no torch was installed into the venv although the wheel folder holds one."""
    done = _install(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    host_torch = _probe(sys.executable)[:2]
    venv = tmp_path / "venv"
    version, torch_file, cinemamba_file = _probe(venv / "bin" / "python")
    assert [version, torch_file] == host_torch
    assert Path(cinemamba_file).is_relative_to(ROOT / "packages" / "cinemamba" / "src")
    assert not list(venv.glob("lib/python*/site-packages/torch*"))
    assert "gpu_install: ok" in done.stdout


def test_install_refuses_a_wheel_that_wants_another_torch(tmp_path: Path) -> None:
    """A requested package needing torch>=99 (offered in the folder) fails the install: the
    constraints pin the host's torch, so pip reports the conflict instead of replacing it."""
    done = _install(tmp_path, extra="needs-new-torch")
    assert done.returncode != 0
    assert "torch" in done.stderr and "conflict" in (done.stdout + done.stderr).lower()
    assert not list((tmp_path / "venv").glob("lib/python*/site-packages/torch*"))


@pytest.mark.parametrize("bad", ["missing-folder"])
def test_install_names_a_missing_wheel_folder(tmp_path: Path, bad: str) -> None:
    """A wheel folder that does not exist is named in a one-line error, before any work."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHON"] = sys.executable
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path / bad), str(tmp_path / "venv")],
                          env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and f"{bad} does not exist" in done.stderr
    assert not (tmp_path / "venv").exists()
