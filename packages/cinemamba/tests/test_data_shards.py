"""Shard writing: planning, folder -> shards (jsonl/csv, bad inputs), temp names, re-runs."""

import json
import tarfile

import numpy as np
import pytest

from cinemamba.data.shards import key_for, plan_shards, read_captions, shards_from_folder
from cinemamba.data.video import decode_video, encode_video


def test_plan_shards_by_samples_and_bytes():
    assert plan_shards([1] * 5, max_samples=2) == [[0, 1], [2, 3], [4]]
    assert plan_shards([4, 4, 4, 10, 1], max_bytes=8) == [[0, 1], [2], [3], [4]]
    assert plan_shards([3, 3, 3, 3], max_samples=3, max_bytes=7) == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="max_samples or max_bytes"):
        plan_shards([1])


def _frames(seed: int, t: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (t, 16, 16, 3), dtype=np.uint8)


@pytest.fixture
def folder(tmp_path):
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    for i in range(5):
        (videos / f"clip{i}.mp4").write_bytes(encode_video(_frames(i), 8.0))
    (videos / "sub" / "deep.mp4").write_bytes(encode_video(_frames(9, 4), 4.0))
    (videos / "other.mkv").write_bytes(encode_video(_frames(7), 8.0))  # always transcoded
    (videos / "broken.mp4").write_bytes(b"\x00garbage" * 50)  # undecodable
    (videos / "nocaption.mp4").write_bytes(encode_video(_frames(8), 8.0))
    rows = [{"video": f"clip{i}.mp4", "caption": f"caption {i}"} for i in range(5)]
    rows += [
        {"file": "sub/deep.mp4", "text": "deep one"},
        {"video": "other", "caption": "from mkv"},
        {"video": "broken.mp4", "caption": "never seen"},
    ]
    (tmp_path / "caps.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return tmp_path


def _read(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_folder_to_shards_layout_and_skips(folder):
    out = folder / "shards"
    report = shards_from_folder(
        folder / "videos", folder / "caps.jsonl", out, prefix="x", max_samples=3
    )
    assert report.samples == 7 and dict(report.skipped) == {"no_caption": 1, "undecodable": 1}
    assert [p.name for p in report.shards] == ["x-000000.tar", "x-000001.tar", "x-000002.tar"]
    assert not list(out.glob("*.tmp"))
    entries = {}
    for p in report.shards:
        entries.update(_read(p))
    keys = sorted({n.split(".")[0] for n in entries})
    assert keys == sorted(["clip0", "clip1", "clip2", "clip3", "clip4", "other", "sub_deep"])
    meta = json.loads(entries["sub_deep.json"])
    assert meta == {
        "fps": 4.0,
        "frames": 4,
        "height": 16,
        "width": 16,
        "duration": 1.0,
        "source": "sub/deep.mp4",
    }
    assert entries["clip3.txt"] == b"caption 3"
    src = (folder / "videos" / "clip3.mp4").read_bytes()
    assert entries["clip3.mp4"] == src  # mp4 stored as is
    assert decode_video(entries["other.mp4"]).shape == (6, 16, 16, 3)  # mkv transcoded
    plan = json.loads((out / "x.plan.json").read_text())
    assert [s["samples"] for s in plan["shards"]] == [3, 3, 1]


def test_rerun_skips_complete_shards_and_rewrites_missing_identically(folder):
    out = folder / "shards"
    args = (folder / "videos", folder / "caps.jsonl", out)
    first = shards_from_folder(*args, max_samples=3)
    mtimes = [p.stat().st_mtime_ns for p in first.shards]
    original = first.shards[1].read_bytes()
    first.shards[1].unlink()
    (out / "shard-000001.tar.tmp").write_bytes(b"half-written")  # a crash mid-shard
    again = shards_from_folder(*args, max_samples=3)
    assert again.shards[0].stat().st_mtime_ns == mtimes[0]
    assert again.shards[2].stat().st_mtime_ns == mtimes[2]
    assert again.shards[1].read_bytes() == original  # deterministic bytes (fixed mtime)
    assert not (out / "shard-000001.tar.tmp").exists()
    with pytest.raises(ValueError, match="different shard plan"):
        shards_from_folder(*args, max_samples=2)


def test_csv_captions_and_errors(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('path,caption\na.mp4,"hello, world"\nb.mp4,x\n')
    assert read_captions(path) == {"a.mp4": "hello, world", "b.mp4": "x"}
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"video": "a.mp4"}\n')
    with pytest.raises(ValueError, match="record 1"):
        read_captions(bad)
    txt = tmp_path / "c.txt"
    txt.write_text("a.mp4 hello\n")
    with pytest.raises(ValueError, match=r"\.jsonl or \.csv"):
        read_captions(txt)
    with pytest.raises(FileNotFoundError):
        read_captions(tmp_path / "missing.jsonl")
    assert key_for("a/b.c/d.mp4") == "a_b_c_d"


def _plan_keys(out, prefix="shard"):
    plan = json.loads((out / f"{prefix}.plan.json").read_text())
    return [s["keys"] for s in plan["shards"]], plan["info"]


@pytest.fixture
def classes(tmp_path):
    """The one-folder-per-class layout: 3 classes x 4 videos, captions from .txt sidecars."""
    videos = tmp_path / "videos"
    for c in ("cat", "dog", "eel"):
        (videos / c).mkdir(parents=True)
        for i in range(4):
            (videos / c / f"{i}.mp4").write_bytes(encode_video(_frames(i, 2), 8.0))
            (videos / c / f"{i}.txt").write_text(f"a {c} number {i}\n")
    return videos


def test_shuffled_plan_mixes_classes_and_is_seeded(classes, tmp_path):
    report = shards_from_folder(classes, "SIDECAR", tmp_path / "a", max_samples=4)
    keys, info = _plan_keys(tmp_path / "a")
    assert info["shuffle_seed"] == 0 and report.samples == 12
    # Read back from the tars: no shard holds a single class (sorted order would: 3 shards
    # of one class each); captions come from the sidecars.
    for path in report.shards:
        entries = _read(path)
        caps = [v.decode() for k, v in entries.items() if k.endswith(".txt")]
        assert len({c.split()[1] for c in caps}) > 1, caps
        for k, v in entries.items():
            if k.endswith(".txt"):
                cls, num = k.split(".")[0].split("_")
                assert v.decode() == f"a {cls} number {num}"
    # The same seed gives the same plan (and a re-run resumes it); another seed another one.
    shards_from_folder(classes, "SIDECAR", tmp_path / "b", max_samples=4)
    assert _plan_keys(tmp_path / "b")[0] == keys
    shards_from_folder(classes, "SIDECAR", tmp_path / "c", max_samples=4, shuffle_seed=1)
    assert _plan_keys(tmp_path / "c")[0] != keys
    with pytest.raises(ValueError, match="different shard plan"):  # the seed is in the plan
        shards_from_folder(classes, "SIDECAR", tmp_path / "a", max_samples=4, shuffle_seed=1)
    # No shuffle: sorted path order, as before.
    shards_from_folder(classes, "SIDECAR", tmp_path / "d", max_samples=4, shuffle_seed=None)
    flat = [k for shard in _plan_keys(tmp_path / "d")[0] for k in shard]
    assert flat == [f"{c}_{i}" for c in ("cat", "dog", "eel") for i in range(4)]


def test_caption_file_wins_over_sidecars_which_fill_gaps(classes, tmp_path, caplog):
    caps = tmp_path / "caps.csv"
    caps.write_text("video,caption\ncat/0.mp4,from the file\ndog/1.mp4,a dog number 1\n")
    (classes / "eel" / "3.txt").unlink()  # neither file nor sidecar: skipped
    report = shards_from_folder(classes, caps, tmp_path / "s", max_samples=100)
    entries = _read(report.shards[0])
    assert entries["cat_0.txt"] == b"from the file"  # the file wins ...
    assert entries["dog_1.txt"] == b"a dog number 1"  # ... equal to its sidecar: no conflict
    assert entries["cat_1.txt"] == b"a cat number 1"  # the sidecar fills the gap
    assert report.caption_conflicts == 1 and "differ" in caplog.text
    assert report.samples == 11 and dict(report.skipped) == {"no_caption": 1}


def test_cli_shuffle_flags(classes, tmp_path, capsys):
    from cinemamba.cli import main

    assert main(["shards", str(classes), "SIDECAR", str(tmp_path / "o"), "--no-shuffle"]) == 0
    assert _plan_keys(tmp_path / "o")[1]["shuffle_seed"] is None
    assert main(["shards", str(classes), "SIDECAR", str(tmp_path / "p"), "--shuffle-seed",
                 "7"]) == 0  # fmt: skip
    assert _plan_keys(tmp_path / "p")[1]["shuffle_seed"] == 7
    assert "12 samples in 1 shards" in capsys.readouterr().out
