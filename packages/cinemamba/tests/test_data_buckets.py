"""Buckets: nearest-aspect assignment, token budget, one bucket per batch, seeded probabilities,
exact resume, and the warning when `crop: none` squashes a video (issue 15)."""

import logging
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from cinemamba.data import bucket_batches as bb
from cinemamba.data.bucket_batches import (
    BucketSchedule,
    bucket_probabilities,
    bucketed_micro_batches,
)
from cinemamba.data.bucket_index import BucketIndex
from cinemamba.data.buckets import Bucket, BucketConfig, assign_bucket, build_buckets
from cinemamba.data.loader import LoaderConfig, VideoLoader
from cinemamba.data.shards import sample_to_tar_entries
from cinemamba.data.video import encode_video
from cinemamba.latents import clips as clips_mod
from cinemamba.latents.clips import ClipConfig, decode_clip
from cinemamba.latents.stream import ShardList


def vae_shape(frames: int, height: int, width: int) -> tuple[int, int, int]:
    """A 4x8x8 VAE's latent shape (what `VideoAutoencoder.latent_shape` computes)."""
    if (frames - 1) % 4 or height % 8 or width % 8:
        raise ValueError(f"{frames}x{height}x{width} is not 1+4k frames of multiples of 8")
    return 1 + (frames - 1) // 4, height // 8, width // 8


def _b(height: int, width: int, frames: int) -> Bucket:
    return Bucket(height, width, frames, batch_size=1, tokens=1)


# ------------------------------------------------------------------------ assignment


def test_assignment_is_the_hand_computed_nearest_aspect_then_longest_clip():
    buckets = [_b(16, 16, 5), _b(16, 16, 9), _b(16, 24, 5), _b(24, 16, 5), _b(16, 32, 5)]
    # square, 20 frames: aspect distance 0 to both squares; the longest clip that fits is 9
    assert assign_bucket(buckets, 64, 64, 20) == 1
    assert assign_bucket(buckets, 64, 64, 6) == 0  # 9 frames do not fit: the 5-frame square
    # 16:9 (720x1280): |ln(1.778/2)| = 0.118 to 16x32, |ln(1.778/1.5)| = 0.170 to 16x24
    assert assign_bucket(buckets, 720, 1280, 40) == 4
    # 210 wide x 160 high (1.3125): |ln(1.5/1.3125)| = 0.134 to 16x24, 0.272 to square
    assert assign_bucket(buckets, 160, 210, 40) == 2
    # portrait 1280 high x 720 wide (0.5625): |ln(0.667/0.5625)| = 0.170 to 24x16, 0.575 square
    assert assign_bucket(buckets, 1280, 720, 40) == 3
    # 4:3 (1.333): 0.118 to 16x24 (1.5) beats 0.288 to 1.0 and 0.405 to 2.0
    assert assign_bucket(buckets, 480, 640, 40) == 2
    assert assign_bucket(buckets, 64, 64, 4) is None  # shorter than every bucket's clip


def test_equal_aspect_prefers_the_nearest_area():
    buckets = [_b(16, 16, 5), _b(64, 64, 5)]
    assert assign_bucket(buckets, 20, 20, 9) == 0  # |ln(256/400)| = 0.45 < |ln(4096/400)| = 2.3
    assert assign_bucket(buckets, 60, 60, 9) == 1
    # the clip length comes before the area: a long 64x64 video takes the 9-frame 16x16 clip
    longer = [_b(16, 16, 9), _b(64, 64, 5)]
    assert assign_bucket(longer, 64, 64, 20) == 0
    assert assign_bucket(longer, 64, 64, 8) == 1


def test_generated_buckets_round_to_the_token_grid():
    cfg = BucketConfig(aspects=[1.0, 16 / 9, 9 / 16], area=256 * 256, frames=[17], tokens=8192)
    out = build_buckets(cfg, vae_shape, patch=2)  # one token = 16 pixels a side
    # 16/9: h = sqrt(65536 / 1.778) = 192.0 -> 192; w = sqrt(65536 * 1.778) = 341.3 -> 21 * 16
    assert [b.shape for b in out] == [(256, 256, 17), (192, 336, 17), (336, 192, 17)]


