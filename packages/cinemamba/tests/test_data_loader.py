"""The video loader: shards -> batches, splitting, determinism, resume, crops, bad samples."""

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from cinemamba.data.loader import LoaderConfig, VideoLoader, expand_urls, resolve_shards
from cinemamba.data.shards import sample_to_tar_entries
from cinemamba.data.synth import SceneConfig
from cinemamba.data.synth_video import write_synth
from cinemamba.data.video import decode_video, encode_video
from cinemamba.latents.clips import ClipConfig


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    cfg = SceneConfig(frames=12, height=32, width=32, fps=12.0)
    write_synth(out, "train", 16, cfg, seed=3, samples_per_shard=4)
    return out


def _keys(batches) -> list[str]:
    return [k for b in batches for k in b["key"]]


def test_finite_pass_round_trip_matches_direct_decode(synth_dir):
    clip = ClipConfig(frames=5, stride=2, start="first")
    loader = VideoLoader(LoaderConfig(str(synth_dir), clip, batch_size=3, resampled=False))
    batches = list(loader)
    assert len(_keys(batches)) == 16 and len(set(_keys(batches))) == 16
    assert [len(b["key"]) for b in batches] == [3, 3, 3, 3, 3, 1]  # last batch is short
    first = batches[0]
    assert first["video"].shape == (3, 3, 5, 32, 32)
    assert first["video"].dtype == torch.float32
    assert first["video"].min() >= -1 and first["video"].max() <= 1
    # The same sample decoded directly: frames 0, 2, ..., 8 as uint8 -> [-1, 1].
    with tarfile.open(synth_dir / "train-000000.tar") as tar:
        mp4 = tar.extractfile(f"{first['key'][0]}.mp4").read()
    ref = torch.from_numpy(decode_video(mp4, 0, 5, 2)).float() / 127.5 - 1
    assert torch.equal(first["video"][0], ref.permute(3, 0, 1, 2))
    assert first["caption"][0] and first["meta"][0]["source"]["frames"] == 12
    assert loader.skipped == Counter()


def test_two_ranks_two_workers_read_every_sample_once(synth_dir):
    clip = ClipConfig(frames=3, start="first")
    seen: list[str] = []
    for rank in range(2):
        cfg = LoaderConfig(str(synth_dir), clip, batch_size=2, resampled=False, workers=2)
        seen += _keys(VideoLoader(cfg, rank=rank, world_size=2))
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 16


def test_finite_shuffle_buffer_permutes_but_keeps_the_set(synth_dir):
    clip = ClipConfig(frames=3, start="first")
    plain = _keys(VideoLoader(LoaderConfig(str(synth_dir), clip, 4, resampled=False)))
    cfg = LoaderConfig(str(synth_dir), clip, 4, resampled=False, shuffle=6, seed=1)
    shuffled = _keys(VideoLoader(cfg))
    assert shuffled != plain and sorted(shuffled) == sorted(plain)
    assert _keys(VideoLoader(cfg)) == shuffled  # deterministic for a seed


@pytest.mark.parametrize("shuffle", [0, 5])
def test_resampled_stream_resumes_exactly_and_depends_on_seed_and_rank(synth_dir, shuffle):
    clip = ClipConfig(frames=4, height=16, width=16, crop="random")
    cfg = LoaderConfig(str(synth_dir), clip, batch_size=3, shuffle=shuffle, seed=7)
    run = VideoLoader(cfg).batches()
    straight = [next(run) for _ in range(6)]
    resumed = VideoLoader(cfg).batches(start_batch=4)
    for want in straight[4:]:
        got = next(resumed)
        assert got["key"] == want["key"] and torch.equal(got["video"], want["video"])
    other_rank = VideoLoader(cfg, rank=1, world_size=2).batches()
    assert [next(other_rank)["key"] for _ in range(3)] != [b["key"] for b in straight[:3]]
    cfg2 = LoaderConfig(str(synth_dir), clip, batch_size=3, shuffle=shuffle, seed=8)
    reseeded = VideoLoader(cfg2).batches()
    assert [next(reseeded)["key"] for _ in range(3)] != [b["key"] for b in straight[:3]]


def test_resampled_workers_give_the_same_batches(synth_dir):
    clip = ClipConfig(frames=3, start="first")
    one = VideoLoader(LoaderConfig(str(synth_dir), clip, batch_size=2, seed=2)).batches()
    two = VideoLoader(LoaderConfig(str(synth_dir), clip, batch_size=2, seed=2, workers=2))
    two_it = two.batches()
    for _ in range(5):
        assert next(one)["key"] == next(two_it)["key"]


def _wide_video_shard(path: Path, fps: float = 24.0) -> np.ndarray:
    """One 48x64 video whose pixel values encode their column (for crop checks)."""
    x = np.linspace(0, 255, 64).astype(np.uint8)
    frames = np.broadcast_to(x[None, None, :, None], (20, 48, 64, 3)).copy()
    frames[:, :, :, 1] = np.arange(20, dtype=np.uint8)[:, None, None] * 10
    meta = {"fps": fps, "frames": 20, "height": 48, "width": 64}
    with wds.TarWriter(str(path)) as tw:
        tw.write(sample_to_tar_entries("wide", encode_video(frames, fps), "wide", meta))
    return frames


