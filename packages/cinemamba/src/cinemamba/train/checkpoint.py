"""Checkpoints that resume exactly and never leave a half-written one behind.

A checkpoint is a directory `run_dir/checkpoints/step_XXXXXXXX/`:

    <model>/state/...          DeepSpeed checkpoint (weights, optimizer partitions per rank)
    ema/<model>.safetensors    full fp32 EMA weights + buffers (written by rank 0)
    rng/rank_XXXXX.pt          python, numpy, torch (and CUDA) RNG states of each rank
    trainer.json               step, data position, world size, models, resolved config

All ranks write into `step_XXXXXXXX.tmp/`; after a barrier rank 0 renames it to the final name
(one atomic rename), so a crash mid-save leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

DS_TAG = "state"
_STEP_DIR = re.compile(r"^step_(\d{8})$")
SAVE_FAILED = "save_failed.json"  # in checkpoint_root: the last save that failed, and why


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (e.g. the disk is full); nothing partial was kept."""


def checkpoint_root(run_dir: str | Path) -> Path:
    """Where a run's checkpoints live."""
    return Path(run_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    """The directory name of the checkpoint taken after `step` optimizer steps."""
    return f"step_{step:08d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary `.tmp` directories excluded)."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))  # type: ignore[union-attr]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_checkpoint(source: str | Path) -> Path:
    """A checkpoint directory from either a checkpoint path or a run directory (its latest)."""
    source = Path(source)
    if (source / "trainer.json").is_file():
        return source
    latest = latest_checkpoint(source)
    if latest is None:
        raise FileNotFoundError(f"{str(source)!r} is neither a checkpoint nor a run with one")
    return latest


def rng_state() -> dict[str, Any]:
    """Every RNG the training step may draw from, for this process."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNGs saved by `rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_path(ckpt: Path, rank: int) -> Path:
    """The RNG file of one rank inside a checkpoint."""
    return ckpt / "rng" / f"rank_{rank:05d}.pt"


def save_rng(ckpt: Path, rank: int) -> None:
    """Write this rank's RNG states (temporary name, then rename)."""
    path = rng_path(ckpt, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    torch.save(rng_state(), tmp)
    os.replace(tmp, path)


def load_rng(ckpt: Path, rank: int) -> bool:
    """Restore this rank's RNG states; False if the checkpoint has none for this rank."""
    path = rng_path(ckpt, rank)
    if not path.is_file():
        return False
    set_rng_state(torch.load(path, weights_only=False))
    return True


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON under a temporary name and rename it into place."""
    tmp = path.with_suffix(".partial")
    try:
        tmp.write_text(json.dumps(payload, indent=2, default=str))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # no half-written file left behind (a full disk)
        raise


def read_trainer_state(ckpt: Path) -> dict[str, Any]:
    """The engine's own record of a checkpoint."""
    return json.loads((ckpt / "trainer.json").read_text())


def begin(run_dir: str | Path, step: int) -> Path:
    """(Rank 0) a fresh temporary directory for the checkpoint of `step`."""
    tmp = checkpoint_root(run_dir) / (step_dir_name(step) + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a crash during an earlier attempt
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, keep_last: int) -> Path:
    """(Rank 0, after every rank finished writing) publish `tmp` and prune old checkpoints."""
    final = tmp.with_name(tmp.name.removesuffix(".tmp"))
    if final.exists():  # the same step saved again (e.g. after a resume): replace it
        trash = final.with_name(final.name + ".old")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)
    for old in list_checkpoints(final.parent.parent)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def clean_partial(run_dir: str | Path) -> None:
    """(Rank 0) remove temporary directories left by crashes during a save."""
    root = checkpoint_root(run_dir)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.endswith((".tmp", ".old")):
                shutil.rmtree(p, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def folder_size(path: Path) -> int:
    """Bytes in the files under `path` (0 if it does not exist)."""
    if not path.is_dir():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def free_bytes(path: Path) -> int:
    """Free bytes on the file system holding `path` (or its nearest existing parent)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def is_disk_full(err: BaseException, folder: Path) -> bool:
    """Whether a failed write ran out of space: ENOSPC/EDQUOT, or torch's C++ writer error
    (`basic_ios::clear: iostream error`, which drops the errno) on a nearly full disk."""
    for e in (err, err.__cause__, err.__context__):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
    text = str(err).lower()
    if "no space left" in text or "disk quota" in text:
        return True
    writer = "iostream error" in text or "failed writing" in text or "unexpected pos" in text
    return writer and free_bytes(folder) < 64 * 2**20


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