# ------------------------------------------------------------------------ token budget


def test_batch_sizes_hold_the_token_budget():
    specs = [[16, 16, 5], [16, 16, 9], [16, 24, 5], [16, 32, 5], [16, 24, 9], [40, 16, 5]]
    cfg = BucketConfig(buckets=specs, tokens=48)
    out = build_buckets(cfg, vae_shape)
    # tokens per sample by hand: 2*2*2, 3*2*2, 2*2*3, 2*2*4, 3*2*3, 2*5*2
    assert [b.tokens for b in out] == [8, 12, 12, 16, 18, 20]
    assert [b.batch_size for b in out] == [6, 4, 4, 3, 2, 2]  # 48/18 = 2.7 and 48/20 = 2.4
    for b in out:  # the stated tolerance: within one sample of the budget, never over it
        assert cfg.tokens - b.tokens < b.batch_size * b.tokens <= cfg.tokens
    with pytest.raises(ValueError, match="over buckets.tokens=10"):
        build_buckets(BucketConfig(buckets=[[16, 16, 9]], tokens=10), vae_shape)
    with pytest.raises(ValueError, match="1\\+4k frames"):
        build_buckets(BucketConfig(buckets=[[16, 16, 6]], tokens=48), vae_shape)
    with pytest.raises(ValueError, match="patch_size=2"):
        build_buckets(BucketConfig(buckets=[[24, 16, 5]], tokens=48), vae_shape, patch=2)
    with pytest.raises(ValueError, match="sampling must be one of"):
        build_buckets(BucketConfig(buckets=[[16, 16, 5]], tokens=48, sampling="x"), vae_shape)
    with pytest.raises(ValueError, match="not both"):
        build_buckets(BucketConfig(buckets=[[16, 16, 5]], aspects=[1.0], tokens=48), vae_shape)
    explicit = build_buckets(BucketConfig(buckets=[[16, 16, 5, 3]]), vae_shape)
    assert explicit[0].batch_size == 3  # a 4th entry is the batch size itself


# ------------------------------------------------------------------------ a mixed shard set

# (height, width, frames) of each video class and the bucket it must land in (by hand above)
KINDS = {"sq": (16, 16, 12), "wide": (16, 24, 8), "tall": (24, 16, 8), "cine": (18, 32, 8)}
BUCKETS = [[16, 16, 5], [16, 16, 9], [16, 24, 5], [24, 16, 5], [16, 32, 5]]
EXPECTED = {"sq": (16, 16, 9), "wide": (16, 24, 5), "tall": (24, 16, 5), "cine": (16, 32, 5)}


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory) -> Path:
    """3 shards of 4 video kinds (square, 3:2, 2:3, 16:9), 6 of each (more than any batch),
    plus one video too short for any bucket."""
    out = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    n = 0
    for shard in range(3):
        with wds.TarWriter(str(out / f"mix-{shard:06d}.tar")) as tw:
            for kind, (h, w, t) in KINDS.items():
                for _ in range(2):
                    frames = rng.integers(0, 255, (t, h, w, 3), dtype=np.uint8)
                    key = f"{kind}{n:03d}"
                    tw.write(sample_to_tar_entries(key, encode_video(frames, 12.0), key, {}))
                    n += 1
            if shard == 1:
                short = encode_video(np.zeros((3, 16, 16, 3), np.uint8), 12.0)
                tw.write(sample_to_tar_entries("short", short, "short", {}))
    return out


def _loader(path: Path, **kw) -> VideoLoader:
    buckets = BucketConfig(buckets=BUCKETS, tokens=48, **kw)
    cfg = LoaderConfig(str(path), ClipConfig(start="first"), seed=3, buckets=buckets, uint8=True)
    return VideoLoader(cfg, latent_shape=vae_shape)


def _kind(key: str) -> str:
    return key.rstrip("0123456789")


