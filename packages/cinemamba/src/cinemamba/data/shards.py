"""WebDataset shard writing: plan samples into shards, write each under a temporary name.

A shard set is `PREFIX-000000.tar, PREFIX-000001.tar, ...` plus `PREFIX.plan.json`, which
records which keys go in which shard. Each shard is written to `NAME.tar.tmp` and renamed when
complete, so a crash never leaves a truncated shard under its final name and a re-run skips
every shard that already exists. A sample is `KEY.mp4`, `KEY.txt` (caption) and `KEY.json`
(fps, frames, height, width, source, ...).
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from tqdm import tqdm

from cinemamba.data.video import VideoDecodeError, probe_video, transcode_video

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg")


def sample_to_tar_entries(key: str, video: bytes, caption: str, meta: dict) -> dict[str, Any]:
    """The dict `wds.TarWriter.write` takes for one sample (all values already bytes)."""
    if "." in key or "/" in key:
        raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
    return {
        "__key__": key,
        "mp4": bytes(video),
        "txt": caption.encode("utf-8"),
        "json": json.dumps(meta, separators=(",", ":")).encode("utf-8"),
    }


def plan_shards(
    sizes: Sequence[int], max_samples: int | None = None, max_bytes: int | None = None
) -> list[list[int]]:
    """Group sample indices (in order) into shards of at most `max_samples` and `max_bytes`.

    A single sample bigger than `max_bytes` gets a shard of its own.
    """
    if max_samples is None and max_bytes is None:
        raise ValueError("give max_samples or max_bytes per shard")
    if (max_samples is not None and max_samples < 1) or (max_bytes is not None and max_bytes < 1):
        raise ValueError(f"max_samples={max_samples} and max_bytes={max_bytes} must be >= 1")
    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, size in enumerate(sizes):
        full_n = max_samples is not None and len(current) >= max_samples
        full_b = max_bytes is not None and current and used + size > max_bytes
        if full_n or full_b:
            groups.append(current)
            current, used = [], 0
        current.append(i)
        used += size
    if current:
        groups.append(current)
    return groups


def shard_name(prefix: str, index: int) -> str:
    """File name of shard `index` of a set."""
    return f"{prefix}-{index:06d}.tar"


def _write_one(args: tuple[Path, list[Any], Callable[[Any], dict]]) -> int:
    path, items, make_sample = args
    tmp = path.with_name(path.name + ".tmp")
    total = 0
    with open(tmp, "wb") as fh:
        # Fixed mtime makes shards byte-identical across runs (reproducible, diffable).
        writer = wds.TarWriter(fh, encoder=False, mtime=0.0)
        for item in items:
            total += writer.write(make_sample(item))
        writer.close()
    tmp.replace(path)
    return total


def write_shards(
    out_dir: str | Path,
    prefix: str,
    groups: Sequence[Sequence[Any]],
    make_sample: Callable[[Any], dict],
    *,
    keys: Sequence[Sequence[str]],
    info: dict | None = None,
    workers: int = 1,
    desc: str = "shards",
) -> list[Path]:
    """Write `groups[i]` (items turned into tar dicts by `make_sample`) as shard i of `prefix`.

    Existing complete shards are skipped; the plan (`keys`, per shard) is saved to
    `PREFIX.plan.json` first and must match on a re-run, so a re-run never mixes two plans.
    `make_sample` must be picklable when `workers > 1` (a module-level function or partial).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = {
        "prefix": prefix,
        "info": info or {},
        "shards": [
            {"name": shard_name(prefix, i), "samples": len(k), "keys": list(k)}
            for i, k in enumerate(keys)
        ],
    }
    plan_path = out_dir / f"{prefix}.plan.json"
    if plan_path.exists():
        old = json.loads(plan_path.read_text())
        if old["shards"] != plan["shards"] or old.get("info") != plan["info"]:
            raise ValueError(
                f"{plan_path} holds a different shard plan (inputs or options changed); "
                "write to a new directory or delete the old shards and plan"
            )
    else:
        tmp = plan_path.with_name(plan_path.name + ".tmp")
        tmp.write_text(json.dumps(plan, indent=1))
        tmp.replace(plan_path)
    paths = [out_dir / shard_name(prefix, i) for i in range(len(groups))]
    todo = [(p, list(g), make_sample) for p, g in zip(paths, groups, strict=True) if not p.exists()]
    if len(todo) < len(paths):
        log.info("%d of %d shards already complete, skipped", len(paths) - len(todo), len(paths))
    bar = tqdm(total=len(todo), desc=desc, unit="shard", disable=not todo)
    if workers > 1 and len(todo) > 1:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(min(workers, len(todo))) as pool:
            for _ in pool.imap_unordered(_write_one, todo):
                bar.update()
    else:
        for job in todo:
            _write_one(job)
            bar.update()
    bar.close()
    return paths


# ---------------------------------------------------------------- folder of videos -> shards


