"""A CPU run of `cinemamba` prints no line that looks like a failure but is expected (issue 18):
torch's "No CUDA runtime is found" (DeepSpeed imports torch.utils.cpp_extension), open_clip's
"No pretrained weights loaded" and its factory narration, the profiler's native lines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cinemamba.train.config import REPO_ROOT

EXPECTED_NOISE = (
    "No CUDA runtime is found",
    "No pretrained weights loaded",
    "Parsing model identifier",
    "gpuGetDeviceCount",
    "profiler_start",
    "Traceback",
    "Setting accelerator to CPU",  # DeepSpeed left to guess its accelerator
)

# main() as the console script runs it, then an import of cpp_extension (what DeepSpeed does when
# it builds an op), so torch's warning is produced whatever this machine's DeepSpeed does.
RUN = """
import sys
from cinemamba.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as stop:  # --help
    rc = stop.code
import torch.utils.cpp_extension
sys.exit(rc)
"""

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available() or Path("/dev/nvidiactl").exists(),
    reason="on a GPU machine these lines are not expected and must stay",
)


def _output(args: list[str], tmp_path: Path) -> str:
    # CUDA_HOME pointing at a folder is a CUDA toolkit for torch: the warning's condition.
    env = {**os.environ, "CUDA_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", RUN, *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr  # DeepSpeed's logger writes to stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        [
            "sample",
            str(REPO_ROOT / "configs/sampling/tiny.yaml"),
            "--prompt",
            "a red circle",
            "--frames",
            "5",
            "--out",
            "v.mp4",
            "steps=1",
        ],
    ],  # fmt: skip
    ids=["help", "sample-tiny"],
)
def test_cpu_run_has_no_expected_failure_lookalikes(args, tmp_path):
    err = _output(args, tmp_path)
    for line in EXPECTED_NOISE:
        assert line not in err, err


def test_the_filter_keeps_the_warning_where_a_gpu_is_present(monkeypatch):
    # On a machine with a GPU device node, a missing CUDA runtime is a problem to act on.
    import logging

    from cinemamba import logs

    record = logging.LogRecord(
        "torch.utils.cpp_extension", logging.WARNING, __file__, 1,
        "No CUDA runtime is found, using CUDA_HOME='%s'", ("/usr/local",), None,
    )  # fmt: skip
    assert not logs._drop_no_cuda_runtime(record)
    monkeypatch.setattr(logs, "_gpu_device_present", lambda: True)
    assert logs._drop_no_cuda_runtime(record)


TOY_RUN = """
import sys
from cinemamba.train.toy import main
rc = main(sys.argv[1:])
import torch.utils.cpp_extension
sys.exit(rc)
"""


def test_task_entry_point_is_quiet_too(tmp_path):
    toy = str(REPO_ROOT / "configs/experiment/toy.yaml")
    args = ["--config", toy, f"train.run_dir={tmp_path / 'run'}", "train.steps=1",
            "train.progress=false"]  # fmt: skip
    env = {**os.environ, "CUDA_HOME": str(tmp_path)}
    env.pop("DS_ACCELERATOR", None)  # a shell without scripts/env.sh
    done = subprocess.run([sys.executable, "-c", TOY_RUN, *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr  # DeepSpeed's logger writes to stdout
    for line in EXPECTED_NOISE:
        assert line not in output, output
