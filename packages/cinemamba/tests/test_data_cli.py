"""CLI smoke tests: `cinemamba synth`, `cinemamba shards`, `cinemamba data inspect`."""

import json

import numpy as np
import webdataset as wds
from PIL import Image

from cinemamba.cli import main
from cinemamba.data.shards import sample_to_tar_entries
from cinemamba.data.video import encode_video


def test_synth_then_inspect(tmp_path, capsys):
    out = tmp_path / "synth"
    args = ["synth", str(out), "frames=10", "height=32", "width=32", "--train", "5", "--val", "3"]
    assert main([*args, "--samples-per-shard", "2"]) == 0
    assert sorted(p.name for p in (out / "train").glob("*.tar")) == [
        "train-000000.tar", "train-000001.tar", "train-000002.tar",
    ]  # fmt: skip
    sheet, summary = tmp_path / "sheet.png", tmp_path / "s.json"
    assert (
        main(
            [
                "data",
                "inspect",
                str(out / "val"),
                "--contact",
                str(sheet),
                "--json",
                str(summary),
                "--clips",
                "2",
                "--frames",
                "4",
            ]
        )
        == 0
    )
    report = json.loads(summary.read_text())
    assert report["samples"] == 3 and report["good"] == 3 and report["skipped"] == {}
    assert report["frames"] == {"min": 10.0, "mean": 10.0, "max": 10.0}
    assert report["sizes"] == {"32x32": 3}
    # Two rows of 4 frames enlarged 2x (2-pixel gaps between frames), each under its caption.
    width, height = Image.open(sheet).size
    assert width == 4 * 64 + 3 * 2 and height > 2 * 64
    assert "samples: 3 (3 good)" in capsys.readouterr().out
    assert main(["synth", str(tmp_path / "x"), "frmes=3"]) == 2  # unknown key: clear error


def test_inspect_counts_every_bad_sample_kind(tmp_path):
    good = encode_video(np.full((4, 16, 16, 3), 90, np.uint8), 4.0)
    meta = {"fps": 4.0, "frames": 4, "height": 16, "width": 16}
    with wds.TarWriter(str(tmp_path / "a-000000.tar"), encoder=False) as w:
        w.write(sample_to_tar_entries("ok", good, "fine", meta))
        w.write(sample_to_tar_entries("nocap", good, "  ", meta))
        w.write(sample_to_tar_entries("empty", b"", "x", meta))
        w.write(sample_to_tar_entries("junk", b"\x00junk" * 40, "x", meta))
        w.write({"__key__": "novideo", "txt": b"x"})
    with wds.TarWriter(str(tmp_path / "a-000001.tar"), encoder=False) as w:
        for i in range(3):
            w.write(sample_to_tar_entries(f"t{i}", good, "y", meta))
    data = (tmp_path / "a-000001.tar").read_bytes()
    (tmp_path / "a-000001.tar").write_bytes(data[: len(data) // 2])  # truncated mid-sample
    with wds.TarWriter(str(tmp_path / "a-000002.tar"), encoder=False) as w:
        w.write(sample_to_tar_entries("u0", good, "z", meta))
    data = (tmp_path / "a-000002.tar").read_bytes().rstrip(b"\0")
    cut = -(-len(data) // 512) * 512  # ends right after a member: no end-of-archive blocks
    (tmp_path / "a-000002.tar").write_bytes(data + b"\0" * (cut - len(data)))
    summary = tmp_path / "s.json"
    assert (
        main(
            [
                "data",
                "inspect",
                str(tmp_path / "a-{000000..000002}.tar"),
                "--contact",
                str(tmp_path / "c.png"),
                "--json",
                str(summary),
            ]
        )
        == 0
    )
    report = json.loads(summary.read_text())
    assert report["skipped"] == {
        "no_caption": 1, "empty_video": 1, "undecodable": 1, "no_video": 1, "truncated_tar": 2,
    }  # fmt: skip
    assert report["good"] == 2  # "ok" and the first sample before the truncation


def test_shards_command(tmp_path, capsys):
    videos = tmp_path / "v"
    videos.mkdir()
    for i in range(3):
        (videos / f"{i}.mp4").write_bytes(
            encode_video(np.full((3, 16, 16, 3), 40 * i, np.uint8), 3.0)
        )
    (tmp_path / "c.csv").write_text("video,caption\n0.mp4,zero\n1.mp4,one\n2.mp4,two\n")
    assert (
        main(
            [
                "shards",
                str(videos),
                str(tmp_path / "c.csv"),
                str(tmp_path / "out"),
                "--samples-per-shard",
                "2",
            ]
        )
        == 0
    )
    assert "3 samples in 2 shards" in capsys.readouterr().out
    assert (
        main(["shards", str(tmp_path / "nope"), str(tmp_path / "c.csv"), str(tmp_path / "o2")]) == 2
    )