def test_every_batch_is_one_bucket_of_the_budget(mixed_dir):
    loader = _loader(mixed_dir)
    assert loader.skipped == Counter({"too_short": 1})  # counted when the index is built
    budget = 48
    seen = set()
    for _, batch in zip(range(40), loader.batches(), strict=False):
        h, w, t = batch["bucket"]
        assert {EXPECTED[_kind(k)] for k in batch["key"]} == {(h, w, t)}
        assert batch["video"].shape[1:] == (t, h, w, 3)
        lt, lh, lw = vae_shape(t, h, w)
        tokens = len(batch["key"]) * lt * lh * lw
        assert budget - lt * lh * lw < tokens <= budget
        seen.add((h, w, t))
    assert seen == set(EXPECTED.values())  # the squares' 5-frame bucket holds nothing


def test_resume_mid_stream_equals_the_uninterrupted_run(mixed_dir):
    run = [b for _, b in zip(range(12), _loader(mixed_dir, fit="random").batches(), strict=False)]
    resumed = _loader(mixed_dir, fit="random").batches(start_batch=7)
    for want in run[7:]:
        got = next(resumed)
        assert got["key"] == want["key"] and got["bucket"] == want["bucket"]
        assert torch.equal(got["video"], want["video"])  # the same decode: bit for bit
    assert len({tuple(b["key"]) for b in run}) > 6  # not one batch over and over
    workers = _loader(mixed_dir, fit="random")
    workers.cfg.workers = 2  # DataLoader processes: batches 7, 9, ... and 8, 10, ...
    for want, got in zip(run[7:], workers.batches(start_batch=7), strict=False):
        assert got["key"] == want["key"] and torch.equal(got["video"], want["video"])


def test_worker_interleaving_and_resume_match_one_pass():
    """The per-bucket position of each batch is counted over the schedule: two workers (every=2)
    and a start in a later schedule block give the batches of one uninterrupted pass."""
    counts = [(5, 3, 4), (2, 0, 7)]  # per shard, samples of bucket 0, 1, 2
    of = [[k for k, n in enumerate(shard) for _ in range(n)] for shard in counts]
    shards = ShardList(("a.tar", "b.tar"), tuple(len(s) for s in of))
    index = BucketIndex(shards, [Bucket(1, 1, 1, bs, 1) for bs in (2, 3, 1)], of)
    reads = {"a.tar": of[0], "b.tar": of[1]}

    def read(url):  # samples named by (shard, offset); no tar needed
        return ({"__key__": f"{url}:{i}"} for i in range(len(reads[url])))

    def batches(start, every=1, phase=0):
        return bucketed_micro_batches(
            index, np.array([0.5, 0.2, 0.3]), lambda s, p, k: {"k": s["__key__"], "b": k},
            lambda items, b, k: (b, k, [it["k"] for it in items]), seed=1, rank=0,
            start_batch=start, every=every, phase=phase,
        )  # fmt: skip

    orig = bb.read_tar
    bb.read_tar = read
    try:
        ref = [b for _, (b, _) in zip(range(bb.BLOCK + 20), batches(0), strict=False)]
        for _, k, keys in ref:  # every key is of the batch's bucket
            assert all(of["ab".index(key[0])][int(key.split(":")[1])] == k for key in keys)
        w0, w1 = batches(3, 2, 0), batches(3, 2, 1)
        for i in range(3, 40):
            assert next(w0 if (i - 3) % 2 == 0 else w1)[0] == ref[i]
        late = batches(bb.BLOCK + 5)  # resumed in the second schedule block
        assert [next(late)[0] for _ in range(10)] == ref[bb.BLOCK + 5 : bb.BLOCK + 15]
    finally:
        bb.read_tar = orig


# ------------------------------------------------------------------------ probabilities


def _binomial_ok(counts: np.ndarray, probs: np.ndarray, n: int) -> bool:
    """Each count within 5 binomial standard deviations of n p (false alarm < 1e-5 each)."""
    sd = np.sqrt(n * probs * (1 - probs))
    return bool(np.all(np.abs(counts - n * probs) <= 5 * sd + 1e-9))


