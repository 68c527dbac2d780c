"""Drift over time: segments, flicker (closed forms), the per-segment FVD table on constructed
videos whose FVD is known in closed form, the PNG, and `cinemamba eval fvd.drift=true`."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from cinemamba.cli import main
from cinemamba.data.video import write_video
from cinemamba.eval.drift import drift_markdown, drift_table, flicker, plot_drift, segments


def test_segments_are_successive_and_drop_the_tail() -> None:
    v = np.arange(40, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    segs = segments(v, 16)
    assert [s[:, 0, 0, 0].tolist() for s in segs] == [list(range(16)), list(range(16, 32))]
    assert segments(v[:15], 16) == []
    with pytest.raises(ValueError, match="seg_frames"):
        segments(v, 1)


def test_flicker_closed_forms() -> None:
    still = np.full((8, 4, 4, 3), 77, np.uint8)
    assert flicker(still) == 0.0
    alternating = np.zeros((9, 4, 4, 3), np.uint8)
    alternating[1::2] = 255  # black / white every frame: the maximum
    assert flicker(alternating) == 1.0
    ramp = (np.arange(10, dtype=np.uint8) * 3)[:, None, None, None] * np.ones(
        (1, 4, 4, 3), np.uint8
    )
    assert flicker(ramp) == pytest.approx(3 / 255)
    half = alternating.copy()
    half[:, :, 2:] = 0  # only half of the pixels swing: MAD 1/2
    assert flicker(half) == pytest.approx(0.5)


class MeanFeatures:
    """Per-channel mean and temporal std (population) of a clip: features with closed forms."""

    identity = "mean-features"

    def __call__(self, videos: np.ndarray) -> np.ndarray:
        x = videos.astype(np.float64)
        return np.concatenate(
            [x.mean(axis=(1, 2, 3)), x.std(axis=1).mean(axis=(1, 2, 3))[:, None]], 1
        )


def _gen_video(base: int, n_seg: int) -> np.ndarray:
    """Segment k: frames alternating base + 10k -/+ 2k (mean base + 10k, temporal std 2k)."""
    frames = []
    for k in range(n_seg):
        for t in range(16):
            frames.append(base + 10 * k + (2 * k if t % 2 else -2 * k))
    return np.array(frames, np.uint8)[:, None, None, None] * np.ones((1, 3, 3, 3), np.uint8)


def test_drift_table_matches_closed_form() -> None:
    """Real: still 16-frame videos of values r_j; generated segment k: the same values shifted by
    10k with a +-2k flicker. Equal covariances, so FVD_k = |mean shift|^2 = 3 (10k)^2 + (2k)^2
    (three channel means, one temporal std), and flicker_k = 4k / 255."""
    values = [60, 64, 71, 80, 90, 97]
    real = [np.full((16, 3, 3, 3), v, np.uint8) for v in values]
    gen = [_gen_video(v, 4) for v in values]
    table = drift_table(MeanFeatures(), real, gen, 16)
    assert table["real"] == {"videos": 6, "segments": 6, "flicker": 0.0}
    assert [r["start"] for r in table["rows"]] == [0, 16, 32, 48]
    for k, row in enumerate(table["rows"]):
        assert row["videos"] == 6
        # Rank-deficient covariances: round-off eigenvalues ~eps*|S| (|S| ~ 1e3) enter through a
        # square root, so the error is ~d * sqrt(1e-13): a 1e-4 absolute tolerance.
        assert row["fvd"] == pytest.approx(300 * k**2 + 4 * k**2, abs=1e-4)
        assert row["flicker"] == pytest.approx(4 * k / 255)
    md = drift_markdown(table)
    assert "| real (pooled) |" in md and "| 3 | 48–64 | 6 |" in md


def test_drift_plot_is_a_png(tmp_path) -> None:
    values = [60, 70, 80]
    table = drift_table(MeanFeatures(), [np.full((32, 3, 3, 3), v, np.uint8) for v in values],
                        [_gen_video(v, 3) for v in values])  # fmt: skip
    path = plot_drift(table, tmp_path / "drift.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["drift.png"]


def _write_real(folder, videos: list[np.ndarray]) -> None:
    """A one-shard raw set: KEY.mp4 + KEY.txt per video, as WebDataset lays samples out."""
    folder.mkdir()
    with tarfile.open(folder / "real-000000.tar", "w") as tar:
        for i, frames in enumerate(videos):
            path = folder / f"v{i}.mp4"
            write_video(path, frames, fps=8.0)
            for name, data in ((f"v{i}.mp4", path.read_bytes()), (f"v{i}.txt", b"a clip")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            path.unlink()


def test_eval_cli_writes_drift_table_and_plot(tmp_path, monkeypatch) -> None:
    """`cinemamba eval fvd.drift=true`: the table in eval.json / eval.md and drift.png."""
    monkeypatch.setattr("cinemamba.eval.run.load_features", lambda spec, device: MeanFeatures())
    real_dir, gen_dir = tmp_path / "real", tmp_path / "gen"
    gen_dir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        write_video(
            gen_dir / f"g{i}.mp4", np.repeat(_gen_video(60 + 10 * i, 3), 8, 1).repeat(8, 2), fps=8.0
        )
    _write_real(
        real_dir, [rng.integers(40, 200, (32, 24, 24, 3), dtype=np.uint8) for _ in range(3)]
    )
    out = tmp_path / "r"
    args = ["eval", "--shards", str(real_dir), "--generated", str(gen_dir), "--out", str(out)]
    args += ["groundtruth=false", "fvd.protocols=[fvd16]", "fvd.drift=true", "fvd.cache=''"]
    assert main(args) == 0
    report = json.loads((out / "eval.json").read_text())
    assert [r["segment"] for r in report["drift"]["rows"]] == [0, 1, 2]
    assert report["drift"]["real"]["segments"] == 6
    assert "## Drift over time" in (out / "eval.md").read_text()
    assert (out / "drift.png").read_bytes()[:4] == b"\x89PNG"