def read_captions(path: str | Path) -> dict[str, str]:
    """Captions from `.jsonl` (one object per line) or `.csv` (with a header row).

    Each record names its video in a `video`, `file`, `path` or `key` field and its caption in
    a `caption` or `text` field. Returns {video name: caption}.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption file {str(path)!r} does not exist")
    if path.suffix == ".jsonl":
        records = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{n}: not valid JSON: {err}") from None
    elif path.suffix == ".csv":
        with open(path, newline="") as fh:
            records = list(csv.DictReader(fh))
    else:
        raise ValueError(f"caption file {str(path)!r} must end in .jsonl or .csv")
    out: dict[str, str] = {}
    for n, rec in enumerate(records, 1):
        name = next((rec[k] for k in ("video", "file", "path", "key") if rec.get(k)), None)
        text = next((rec[k] for k in ("caption", "text") if rec.get(k) is not None), None)
        if name is None or text is None:
            raise ValueError(
                f"{path} record {n} needs a video name (video/file/path/key) and a caption "
                f"(caption/text), got fields {sorted(rec)}"
            )
        out[str(name)] = str(text)
    return out


def key_for(relpath: str) -> str:
    """A WebDataset key from a relative path: no dots or slashes (they split sample fields)."""
    stem = relpath.rsplit(".", 1)[0] if "." in Path(relpath).name else relpath
    return re.sub(r"[^A-Za-z0-9_-]", "_", stem)


@dataclass
class FolderReport:
    """What `shards_from_folder` did, with reasons for every video it left out."""

    shards: list[Path] = field(default_factory=list)
    samples: int = 0
    skipped: Counter = field(default_factory=Counter)
    caption_conflicts: int = 0  # videos whose sidecar .txt differs from the caption file


SIDECAR = "SIDECAR"  # `captions` value: read only the .txt sidecars next to the videos


def _sidecar_caption(video: Path) -> str | None:
    """The caption in `video`'s `.txt` sidecar (same stem), or None without one."""
    txt = video.with_suffix(".txt")
    if not txt.is_file():
        return None
    try:
        return txt.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"caption sidecar {str(txt)!r} is not UTF-8 text: {err}") from None


def _folder_sample(item: tuple[str, Path, str, dict, int | None]) -> dict:
    key, path, caption, meta, crf = item
    if crf is None:
        data = path.read_bytes()
    else:
        data = transcode_video(path, crf=crf)
    return sample_to_tar_entries(key, data, caption, meta)


def shards_from_folder(
    video_dir: str | Path,
    captions: str | Path,
    out_dir: str | Path,
    *,
    prefix: str = "shard",
    max_samples: int | None = 1000,
    max_bytes: int | None = None,
    transcode: bool = False,
    crf: int = 18,
    workers: int = 1,
    shuffle_seed: int | None = 0,
) -> FolderReport:
    """Turn a folder of videos plus captions into WebDataset shards.

    Captions come from `captions` (a .jsonl / .csv file) and from `.txt` sidecars next to the
    videos (`clip.mp4` + `clip.txt`, the musubi-tuner / diffusion-pipe layout); `captions` =
    `SIDECAR` reads sidecars only. The file wins where both name a video (a differing sidecar
    is logged and counted as `caption_conflicts`). mp4 files are stored as they are unless
    `transcode`; other containers are always transcoded to H.264 mp4 (`crf`). Videos without a
    caption or that cannot be decoded are skipped with a warning each and counted in the
    report. The videos are shuffled (seeded by `shuffle_seed`, recorded in the plan; None keeps
    sorted path order) so one-folder-per-class layouts do not put one class in each shard.
    `max_bytes` plans with source file sizes, so it is approximate for transcoded videos.
    """
    video_dir = Path(video_dir)
    if not video_dir.is_dir():
        raise FileNotFoundError(f"video folder {str(video_dir)!r} does not exist")
    table = {} if str(captions) == SIDECAR else read_captions(captions)
    files = sorted(p for p in video_dir.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
    report = FolderReport()
    items, sizes, seen, from_table = [], [], {}, 0
    for path in tqdm(files, desc="probe", unit="video"):
        rel = path.relative_to(video_dir).as_posix()
        caption = next((table[n] for n in (rel, path.name, path.stem) if n in table), None)
        from_table += caption is not None
        sidecar = _sidecar_caption(path)
        if caption is None:
            caption = sidecar
        elif sidecar is not None and sidecar.strip() != caption.strip():
            log.warning("%s: the caption file and %s differ; using the file's", rel,
                        path.with_suffix(".txt").name)  # fmt: skip
            report.caption_conflicts += 1
        if caption is None or not caption.strip():
            log.warning("skipping %s: no caption", rel)
            report.skipped["no_caption"] += 1
            continue
        try:
            info = probe_video(path)
        except VideoDecodeError as err:
            log.warning("skipping %s: %s", rel, err)
            report.skipped["undecodable"] += 1
            continue
        key = key_for(rel)
        if key in seen:
            raise ValueError(f"{rel} and {seen[key]} map to the same sample key {key!r}")
        seen[key] = rel
        meta = {
            "fps": info.fps,
            "frames": info.frames,
            "height": info.height,
            "width": info.width,
            "duration": info.duration,
            "source": rel,
        }
        must_transcode = transcode or path.suffix.lower() != ".mp4"
        items.append((key, path, caption.strip(), meta, crf if must_transcode else None))
        sizes.append(path.stat().st_size)
    if shuffle_seed is not None:
        # Seeded and recorded in the plan: a re-run with the same seed resumes the same plan.
        order = np.random.default_rng(shuffle_seed).permutation(len(items))
        items, sizes = [items[i] for i in order], [sizes[i] for i in order]
    unused = len(table) - from_table
    if unused > 0:
        log.warning("%d captions name no video found in %s", unused, video_dir)
    if not items:
        raise ValueError(
            f"no usable videos in {str(video_dir)!r} (skipped: {dict(report.skipped)})"
        )
    groups = [[items[i] for i in g] for g in plan_shards(sizes, max_samples, max_bytes)]
    report.shards = write_shards(
        out_dir,
        prefix,
        groups,
        _folder_sample,
        keys=[[it[0] for it in g] for g in groups],
        info={
            "source": "folder",
            "transcode": transcode,
            "crf": crf,
            "shuffle_seed": shuffle_seed,
        },  # fmt: skip
        workers=workers,
    )
    report.samples = len(items)
    return report