def test_center_crop_keeps_aspect_and_target_fps_picks_the_stride(tmp_path):
    _wide_video_shard(tmp_path / "w-000000.tar")
    clip = ClipConfig(frames=4, fps=12.0, height=24, width=24, crop="center", start="first")
    batch = next(iter(VideoLoader(LoaderConfig(str(tmp_path), clip, 1, resampled=False))))
    assert batch["meta"][0]["clip"]["stride"] == 2  # 24 fps source -> 12 fps clip
    video = (batch["video"][0] + 1) * 127.5  # (3, T, H, W)
    # 48x64 -> 24x32 (short side fits), centre crop keeps columns 4..27 of 32: the red ramp
    # (column brightness) therefore spans the middle of the range, not 0..255.
    red = video[0, 0].mean(0)
    assert 30 < red[0] < 60 and 195 < red[-1] < 225
    green = video[1, :, 12, 12]  # frame index * 10, frames 0, 2, 4, 6
    assert torch.allclose(green, torch.tensor([0.0, 20, 40, 60]), atol=6)
    squash = ClipConfig(frames=4, height=24, width=24, crop="none", start="first")
    full = next(iter(VideoLoader(LoaderConfig(str(tmp_path), squash, 1, resampled=False))))
    assert ((full["video"][0, 0, 0].mean(0) + 1) * 127.5)[0] < 15  # no crop: full ramp


def _write_bad_set(out: Path) -> None:
    good = encode_video(np.full((10, 16, 16, 3), 128, np.uint8), 12.0)
    with wds.TarWriter(str(out / "bad-000000.tar")) as tw:
        tw.write(sample_to_tar_entries("ok1", good, "fine", {}))
        tw.write(sample_to_tar_entries("garbage", b"not a video at all", "x", {}))
        tw.write(sample_to_tar_entries("empty", b"", "x", {}))
        tw.write({"__key__": "nocaption", "mp4": good, "json": b"{}"})
        tw.write({"__key__": "novideo", "txt": b"caption only"})
        short = encode_video(np.zeros((3, 16, 16, 3), np.uint8), 12.0)
        tw.write(sample_to_tar_entries("short", short, "too short", {}))
        tw.write(sample_to_tar_entries("ok2", good, "fine too", {}))
    # A second shard, truncated in the middle of its second sample.
    buf = io.BytesIO()
    with wds.TarWriter(buf) as tw:
        tw.write(sample_to_tar_entries("ok3", good, "fine", {}))
        tw.write(sample_to_tar_entries("lost", good, "cut off", {}))
    data = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        cut = tar.getmember("lost.mp4").offset_data + 100  # inside the member's bytes
    (out / "bad-000001.tar").write_bytes(data[:cut])


def test_bad_samples_are_skipped_and_counted_by_reason(tmp_path, caplog):
    _write_bad_set(tmp_path)
    clip = ClipConfig(frames=6, start="first")
    loader = VideoLoader(LoaderConfig(str(tmp_path), clip, batch_size=2, resampled=False))
    keys = _keys(loader)
    assert sorted(keys) == ["ok1", "ok2", "ok3"]
    assert loader.skipped["undecodable"] == 2  # garbage bytes and the zero-length video
    assert loader.skipped["no_caption"] == 1
    assert loader.skipped["no_video"] == 1
    assert loader.skipped["too_short"] == 1
    assert loader.skipped["unreadable_shard"] == 1
    assert sum("skipping sample" in r.message for r in caplog.records) == 5


def test_brace_patterns_lists_and_pipe_commands(synth_dir, tmp_path):
    pattern = f"{synth_dir}/train-{{000000..000003}}.tar"
    assert expand_urls(pattern) == [str(synth_dir / f"train-00000{i}.tar") for i in range(4)]
    assert resolve_shards(pattern).counts == (4, 4, 4, 4)  # from the plan, without reading
    piped = ",".join(f"pipe:cat {synth_dir}/train-00000{i}.tar" for i in range(2))
    assert resolve_shards(piped).counts == (4, 4)  # counted by reading
    clip = ClipConfig(frames=3, start="first")
    keys = _keys(VideoLoader(LoaderConfig(piped, clip, 4, resampled=False)))
    assert len(keys) == 8
    with pytest.raises(FileNotFoundError, match="nope"):
        expand_urls(str(tmp_path / "nope-{0..1}.tar"))
    plan = json.loads((synth_dir / "train.plan.json").read_text())
    assert [s["samples"] for s in plan["shards"]] == [4, 4, 4, 4]


def test_bad_settings_name_the_field(synth_dir):
    with pytest.raises(ValueError, match="crop"):
        VideoLoader(LoaderConfig(str(synth_dir), ClipConfig(crop="diagonal")))
    with pytest.raises(ValueError, match="batch_size"):
        VideoLoader(LoaderConfig(str(synth_dir), ClipConfig(), batch_size=0))
    loader = VideoLoader(LoaderConfig(str(synth_dir), ClipConfig(frames=3), resampled=False))
    with pytest.raises(ValueError, match="finite pass"):
        next(loader.batches(start_batch=2))


def test_url_prefix_streams_the_planned_shards_from_elsewhere(synth_dir, tmp_path):
    meta = tmp_path / "meta"
    meta.mkdir()
    for plan in synth_dir.glob("*.plan.json"):  # only the plan: the shards stay where they are
        (meta / plan.name).write_text(plan.read_text())
    prefix = f"pipe:cat {synth_dir}/"
    listed = resolve_shards(str(meta), url_prefix=prefix)
    assert listed.urls == tuple(prefix + p.name for p in sorted(synth_dir.glob("*.tar")))
    assert listed.counts == (4, 4, 4, 4)  # from the plan: nothing under meta/ is read
    assert resolve_shards(listed.urls[0]).counts == (4,)  # the URL is readable as it stands
    with pytest.raises(FileNotFoundError, match=r"one \*\.plan\.json"):
        resolve_shards(str(tmp_path / "nothing"), url_prefix=prefix)
