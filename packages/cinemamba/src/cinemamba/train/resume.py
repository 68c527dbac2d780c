"""The trainer's side of checkpoints: save every engine, EMA and RNG atomically, resume exactly,
say which settings changed on resume, and stop with one clear line when the disk is full.

The file layout and its atomic commit are `cinemamba.train.checkpoint`; `Checkpointing` is the
part of `Trainer` (`cinemamba.train.trainer`) that drives them over the DeepSpeed engines.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import logging
import os
import random
import shutil
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from cinemamba.train import checkpoint as ckpt_io
from cinemamba.train import distributed
from cinemamba.train.config import ConfigError
from cinemamba.train.ema import EMA
from cinemamba.train.task import call_optional

log = logging.getLogger(__name__)


# Config keys that do not change what is trained (where things go, how often it reports):
# changing them on resume is normal and not reported.
_BOOKKEEPING = ("train.run_dir", "train.resume", "train.progress", "train.log_every",
                "train.checkpoint_every", "train.keep_last", "train.eval_every")  # fmt: skip


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are leaves."""
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_changes(saved: Any, current: Any) -> list[str]:
    """`key: old -> new` for every setting that differs between two experiment configs (as
    saved in `trainer.json`), bookkeeping keys (run_dir, logging cadence...) left out."""
    old = _flatten(json.loads(json.dumps(saved or {}, default=str)))
    new = _flatten(json.loads(json.dumps(current or {}, default=str)))
    missing = object()
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, missing), new.get(key, missing)
        if a != b and not key.startswith(_BOOKKEEPING):
            show = lambda v: "(absent)" if v is missing else json.dumps(v)  # noqa: E731
            out.append(f"{key}: {show(a)} -> {show(b)}")
    return out


