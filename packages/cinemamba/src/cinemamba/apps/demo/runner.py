"""A small resumable stage runner: each stage writes `<out>/<stage>/` and stamps it with a hash.

A stage is a function that fills a directory. It runs in `<out>/<stage>.tmp/`; when it returns,
a stamp (`stamp.json`: the stage's config hash, wall time, a summary) is written and the
directory is renamed to `<out>/<stage>/`. A later run whose config hash for that stage is
unchanged reuses the directory. The hash of a stage covers its own config and the hashes of the
stages it reads from, so changing the VAE redoes everything downstream of it but not the data.
An interrupted stage leaves `<stage>.tmp/` with a `pending.json` holding its hash; a re-run with
the same hash hands that directory back to the stage (training resumes from its checkpoints,
shard writing skips finished shards); any other hash wipes it first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STAMP = "stamp.json"
PENDING = "pending.json"


def config_hash(value: Any) -> str:
    """A short stable hash of a JSON-able value (dict keys sorted)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_json(path: Path, value: Any) -> None:
    """Write JSON via a temporary name, then rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


@dataclass
class Stage:
    """One step of a pipeline.

    `run(work_dir, inputs)` fills `work_dir` and returns a JSON-able summary; `inputs` maps each
    name in `needs` to that finished stage's directory. `config` is what the stage's output
    depends on (hashed together with the hashes of `needs`).
    """

    name: str
    run: Callable[[Path, Mapping[str, Path]], Mapping[str, Any] | None]
    config: Any
    needs: Sequence[str] = ()
    description: str = ""


class StageInterrupted(RuntimeError):
    """A stage stopped early on purpose (e.g. SIGTERM): its partial work is kept to resume."""


@dataclass
class StageRecord:
    """How a stage ended in this run: ran or reused, its hash, times and summary."""

    name: str
    hash: str
    status: str  # "ran" | "reused"
    seconds: float  # wall time of the run that produced the directory
    finished: str  # ISO time the directory was completed
    summary: dict[str, Any] = field(default_factory=dict)
    # CPU time of this process (all its threads) in the stage: on a shared, oversubscribed
    # machine it is what the wall time would be on idle cores (single-threaded runs).
    cpu_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "hash": self.hash,
            "status": self.status,
            "seconds": round(self.seconds, 2),
            "cpu_seconds": round(self.cpu_seconds, 2),
            "finished": self.finished,
            "summary": self.summary,
        }


def _say(text: str) -> None:
    # The overall progress line: plain stderr, one line per event, so it reads well in logs and
    # between tqdm bars (which also write to stderr).
    print(text, file=sys.stderr, flush=True)


class StageRunner:
    """Runs stages in order under `out`, reusing those whose stamp matches their hash."""

    def __init__(
        self,
        out: str | os.PathLike,
        stages: Sequence[Stage],
        *,
        fresh: bool | Sequence[str] = False,
        say: Callable[[str], None] = _say,
        label: str = "demo",
        total: int | None = None,
    ) -> None:
        self.out = Path(out)
        self.label = label
        self.total = total or len(stages)  # steps shown in progress lines (may include more)
        self.stages = list(stages)
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        for i, stage in enumerate(self.stages):
            missing = [n for n in stage.needs if n not in names[:i]]
            if missing:
                raise ValueError(
                    f"stage {stage.name!r} needs {missing}, which do not run before it"
                )
        if isinstance(fresh, bool):
            self.fresh = set(names) if fresh else set()
        else:
            unknown = sorted(set(fresh) - set(names))
            if unknown:
                raise ValueError(f"unknown stage(s) {unknown} to redo; valid: {', '.join(names)}")
            self.fresh = set(fresh)
        self.say = say
        self.hashes: dict[str, str] = {}
        for stage in self.stages:
            upstream = {n: self.hashes[n] for n in stage.needs}
            self.hashes[stage.name] = config_hash({"config": stage.config, "needs": upstream})

    def directory(self, name: str) -> Path:
        """Where a finished stage's output lives."""
        return self.out / name

    def stamp(self, name: str) -> dict[str, Any] | None:
        """The stamp of a finished stage directory, or None if missing or unreadable."""
        path = self.directory(name) / STAMP
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def _reusable(self, stage: Stage, redo: set[str]) -> dict[str, Any] | None:
        if stage.name in redo:
            return None
        stamp = self.stamp(stage.name)
        if stamp is None or stamp.get("hash") != self.hashes[stage.name]:
            return None
        return stamp

    def run(self) -> list[StageRecord]:
        """Run (or reuse) every stage in order; returns one record per stage."""
        self.out.mkdir(parents=True, exist_ok=True)
        records: list[StageRecord] = []
        redo = set(self.fresh)
        for k, stage in enumerate(self.stages, 1):
            head = f"[{self.label} {k}/{self.total}] {stage.name}"
            # A stage that reruns makes everything reading it rerun, whatever its stamp says.
            if any(n in redo for n in stage.needs):
                redo.add(stage.name)
            stamp = self._reusable(stage, redo)
            if stamp is not None:
                self.say(
                    f"{head}: reused (finished {stamp['finished']}, took {stamp['seconds']:.1f} s)"
                )
                records.append(
                    StageRecord(
                        stage.name,
                        stamp["hash"],
                        "reused",
                        float(stamp["seconds"]),
                        stamp["finished"],
                        dict(stamp.get("summary") or {}),
                        float(stamp.get("cpu_seconds", 0.0)),
                    )
                )
                continue
            redo.add(stage.name)
            records.append(self._run_stage(stage, head))
        return records

    def _run_stage(self, stage: Stage, head: str) -> StageRecord:
        digest = self.hashes[stage.name]
        final = self.directory(stage.name)
        work = self.out / f"{stage.name}.tmp"
        pending = _read_json(work / PENDING)
        resumed = pending is not None and pending.get("hash") == digest
        if work.exists() and not resumed:
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        if not resumed:
            write_json(work / PENDING, {"hash": digest, "config": stage.config})
        what = f" - {stage.description}" if stage.description else ""
        self.say(f"{head}: {'resuming' if resumed else 'running'}{what}")
        inputs = {n: self.directory(n) for n in stage.needs}
        start, cpu_start = time.perf_counter(), time.process_time()
        spent_before = float(pending.get("seconds", 0.0)) if resumed and pending else 0.0
        cpu_before = float(pending.get("cpu_seconds", 0.0)) if resumed and pending else 0.0
        try:
            summary = dict(stage.run(work, inputs) or {})
        except BaseException as err:
            # Keep the partial work (and the time spent) for a resumed run with the same hash.
            spent = spent_before + time.perf_counter() - start
            cpu = cpu_before + time.process_time() - cpu_start
            write_json(
                work / PENDING,
                {"hash": digest, "config": stage.config, "seconds": spent, "cpu_seconds": cpu},
            )
            how = "stopped" if isinstance(err, StageInterrupted) else "failed"
            self.say(f"{head}: {how} after {spent:.1f} s (partial output kept in {work})")
            raise
        seconds = spent_before + time.perf_counter() - start
        cpu = cpu_before + time.process_time() - cpu_start
        finished = time.strftime("%Y-%m-%dT%H:%M:%S")
        stamp = {
            "hash": digest,
            "stage": stage.name,
            "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu, 2),
            "finished": finished,
            "config": stage.config,
            "summary": summary,
        }
        (work / PENDING).unlink(missing_ok=True)
        write_json(work / STAMP, stamp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
        self.say(f"{head}: done in {seconds:.1f} s (CPU {cpu:.1f} s)")
        return StageRecord(stage.name, digest, "ran", seconds, finished, summary, cpu)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
