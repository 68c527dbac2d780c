"""A training start never builds DeepSpeed's CPU comm op, so it never waits on its build lock.

Issue 14: a job killed while building `deepspeed_shm_comm` left later starts waiting without a
word. The op serves only tensor-parallel inference, so `session()` keeps DeepSpeed from building
it. The tests hold the op's build lock (as a live builder would) in a private
TORCH_EXTENSIONS_DIR and start process groups of one and two ranks: each must start, run a
collective and exit, leaving the build folder untouched.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cinemamba.train.distributed import SHM_COMM_OP, free_port

START_TIMEOUT_S = 180  # torch + deepspeed imports on a loaded 2-core machine; no build in it

CHILD = """
import torch, torch.distributed as dist
from cinemamba.train.distributed import session
with session() as (rank, world, device):
    x = torch.ones(1)
    dist.all_reduce(x)
    print(f"rank {rank} of {world}: sum {x.item():g}", flush=True)
"""


def _held_build_lock(extensions: Path) -> int:
    """Take the op's build lock the way torch's JIT build does (flock on `<dir>/<op>/lock`)
    and keep it: a start that tries to build the op waits on it for as long as it is held."""
    folder = extensions / SHM_COMM_OP
    folder.mkdir(parents=True)
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def _env(extensions: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TORCH_EXTENSIONS_DIR=str(extensions))
    return env


def _check_untouched(extensions: Path, outputs: list[str]) -> None:
    assert sorted(p.name for p in (extensions / SHM_COMM_OP).iterdir()) == ["lock"]
    for out in outputs:
        assert "built successfully" not in out, out


def test_one_process_start_does_not_build_or_wait_for_the_comm_op(tmp_path: Path) -> None:
    extensions = tmp_path / "torch_extensions"
    fd = _held_build_lock(extensions)
    try:
        out = subprocess.run(
            [sys.executable, "-c", CHILD],
            env=_env(extensions),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
        )
    finally:
        os.close(fd)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "rank 0 of 1: sum 1" in out.stdout
    _check_untouched(extensions, [out.stdout + out.stderr])


@pytest.mark.distributed
def test_two_rank_start_does_not_build_or_wait_for_the_comm_op(tmp_path: Path) -> None:
    extensions = tmp_path / "torch_extensions"
    fd = _held_build_lock(extensions)
    env = {**_env(extensions), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}
    env["MASTER_PORT"] = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=START_TIMEOUT_S)[0])
    finally:
        os.close(fd)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    for rank, out in enumerate(outputs):
        assert f"rank {rank} of 2: sum 2" in out, out[-3000:]
    _check_untouched(extensions, outputs)


def test_a_long_op_build_says_which_lock_and_pid_it_waits_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import time

    from cinemamba.train.distributed import op_build_notice

    lock = tmp_path / "cpu_adam" / "lock"
    lock.parent.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
        with caplog.at_level("WARNING", logger="cinemamba.train.distributed"):
            with op_build_notice("cpu_adam", "minutes", first_after_s=10.0):
                time.sleep(0.3)  # a quick load says nothing
            assert caplog.messages == []
            with op_build_notice("cpu_adam", "minutes", first_after_s=0.2, every_s=0.2):
                time.sleep(0.9)
    finally:
        holder.kill()
        holder.wait()
    waits = [m for m in caplog.messages if m.startswith("waiting")]
    assert len(waits) >= 2, caplog.messages  # the first after 0.2 s, then repeated
    assert f"{lock} held by pid {holder.pid}" in waits[0]
    assert "DeepSpeed's cpu_adam op" in waits[0]


HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(600)
"""