@pytest.mark.parametrize("sampling", ["data", "uniform", "weights"])
def test_bucket_draws_follow_the_configured_probabilities(sampling):
    buckets = [Bucket(16, 16, 5, 6, 8), Bucket(16, 24, 5, 4, 12), Bucket(24, 16, 5, 4, 12)]
    sizes = [30, 10, 0]  # the third bucket has no samples: never drawn
    cfg = BucketConfig(sampling=sampling, weights=[1.0, 3.0, 5.0])
    probs = bucket_probabilities(cfg, buckets, sizes)
    want = {  # by hand: data ~ samples / batch size (30/6 = 5 vs 10/4 = 2.5)
        "data": [2 / 3, 1 / 3, 0.0],
        "uniform": [0.5, 0.5, 0.0],
        "weights": [0.25, 0.75, 0.0],
    }[sampling]
    np.testing.assert_allclose(probs, want, rtol=1e-12)
    n = 2 * bb.BLOCK + 100
    schedule = BucketSchedule(probs, seed=4, rank=0)
    draws = np.array([schedule.bucket(b) for b in range(n)])
    assert _binomial_ok(np.bincount(draws, minlength=3), np.array(want), n)
    again = BucketSchedule(probs, seed=4, rank=0)
    assert all(again.bucket(b) == draws[b] for b in range(0, n, 97))  # seeded
    other = BucketSchedule(probs, seed=5, rank=0)
    assert any(other.bucket(b) != draws[b] for b in range(50))
    np.testing.assert_array_equal(schedule.before(n), np.bincount(draws, minlength=3))
    assert not np.array_equal(draws[: bb.BLOCK], draws[bb.BLOCK : 2 * bb.BLOCK])  # blocks differ


# ------------------------------------------------------------------------ squash warning


def _sample(h: int, w: int, key: str) -> dict:
    video = encode_video(np.zeros((3, h, w, 3), np.uint8), 12.0)
    return {"__key__": key, **sample_to_tar_entries(key, video, "a caption", {})}


def test_crop_none_warns_once_and_counts_every_squashed_video(caplog, monkeypatch):
    monkeypatch.setattr(clips_mod, "_squash_logged", False)
    rng = np.random.default_rng(0)
    square = ClipConfig(frames=3, height=16, width=16, crop="none", start="first")
    caplog.set_level(logging.WARNING, logger="cinemamba.latents.clips")
    # 16 x 24 -> 16 x 16: the aspect ratio changes by 24/16 - 1 = 50 %
    _, _, meta = decode_clip(_sample(16, 24, "wide"), square, rng)
    assert meta["warnings"] == ["aspect_squashed"]
    _, _, meta = decode_clip(_sample(24, 16, "tall"), square, rng)
    assert meta["warnings"] == ["aspect_squashed"]
    assert [r.getMessage() for r in caplog.records if "squashes" in r.getMessage()] == [
        "sample 'wide': crop 'none' squashes 16x24 video to 16x16 (aspect ratio changed by 50%);"
        " further squashed samples are only counted ('aspect_squashed'). Set crop to 'center' "
        "or 'random', or use buckets (docs/data.md)"
    ]
    # 32 x 32 -> 16 x 16 keeps the ratio; 32 x 34 changes it by 6.25 % (> 5 %), 32 x 33 by 3 %
    assert "warnings" not in decode_clip(_sample(32, 32, "same"), square, rng)[2]
    assert "warnings" not in decode_clip(_sample(32, 32, "same"), square, rng)[2]
    assert clips_mod.squash_change(square, 32, 33) == pytest.approx(33 / 32 - 1)
    assert clips_mod.squash_change(square, 32, 34) > clips_mod.SQUASH_TOLERANCE
    assert clips_mod.squash_change(square, 32, 33) < clips_mod.SQUASH_TOLERANCE
    center = ClipConfig(frames=3, height=16, width=16, crop="center", start="first")
    assert "warnings" not in decode_clip(_sample(16, 24, "cropped"), center, rng)[2]
    assert math.isclose(clips_mod.squash_change(center, 16, 24), 0.0)
