"""Process-group setup for one plain process, torchrun, the deepspeed launcher and SLURM."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

_RENDEZVOUS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
SHM_COMM_OP = "deepspeed_shm_comm"  # DeepSpeed's CPU shared-memory all-reduce op (C++, JIT built)

log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port that is free right now on this host."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def choose_accelerator() -> None:
    """DS_ACCELERATOR=cpu where torch sees no GPU (unless the user chose one).

    DeepSpeed picks its accelerator when first imported; left to guess on a CPU machine it warns
    "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect
    it" on every start (issue 18), so this runs before that import.
    """
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"


def prepare_environment() -> None:
    """Set what DeepSpeed needs before it starts: accelerator, op cache, rendezvous.


    A plain process (no launcher) gets a one-rank rendezvous on a free local port. DeepSpeed
    JIT-builds its ops under TORCH_EXTENSIONS_DIR; the cache goes in the virtual environment so
    every later run, test and launcher reuses it (see `skip_shm_comm_op` for the CPU comm op,
    which training never builds).
    """
    choose_accelerator()
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))
    if "SLURM_STEP_ID" in os.environ and "RANK" not in os.environ:
        # srun starts one task per rank without a launcher; map its variables (only inside an
        # srun step: a batch script's own shell also sees SLURM_NTASKS but is a single process).
        os.environ["RANK"] = os.environ["SLURM_PROCID"]
        os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
        os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
        if int(os.environ.get("SLURM_NNODES", "1")) > 1 and "MASTER_ADDR" not in os.environ:
            raise RuntimeError(
                "srun across nodes: export MASTER_ADDR (the first node's address) and "
                "MASTER_PORT before srun"
            )
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        if os.environ["WORLD_SIZE"] != "1":
            raise RuntimeError("WORLD_SIZE > 1 but MASTER_PORT is unset; launch with a launcher")
        os.environ["MASTER_PORT"] = str(free_port())


def skip_shm_comm_op() -> None:
    """Keep DeepSpeed from building and loading its CPU shared-memory comm op.

    DeepSpeed's torch backend JIT-compiles ``deepspeed_shm_comm`` (C++, silently) when
    the process group starts on the CPU accelerator, at any world size, under a lock in the
    build folder that every job of the venv shares. The op serves only
    ``deepspeed.comm.inference_all_reduce`` (tensor-parallel inference); training's
    collectives go through torch.distributed (gloo), so a training start has no reason to
    wait for that build, or for another job's (issue 14: after a job was killed mid-build,
    its compilers kept running and the next start rebuilt beside them for minutes, silently).
    DeepSpeed asks its table of compatible ops before building; marking the op incompatible
    there is the switch it consults, and ``inference_all_reduce`` then falls back to
    torch.distributed.
    """
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().create_op_builder("ShareMemCommBuilder") is None:
        return  # an accelerator without the op (CUDA): DeepSpeed would not probe the table
    compatible = deepspeed.ops.__compatible_ops__  # probed once per process by DeepSpeed
    if compatible.get(SHM_COMM_OP, False):
        compatible[SHM_COMM_OP] = False
        log.debug("DeepSpeed's %s op is not built: training does not use it", SHM_COMM_OP)


def lock_holder(path: str) -> int | None:
    """The pid holding a flock on `path` (from /proc/locks), or None when it is free or unknown.

    torch's JIT build of an op holds a kernel flock on ``<build dir>/lock``: the kernel drops it
    when its holder dies, so a holder listed here is alive (its build still running)."""
    try:
        inode = os.stat(path).st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()  # 1: FLOCK ADVISORY WRITE <pid> <major>:<minor>:<inode> 0 EOF
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].split(":")[-1] == str(inode):
            return int(fields[4])
    return None


@contextlib.contextmanager
def op_build_notice(
    op: str, usual: str, first_after_s: float = 5.0, every_s: float = 30.0
) -> Iterator[None]:
    """Log what a DeepSpeed op's build is waiting for while the block runs longer than
    `first_after_s`, then every `every_s` (a JIT build prints nothing; issue 14).

    Args:
        op: the op's build name (its folder under TORCH_EXTENSIONS_DIR).
        usual: how long its build usually takes, for the message (e.g. "minutes").
    """
    folder = os.path.join(os.environ.get("TORCH_EXTENSIONS_DIR", ""), op)
    lock = os.path.join(folder, "lock")
    done = threading.Event()

    def watch() -> None:
        waited, pause = first_after_s, first_after_s
        while not done.wait(pause):
            holder = lock_holder(lock)
            if holder is not None and holder != os.getpid():
                log.warning(
                    "waiting %.0f s for %s held by pid %d (building DeepSpeed's %s op, "
                    "usually %s)", waited, lock, holder, op, usual,
                )  # fmt: skip
            else:
                log.warning(
                    "building DeepSpeed's %s op in %s for %.0f s (usually %s, once per venv)",
                    op, folder, waited, usual,
                )  # fmt: skip
            waited, pause = waited + every_s, every_s

    watcher = threading.Thread(target=watch, name=f"{op}-build-notice", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def on_cuda() -> bool:
    """Whether this run trains on CUDA GPUs."""
    return (
        os.environ.get("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu") == "cuda"
    )


@contextlib.contextmanager
def session(backend: str = "") -> Iterator[tuple[int, int, torch.device]]:
    """Join (or start, through DeepSpeed) the process group; yields (rank, world, device).

    A group the engine starts in a plain process lives until the interpreter exits, so several
    runs in one process (tests, notebooks) share it: DeepSpeed caches its groups and cannot
    start over cleanly; in a launched process it is torn down when the run ends. The
    rendezvous variables the engine adds are removed again when the block ends, so that child
    processes started later do not inherit a port that is in use.
    """
    choose_accelerator()
    import deepspeed

    before = {k: os.environ.get(k) for k in _RENDEZVOUS}
    # A process started by a launcher (or srun) trains once: its group goes down when the run
    # ends, not at interpreter exit, where ZeRO-3 ranks can abort.
    launched = before["RANK"] is not None or "SLURM_STEP_ID" in os.environ
    created = False
    try:
        cuda = on_cuda()
        if not dist.is_initialized():
            created = True
            prepare_environment()
            skip_shm_comm_op()
            backend = backend or ("nccl" if cuda else "gloo")
            deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(minutes=30))
            atexit.register(shutdown)
        else:
            os.environ.setdefault("RANK", str(dist.get_rank()))
            os.environ.setdefault("WORLD_SIZE", str(dist.get_world_size()))
            os.environ.setdefault("LOCAL_RANK", "0")
            skip_shm_comm_op()  # adopting a group builds DeepSpeed's backend (and the op) too
            deepspeed.init_distributed()  # adopt the caller's group
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if cuda:
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
        else:
            device = torch.device("cpu")
        yield dist.get_rank(), dist.get_world_size(), device
        if created and launched:
            shutdown()
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def shutdown() -> None:
    """Tear the process group down (at exit); ZeRO-3 can abort at interpreter exit otherwise."""
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a small float64 vector over ranks (in place on the comm device) and return it."""
    if dist.get_world_size() > 1:
        dist.all_reduce(values)
    return values
