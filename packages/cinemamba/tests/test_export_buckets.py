"""Latent export with buckets (issue 15): each video of a mixed-size folder is cut to its
bucket's size, so whole-video latents come out at exactly the latent sizes training buckets
take; a video no bucket takes is a counted skip; the buckets are part of the export's settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from cinemamba.data.bucket_index import npy_shape
from cinemamba.data.buckets import BucketConfig
from cinemamba.data.shards import sample_to_tar_entries
from cinemamba.data.video import encode_video
from cinemamba.latents import ClipConfig, ExportConfig, export_latents
from cinemamba.latents.stream import read_tar
from cinemamba_conditioning import TextEncoderConfig
from cinemamba_vae import VideoAutoencoder, vae_preset

# raw (height, width, frames) -> the latent (t, h, w) expected from the tiny VAE (4x in space
# and time) after cutting to the nearest-aspect bucket of BUCKETS (center fit):
#   40x40 (1:1) -> 32x32; 36x60 (w/h 1.67, nearest 1.5) -> 32x48; 64x40 (0.625, nearest
#   0.667) -> 48x32. Whole videos: 17 frames -> 5 latent frames, 13 -> 4. "short" has 5
#   frames, fewer than every bucket's 9: no bucket.
VIDEOS = {"sq": (40, 40, 17), "wide": (36, 60, 13), "tall": (64, 40, 17), "short": (40, 40, 5)}
WANT = {"sq": (5, 8, 8), "wide": (4, 8, 12), "tall": (5, 12, 8)}
BUCKETS = [[32, 32, 9], [32, 48, 9], [48, 32, 9]]


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export_buckets")
    (root / "raw").mkdir()
    rng = np.random.default_rng(0)
    keys = list(VIDEOS)
    with wds.TarWriter(str(root / "raw" / "mix-000000.tar")) as tw:
        for key in keys:
            h, w, n = VIDEOS[key]
            frames = rng.integers(0, 255, (n, h, w, 3), dtype=np.uint8)
            tw.write(sample_to_tar_entries(key, encode_video(frames, 12.0), f"clip {key}", {}))
    plan = {"shards": [{"name": "mix-000000.tar", "samples": len(keys), "keys": keys}]}
    (root / "raw" / "mix.plan.json").write_text(json.dumps(plan))
    torch.manual_seed(0)
    vae = VideoAutoencoder(vae_preset("tiny"))
    vae.set_latent_stats(torch.zeros(8), torch.ones(8))
    vae.save_pretrained(root / "vae")
    return root


def _config(root: Path, out: str, buckets: list[list[int]]) -> ExportConfig:
    return ExportConfig(
        input=str(root / "raw"), output=str(root / out), vae=str(root / "vae"),
        text_encoder=TextEncoderConfig(random_init_seed=0), progress=False,
        clip=ClipConfig(start="whole"), buckets=BucketConfig(buckets=buckets),
    )  # fmt: skip


def test_mixed_sizes_export_at_their_buckets_latent_sizes(raw: Path) -> None:
    report = export_latents(_config(raw, "lat", BUCKETS))
    assert report.manifest is not None
    assert report.samples == 3 and report.skipped == {"no_bucket": 1}
    # independent read of the shard: the .npy headers of the stored latents
    shapes = {s["__key__"]: npy_shape(bytes(s["latent.npy"]))
              for p in sorted((raw / "lat").glob("*.tar")) for s in read_tar(str(p))}  # fmt: skip
    assert {k: v[1:] for k, v in shapes.items()} == WANT
    header = json.loads(report.manifest.read_text())
    assert header["clip"]["buckets"]["buckets"] == BUCKETS


def test_other_buckets_into_the_same_export_are_refused(raw: Path) -> None:
    export_latents(_config(raw, "lat2", BUCKETS))
    with pytest.raises(ValueError, match="buckets"):
        export_latents(_config(raw, "lat2", BUCKETS[:2]))


def test_generated_buckets_export_at_the_sizes_training_rounds_to(raw: Path) -> None:
    """Generated buckets (aspects/area) are rounded to the token grid, VAE compression x the
    backbone's patch (4 x 2 = 8 pixels here), at export as in training, and a token budget
    counts patch-2 tokens."""
    # by hand, step 8: aspect 1 -> 32x32; aspect 2 -> sqrt(1024 / 2) = 22.6 -> 24 high,
    # sqrt(1024 * 2) = 45.3 -> 48 wide (a 4-pixel grid would give 24x44: latent 6x11, which no
    # training bucket takes). "wide" (w/h 1.67) is nearer 2 than 1, "tall" (0.625) nearer 1.
    # Whole videos: 17 -> 5 latent frames, 13 -> 4. Tokens at patch 2: 24x48x9 -> 3 x 3 x 6 =
    # 54, 32x32x9 -> 48 (216 and 192 at patch 1).
    cfg = _config(raw, "lat_gen", [])
    cfg.buckets = BucketConfig(aspects=[1.0, 2.0], area=1024, frames=[9], tokens=64)
    cfg.patch_size = 2
    report = export_latents(cfg)
    assert report.samples == 3 and report.skipped == {"no_bucket": 1}  # "short"
    shapes = {s["__key__"]: npy_shape(bytes(s["latent.npy"]))[1:]
              for p in sorted((raw / "lat_gen").glob("*.tar")) for s in read_tar(str(p))}  # fmt: skip
    assert shapes == {"sq": (5, 8, 8), "wide": (4, 6, 12), "tall": (5, 8, 8)}
    assert json.loads(report.manifest.read_text())["clip"]["patch_size"] == 2
