"""An exclusive claim on the shards an export writes, so two exports never share a folder.

One lock file per output folder (`.export.lock`); a process claims the shards it will write
by taking a POSIX record lock on byte `i` of that file for each shard `i` (`fcntl.lockf`).
The ranks of one export job claim disjoint shards and never collide; a second export into the
same folder overlaps some claim and fails at once, naming the first (issue 14: the loser used
to die with a rename `[Errno 2]` that did not mention the other writer).

Who holds a claim is recorded in `.export-owners/HOST-PID.json` (pid, host, start time, rank,
world), because the kernel lock itself does not say. The kernel drops a dead process's locks,
so a lock is never stale on a local file system; an owner record left by a process that is gone
from this host is removed with a log line. Record locks on NFS need a working lock daemon
(`lockd`); where the file system cannot lock at all the export runs with a warning. Record
locks belong to a process, so two exports started from threads of one process do not exclude
each other (run exports as separate processes, as the command line does).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOCK_NAME = ".export.lock"
OWNERS_DIR = ".export-owners"
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # the file system cannot lock


class ExportLockedError(RuntimeError):
    """Another export is writing to the same output folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _owners(out: Path) -> list[tuple[Path, dict[str, Any]]]:
    owners = []
    for path in sorted((out / OWNERS_DIR).glob("*.json")):
        try:
            owners.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):  # being written or removed right now
            continue
    return owners


def _drop_stale(out: Path, host: str) -> None:
    for path, rec in _owners(out):
        if rec.get("host") == host and not _alive(int(rec.get("pid", 0))):
            log.warning(
                "breaking stale export lock in %s: pid %s (started %s) is gone from this host",
                out, rec.get("pid"), rec.get("started"),
            )  # fmt: skip
            path.unlink(missing_ok=True)


def _describe(out: Path, me: int, host: str, shards: Sequence[int]) -> str:
    """'another export (pid N, started T) is writing to OUT' for a live owner whose share
    overlaps `shards` (another rank of one's own job never does)."""
    for _, rec in _owners(out):
        if rec.get("pid") == me and rec.get("host") == host:
            continue
        rank, world = int(rec.get("rank", 0)), max(1, int(rec.get("world", 1)))
        if not any(i % world == rank for i in shards):
            continue
        where = "" if rec.get("host") == host else f" on {rec.get('host')}"
        return (
            f"another export (pid {rec.get('pid')}{where}, started {rec.get('started')}) is "
            f"writing to {out} (its rank {rank} of {world})"
        )
    return f"another export (owner not recorded) is writing to {out}"


@contextmanager
def export_claim(out: Path, shards: Sequence[int], rank: int, world: int) -> Iterator[None]:
    """Hold an exclusive claim on shard indices `shards` of folder `out` for the block.

    Raises ExportLockedError naming the other writer when any of them is claimed already.
    """
    host, pid = socket.gethostname(), os.getpid()
    _drop_stale(out, host)
    (out / OWNERS_DIR).mkdir(exist_ok=True)
    record = out / OWNERS_DIR / f"{host}-{pid}.json"
    # Closing any descriptor of the lock file drops this process's record locks (POSIX), so
    # the file is opened once here and nowhere else.
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        # The record goes first, so whoever holds a claim is always recorded when a second
        # export looks for it.
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        info = {"pid": pid, "host": host, "started": started, "rank": rank, "world": world}
        tmp = record.with_name(record.name + ".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(record)
        for i in shards:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, i, os.SEEK_SET)
            except OSError as err:
                if err.errno in _NO_LOCKS:  # e.g. NFS without lockd: run, but say so
                    log.warning(
                        "cannot lock %s (%s): this export is not protected against a second "
                        "export into the same folder", out / LOCK_NAME, err,
                    )  # fmt: skip
                    break
                if err.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                raise ExportLockedError(
                    f"{_describe(out, pid, host, shards)}; wait for it to finish or export to another "
                    f"folder (this process: pid {pid}, rank {rank} of {world})"
                ) from None
        yield
    finally:
        record.unlink(missing_ok=True)
        os.close(fd)  # releases every claim of this process