class Checkpointing:
    """Checkpoint save / resume of a `Trainer`, which sets what these methods read: `cfg`,
    `task`, `full_config`, `run_dir`, `rank`, `world`, `device`, `stage`, `phases`,
    `engines` and `emas`."""

    _last_ckpt_bytes = 0  # size of the newest checkpoint, to foresee a full disk

    def _pick_checkpoint(self) -> Path | None:
        if self.cfg.resume == "never":
            if ckpt_io.latest_checkpoint(self.run_dir) is not None:
                raise ConfigError(
                    f"{self.run_dir} already has checkpoints and train.resume=never; use "
                    "train.resume=auto to continue it or a new train.run_dir"
                )
            return None
        if self.cfg.resume == "auto":
            return ckpt_io.latest_checkpoint(self.run_dir)
        return ckpt_io.resolve_checkpoint(self.cfg.resume)

    def save_checkpoint(self, step: int) -> Path:
        """Write a checkpoint of every model, EMA, RNG and position; atomic (collective).

        A failed write (a full disk) on any rank removes the partial checkpoint, records the
        failure for the next start and raises `CheckpointSaveError` with one clear line.
        """
        root = ckpt_io.checkpoint_root(self.run_dir)
        tmp = root / (ckpt_io.step_dir_name(step) + ".tmp")
        error: BaseException | None = None
        try:
            self._write_checkpoint(tmp, step)
        except (OSError, RuntimeError) as err:  # torch.save reports a full disk as RuntimeError
            error = err
        failed = torch.tensor(float(error is not None), dtype=torch.float64, device=self.device)
        if distributed.all_reduce_sum(failed).item() > 0:
            self._save_failed(step, tmp, error)
        final = tmp.with_name(ckpt_io.step_dir_name(step))
        if self.rank == 0:
            ckpt_io.commit(tmp, self.cfg.keep_last)
            (root / ckpt_io.SAVE_FAILED).unlink(missing_ok=True)
            self._last_ckpt_bytes = ckpt_io.folder_size(final)
        dist.barrier()
        return final

    def _write_checkpoint(self, tmp: Path, step: int) -> None:
        if self.rank == 0:
            ckpt_io.begin(self.run_dir, step)
        dist.barrier()
        for name, engine in self.engines.items():
            engine.save_checkpoint(
                str(tmp / name), tag=ckpt_io.DS_TAG, client_state={"step": step}, save_latest=False
            )
        ckpt_io.save_rng(tmp, self.rank)
        if self.rank == 0:
            from safetensors.torch import save_file

            (tmp / "ema").mkdir(exist_ok=True)
            for name, ema in self.emas.items():
                path = tmp / "ema" / f"{name}.safetensors"
                save_file(ema.state_dict(), str(path.with_suffix(".partial")))
                os.replace(path.with_suffix(".partial"), path)
            state = {
                "step": step,
                "data_batches": step * self.cfg.grad_accum,
                "world_size": self.world,
                "zero_stage": self.stage,
                "precision": self.cfg.precision,
                "models": list(self.engines),
                "phases": self.phases,
                "ema": sorted(self.emas),
                "config": self.full_config,
            }
            ckpt_io.write_json(tmp / "trainer.json", state)
            call_optional(self.task, "on_checkpoint", tmp, step)

    def _save_failed(self, step: int, tmp: Path, error: BaseException | None) -> None:
        """Every rank: remove the partial checkpoint, record why, raise one clear line."""
        root = ckpt_io.checkpoint_root(self.run_dir)
        written = ckpt_io.folder_size(tmp) if self.rank == 0 else 0
        full = error is not None and ckpt_io.is_disk_full(error, root)
        first_line = (str(error).strip().splitlines() or [""])[0]  # torch's run over many lines
        what = "no space left on device" if full else f"{type(error).__name__}: {first_line}"
        # The failed writer's open file lives in the traceback's frames: on a full disk the
        # space of the files removed below only comes back once it is closed.
        for err in (error, getattr(error, "__context__", None)):
            if err is not None and err.__traceback__ is not None:
                traceback.clear_frames(err.__traceback__)
        gc.collect()
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # never left for a resume to pick up
        dist.barrier()
        free = ckpt_io.free_bytes(root)
        if error is None:
            what = "another rank failed to write its part"
        latest = ckpt_io.latest_checkpoint(self.run_dir)
        need = max(self._last_ckpt_bytes, written)
        msg = (
            f"checkpoint of step {step} not saved: {what} (writing {tmp.with_suffix('')}; "
            f"{ckpt_io.human_bytes(free)} free there"
            + (f", a checkpoint takes about {ckpt_io.human_bytes(need)}" if need else "")
            + "); the partial checkpoint was removed. "
            + (f"Free some space, then resume from {latest.name}" if latest else
               "Free some space, then start again")
        )  # fmt: skip
        if self.rank == 0:
            with contextlib.suppress(OSError):
                ckpt_io.write_json(root / ckpt_io.SAVE_FAILED, {
                    "step": step, "reason": what, "free_bytes": free, "needed_bytes": need,
                    "error": f"{type(error).__name__}: {error}" if error else what,
                })  # fmt: skip
        raise ckpt_io.CheckpointSaveError(errno.ENOSPC if full else errno.EIO, msg) from error

    def _check_space(self) -> None:
        """Before training: report a save that failed last time, and stop now (not at the next
        save, after retraining) when the disk cannot hold another checkpoint."""
        root = ckpt_io.checkpoint_root(self.run_dir)
        latest = ckpt_io.latest_checkpoint(self.run_dir)
        self._last_ckpt_bytes = ckpt_io.folder_size(latest) if latest is not None else 0
        problem = ""
        if self.rank == 0:
            record = root / ckpt_io.SAVE_FAILED
            if record.is_file():
                with contextlib.suppress(ValueError, OSError):
                    last = json.loads(record.read_text())
                    log.warning(
                        "the last run stopped because the checkpoint of step %s could not be "
                        "saved (%s); resuming from %s",
                        last.get("step"), last.get("reason"),
                        latest.name if latest else "the start",
                    )  # fmt: skip
            free = ckpt_io.free_bytes(root)
            if self._last_ckpt_bytes and free < self._last_ckpt_bytes:
                problem = (
                    f"not enough space for the next checkpoint in {root}: "
                    f"{ckpt_io.human_bytes(free)} free, the last one ({latest.name}) takes "
                    f"{ckpt_io.human_bytes(self._last_ckpt_bytes)}; free some space first "
                    "(the run would train and then fail at its next save)"
                )
        flag = torch.tensor(float(bool(problem)), dtype=torch.float64, device=self.device)
        if distributed.all_reduce_sum(flag).item() > 0:
            raise ckpt_io.CheckpointSaveError(
                errno.ENOSPC, problem or "rank 0 found no space for the next checkpoint"
            )

    def load_checkpoint(self, path: Path) -> int:
        """Restore everything `save_checkpoint` wrote; returns the step to continue from."""
        state = ckpt_io.read_trainer_state(path)
        changed = config_changes(state.get("config"), self.full_config)
        if changed and self.rank == 0:
            log.warning(
                "resuming %s with %d changed setting(s), the run will not follow the trajectory "
                "it started on: %s", path, len(changed), "; ".join(changed),
            )  # fmt: skip
        if sorted(state["models"]) != sorted(self.engines):
            raise ValueError(
                f"checkpoint {path} holds models {state['models']}, the task builds "
                f"{list(self.engines)}"
            )
        if state["world_size"] != self.world and self.stage > 0:
            raise ValueError(
                f"checkpoint {path} was written by {state['world_size']} ranks under ZeRO; resume "
                f"with the same world size (now {self.world})"
            )
        for name, engine in self.engines.items():
            load_path, _ = engine.load_checkpoint(
                str(path / name), tag=ckpt_io.DS_TAG, load_lr_scheduler_states=False
            )
            if load_path is None:
                raise FileNotFoundError(f"no DeepSpeed checkpoint for {name!r} in {path}")
        if self.emas:
            from safetensors.torch import load_file

            for name, ema in self.emas.items():
                file = path / "ema" / f"{name}.safetensors"
                if file.is_file():
                    ema.load_state_dict(load_file(str(file)))
                else:  # EMA switched on for a run that had none: start it from the weights
                    self.emas[name] = EMA(ema.module, ema.decay, ema.master)
        if not ckpt_io.load_rng(path, self.rank):
            seed_everything(self.cfg.seed + self.rank + state["step"])
        return int(state["step"])
