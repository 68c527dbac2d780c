"""The video sets `cinemamba eval` reads: raw shard sets and folders of generated mp4s.

A raw shard set (`KEY.mp4` + `KEY.txt` caption + `KEY.json`) is read in order, sample by sample;
a generated folder holds `NAME.mp4` files with their prompts in sidecars (`NAME.txt`, or a
`prompts.jsonl`). Both yield `VideoItem`s; a video that cannot be decoded is logged and counted.
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path

import numpy as np
from braceexpand import braceexpand

from cinemamba.data.video import VideoDecodeError, decode_video

log = logging.getLogger(__name__)


PROMPTS_FILE = "prompts.jsonl"


@dataclass
class VideoItem:
    """One video of a set: uint8 frames `(T, H, W, 3)`, its prompt (or None) and metadata."""

    key: str
    frames: np.ndarray
    prompt: str | None
    meta: dict = field(default_factory=dict)


def shard_paths(spec: str) -> list[Path]:
    """Shard files of a set: a directory (its `*.tar`), a file, a glob or a brace pattern."""
    path = Path(spec)
    if path.is_dir():
        found = sorted(p for p in path.glob("*.tar"))
    else:
        found = sorted({Path(p) for s in braceexpand(spec) for p in (glob(s) or [s])})
        found = [p for p in found if p.is_file()]
    if not found:
        raise FileNotFoundError(f"no shard (.tar) found for {spec!r}")
    return found


def iter_shards(spec: str, skipped: Counter, max_frames: int = 0) -> Iterator[VideoItem]:
    """Videos of a raw shard set in order; undecodable samples are logged and counted."""
    for path in shard_paths(spec):
        with tarfile.open(path) as tar:
            # WebDataset keeps the files of one sample adjacent: group them by key as they come
            # (the key is the path up to the first dot of the file name).
            key, group = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                stem, _, ext = base.partition(".")
                k = f"{folder}/{stem}" if folder else stem
                if k != key and key is not None:
                    item = _shard_item(key, group, path, skipped, max_frames)
                    if item is not None:
                        yield item
                    group = {}
                key = k
                group[ext] = tar.extractfile(member).read()
            if key is not None:
                item = _shard_item(key, group, path, skipped, max_frames)
                if item is not None:
                    yield item


def _shard_item(
    key: str, files: dict[str, bytes], path: Path, skipped: Counter, max_frames: int
) -> VideoItem | None:
    if "mp4" not in files:
        if not any(ext.endswith("npy") for ext in files):  # latent samples carry no video
            log.warning("skipping %s in %s: no .mp4", key, path.name)
        skipped["no_video"] += 1
        return None
    try:
        frames = decode_video(files["mp4"], count=max_frames or None)
    except VideoDecodeError as err:
        log.warning("skipping %s in %s: %s", key, path.name, err)
        skipped["undecodable"] += 1
        return None
    meta = json.loads(files["json"]) if "json" in files else {}
    prompt = files["txt"].decode("utf-8").strip() if "txt" in files else None
    return VideoItem(key, frames, prompt or None, meta)


def read_prompts(folder: Path) -> dict[str, str]:
    """Prompts of a generated folder from `prompts.jsonl` ({video name: prompt}); may be empty."""
    path = folder / PROMPTS_FILE
    if not path.is_file():
        return {}
    table = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: not valid JSON: {err}") from None
        name = next((rec[k] for k in ("video", "file", "path", "key") if rec.get(k)), None)
        text = next((rec[k] for k in ("prompt", "caption", "text") if rec.get(k)), None)
        if name is None or text is None:
            raise ValueError(
                f"{path}:{n}: needs a video name (video/file/path/key) and a prompt "
                f"(prompt/caption/text), got fields {sorted(rec)}"
            )
        table[str(name)] = str(text)
    return table


def iter_generated(
    folder: str | Path, skipped: Counter, max_frames: int = 0
) -> Iterator[VideoItem]:
    """Generated mp4s of a folder (sorted) with their prompts from the sidecars; a shard set
    (a folder of .tar, a .tar, a glob or a brace pattern) is read as shards instead."""
    folder = Path(folder)
    if not folder.is_dir() or (not any(folder.glob("*.mp4")) and any(folder.glob("*.tar"))):
        if folder.is_file() or any(ch in str(folder) for ch in "*?{") or folder.is_dir():
            yield from iter_shards(str(folder), skipped, max_frames)
            return
        raise FileNotFoundError(f"generated video folder {str(folder)!r} does not exist")
    table = read_prompts(folder)
    files = sorted(folder.glob("*.mp4"))
    if not files:
        raise FileNotFoundError(f"no .mp4 files in {str(folder)!r}")
    for path in files:
        sidecar = path.with_suffix(".txt")
        if sidecar.is_file():
            prompt = sidecar.read_text().strip() or None
        else:
            prompt = table.get(path.name) or table.get(path.stem)
        try:
            frames = decode_video(path, count=max_frames or None)
        except VideoDecodeError as err:
            log.warning("skipping %s: %s", path.name, err)
            skipped["undecodable"] += 1
            continue
        yield VideoItem(path.stem, frames, prompt)
