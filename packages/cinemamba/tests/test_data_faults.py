"""Faults in raw shards (issue 14): truncated shards must not distort training batches, and bad
metadata, captions or duplicate keys get their own counted reason in the loader and in
`data inspect`. Expected values come from reading the tar with Python's tarfile and from the
video header, never from the loader under test."""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cinemamba.data.inspection import inspect_shards
from cinemamba.data.loader import LoaderConfig, VideoLoader
from cinemamba.data.shards import sample_to_tar_entries, write_shards
from cinemamba.data.synth import SceneConfig
from cinemamba.data.synth_video import write_synth
from cinemamba.data.video import encode_video
from cinemamba.latents.clips import ClipConfig


def readable_keys(path: Path) -> list[str]:
    """Keys whose every member is complete in a (possibly truncated) tar, read with tarfile
    until it fails: the independent reference for what a reader can deliver."""
    members: dict[str, set[str]] = {}
    order: list[str] = []
    try:
        with open(path, "rb") as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
            for info in tar:
                data = tar.extractfile(info).read()
                if len(data) != info.size:
                    break  # streaming tarfile returns short data at a premature end
                key, _, ext = info.name.partition(".")
                if key not in members:
                    members[key] = set()
                    order.append(key)
                members[key].add(ext)
    except (tarfile.ReadError, EOFError):
        pass
    return [k for k in order if members[k] == {"mp4", "txt", "json"}]


def planned_keys(directory: Path, shard: str) -> list[str]:
    """Keys the shard writer's plan promised for `shard`."""
    plan = json.loads(next(directory.glob("*.plan.json")).read_text())
    return next(s["keys"] for s in plan["shards"] if s["name"] == shard)


@pytest.fixture(scope="module")
def truncated(tmp_path_factory) -> tuple[Path, list[str]]:
    """One shard of 16 samples, cut inside the data of the 6th sample's video: some batches
    are partly and some wholly in the missing tail."""
    out = tmp_path_factory.mktemp("trunc")
    write_synth(out, "train", 16, SceneConfig(frames=6, height=16, width=16), samples_per_shard=16)
    path = out / "train-000000.tar"
    with tarfile.open(path) as tar:
        cut = tar.getmember(f"{planned_keys(out, path.name)[5]}.mp4").offset_data + 100
    path.write_bytes(path.read_bytes()[:cut])
    good = readable_keys(path)
    assert good == planned_keys(out, path.name)[:5]  # the fixture cuts where intended
    return out, good


@pytest.mark.parametrize("workers", [0, 2])
def test_truncated_shard_gives_full_batches_of_distinct_samples(truncated, workers):
    """Every batch holds batch_size distinct readable keys; each missing position is counted
    once; resuming at batch k gives batch k."""
    out, good = truncated
    bs, n = 4, 20
    cfg = LoaderConfig(str(out), ClipConfig(frames=3, start="first"), bs, workers=workers)
    loader = VideoLoader(cfg)
    it = loader.batches()
    batches = [next(it) for _ in range(n)]
    for b in batches:
        assert len(b["key"]) == bs and len(set(b["key"])) == bs
        assert set(b["key"]) <= set(good)
        assert b["video"].shape[0] == bs
    # one shard of 16 planned samples, read front to back on every draw: position p is
    # sample p % 16, missing when p % 16 is past the readable part
    missing = sum(p % 16 >= len(good) for p in range(n * bs))
    assert sum(b["skipped"].get("missing", 0) for b in batches) == missing == 55
    # each key's share: every readable key is delivered about n*bs/len(good) = 16 times;
    # the bug handed the same stand-in to every batch in the hole (30+ times for one key)
    counts = Counter(k for b in batches for k in b["key"])
    assert set(counts) == set(good) and max(counts.values()) <= 1.5 * n * bs / len(good)
    resumed = next(VideoLoader(cfg).batches(start_batch=7))
    assert resumed["key"] == batches[7]["key"]


def test_finite_pass_counts_each_missing_sample_once(truncated):
    out, good = truncated
    loader = VideoLoader(LoaderConfig(str(out), ClipConfig(frames=3, start="first"), 3,
                                      resampled=False))  # fmt: skip
    keys = [k for b in loader for k in b["key"]]
    assert sorted(keys) == sorted(good)
    assert loader.skipped["missing"] == 16 - len(good)
    assert loader.skipped["unreadable_shard"] == 1


def _write_meta_set(out: Path) -> np.ndarray:
    """Samples with declared metadata that lies, a non-UTF-8 caption and a duplicate key."""
    frames = np.stack([np.full((16, 16, 3), 20 * i, np.uint8) for i in range(10)])
    video = encode_video(frames, 12.0)
    true = {"fps": 12.0, "frames": 10, "height": 16, "width": 16}
    samples = [
        sample_to_tar_entries("honest", video, "fine", true),
        sample_to_tar_entries("claims999", video, "lies about frames", {**true, "frames": 999}),
        sample_to_tar_entries("huge", video, "huge sizes", {**true, "frames": 2.5e10}),
        {**sample_to_tar_entries("latin1", video, "x", true), "txt": "café".encode("latin-1")},
    ]
    dup = sample_to_tar_entries("honest", video, "a second sample with an old key", true)
    groups = [samples, [dup]]
    write_shards(out, "meta", groups, lambda s: s, keys=[[s["__key__"] for s in g] for g in groups])
    return frames


def test_loader_counts_metadata_and_caption_faults(tmp_path):
    frames = _write_meta_set(tmp_path)
    clip = ClipConfig(frames=10, start="first")  # all 10 true frames: 999 must not be believed
    loader = VideoLoader(LoaderConfig(str(tmp_path), clip, 8, resampled=False, uint8=True))
    batches = list(loader)
    keys = [k for b in batches for k in b["key"]]
    # the lying-metadata samples are decoded with the header's true frame count and used
    assert sorted(keys) == ["claims999", "honest", "honest", "huge"]
    got = {k: v for b in batches for k, v in zip(b["key"], b["video"], strict=True)}
    # decoded mean grey level of each frame equals what was encoded (lossy: within 2 levels)
    means = got["claims999"].float().mean(dim=(1, 2, 3)).numpy()
    np.testing.assert_allclose(means, frames.mean(axis=(1, 2, 3)), atol=2)
    assert loader.skipped["metadata_mismatch"] == 1
    assert loader.skipped["implausible_metadata"] == 1
    assert loader.skipped["bad_caption_encoding"] == 1
    assert "undecodable" not in loader.skipped


def test_inspect_statistics_come_from_the_video_header(tmp_path):
    _write_meta_set(tmp_path)
    stats, _ = inspect_shards(str(tmp_path), contact_clips=0)
    summary = stats.summary()
    assert summary["samples"] == 5
    # honest, claims999, huge are good; latin1 and the repeated key are not
    assert summary["good"] == 3
    assert summary["frames"] == {"min": 10.0, "mean": 10.0, "max": 10.0}
    assert summary["skipped"] == {"bad_caption_encoding": 1, "duplicate_key": 1}
    assert summary["warnings"] == {"metadata_mismatch": 1, "implausible_metadata": 1}


def test_a_set_smaller_than_a_batch_still_fills_it(truncated):
    """5 readable samples, batch of 8: distinct keys are impossible, so the batch repeats
    readable samples instead of failing."""
    out, good = truncated
    it = VideoLoader(LoaderConfig(str(out), ClipConfig(frames=3, start="first"), 8)).batches()
    batch = next(it)
    assert len(batch["key"]) == 8 and set(batch["key"]) == set(good)
