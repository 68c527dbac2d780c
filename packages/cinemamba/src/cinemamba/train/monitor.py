"""Rank-0 reporting: a tqdm bar, TensorBoard scalars and a JSONL log for scripts."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import torch


def peak_memory_gb(device: torch.device) -> float:
    """Peak accelerator memory (CUDA) or peak resident memory of this process (CPU), in GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 2**20 if sys.platform != "darwin" else kib / 2**30


def truncate_log(path: Path, last_step: int) -> int:
    """Keep the JSONL records of steps <= `last_step` (atomic rewrite); returns how many went.

    A line that does not parse (the tail of a killed writer) goes too.
    """
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            keep = int(json.loads(line)["step"]) <= last_step
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        tmp = path.with_suffix(".partial")
        tmp.write_text("".join(kept))
        os.replace(tmp, path)
    return dropped


class Monitor:
    """Writes scalars on rank 0 only; other ranks get a no-op monitor."""

    def __init__(
        self, run_dir: Path, rank: int, start_step: int, total: int, progress: bool
    ) -> None:
        self.enabled = rank == 0
        self.bar = None
        self.writer = None
        self.jsonl = None
        if not self.enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        # A resumed run starts after step `start_step`: what an earlier attempt logged past it
        # is about to be logged again, so drop it (one record per step, in TensorBoard too).
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)
        truncate_log(run_dir / "log.jsonl", start_step)
        self.jsonl = open(run_dir / "log.jsonl", "a", buffering=1)  # noqa: SIM115 (lives with the run)
        if progress:
            self.bar = tqdm(total=total, initial=start_step, desc="train", dynamic_ncols=True)
        self.started = time.time()

    def advance(self, postfix: Mapping[str, float] | None = None) -> None:
        """One step done; refresh the bar's loss, lr and throughput."""
        if self.bar is not None:
            self.bar.update(1)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def log(self, step: int, scalars: Mapping[str, float], kind: str = "train") -> None:
        """One record: TensorBoard scalars under `kind/` and one JSON line."""
        if not self.enabled:
            return
        assert self.writer is not None and self.jsonl is not None
        for key, value in scalars.items():
            self.writer.add_scalar(f"{kind}/{key}", value, step)
        record = {"kind": kind, "step": step, "time": round(time.time() - self.started, 3)}
        self.jsonl.write(json.dumps({**record, **{k: float(v) for k, v in scalars.items()}}) + "\n")

    def message(self, text: str) -> None:
        """A line that does not break the progress bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        """Flush and close everything."""
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()
