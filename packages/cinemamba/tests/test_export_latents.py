"""Latent export: content against a direct VAE/text-encoder call, resume of an interrupted
export, bad inputs counted, identity refusal, and the deterministic resampled stream."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cinemamba.data.synth import SceneConfig
from cinemamba.data.synth_video import write_synth
from cinemamba.data.video import decode_video
from cinemamba.latents import (
    ClipConfig,
    ExportConfig,
    LatentFormatError,
    export_latents,
    latent_batches,
    open_latent_set,
    vae_identity,
)
from cinemamba.latents import encoders as encoders_mod
from cinemamba.latents.stream import read_tar
from cinemamba_conditioning import TextEncoderConfig, build_text_encoder
from cinemamba_vae import VideoAutoencoder, vae_preset

TEXT = TextEncoderConfig(random_init_seed=0)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Raw synth shards (6 videos of 12 frames at 32x32, 2 per shard), a tiny VAE, one export."""
    root = tmp_path_factory.mktemp("export")
    write_synth(root / "raw", "train", 6, SceneConfig(frames=12, height=32, width=32),
                samples_per_shard=2)  # fmt: skip
    torch.manual_seed(0)
    vae = VideoAutoencoder(vae_preset("tiny"))
    vae.set_latent_stats(torch.linspace(-0.1, 0.1, 8), torch.linspace(0.5, 1.5, 8))
    vae.save_pretrained(root / "vae")
    cfg = _cfg(root, "lat")
    report = export_latents(cfg)
    assert report.manifest is not None and report.samples == 6 and not report.skipped
    return {"root": root, "raw": root / "raw", "vae": root / "vae", "lat": root / "lat",
            "threads": torch.get_num_threads()}  # fmt: skip


def _same_computation_as(made: dict) -> None:
    """Run this test's exports at the reference export's thread count: shard bytes are equal
    only for the same computation (docs/latents.md), and the VAE's convolutions sum in another
    order at another thread count."""
    torch.set_num_threads(made["threads"])  # the autouse fixture restores it after the test


def _manifest(path: Path) -> dict:
    return json.loads((path / "latents.json").read_text())


def _cfg(root: Path, out: str, raw: str = "raw") -> ExportConfig:
    return ExportConfig(
        input=str(root / raw), output=str(root / out), vae=str(root / "vae"),
        text_encoder=TEXT, clip=ClipConfig(frames=9, start="first"), progress=False,
    )  # fmt: skip


def test_exported_sample_equals_direct_encoding(made: dict[str, Path]) -> None:
    """Latent = VAE posterior mean of the first 9 frames (normalised); text = encoder output."""
    vae = VideoAutoencoder.from_pretrained(made["vae"]).eval()
    text = build_text_encoder(TEXT)
    raw = next(read_tar(str(made["raw"] / "train-000001.tar")))
    lat = next(read_tar(str(made["lat"] / "latents-000001.tar")))
    assert lat["__key__"] == raw["__key__"]
    frames = decode_video(raw["mp4"], 0, 9)  # (9, 32, 32, 3) uint8
    video = torch.from_numpy(frames).double().permute(3, 0, 1, 2)[None] / 127.5 - 1
    with torch.no_grad():
        mean, _ = vae.encode_moments(video.float())
    expected = (mean[0] - vae.latent_mean.view(-1, 1, 1, 1)) / vae.latent_std.view(-1, 1, 1, 1)
    got = np.load(io.BytesIO(lat["latent.npy"]))
    assert got.shape == (8, 3, 8, 8)
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=0, atol=1e-5)
    emb = text.encode([raw["txt"].decode()])
    torch.testing.assert_close(
        torch.from_numpy(np.load(io.BytesIO(lat["text.npy"]))), emb.tokens[0]
    )
    assert np.array_equal(np.load(io.BytesIO(lat["text_mask.npy"])), emb.mask[0].numpy())
    meta = json.loads(lat["json"])
    assert meta["source_shard"] == "train-000001.tar" and meta["clip"]["start"] == 0
    manifest = json.loads((made["lat"] / "latents.json").read_text())
    assert manifest["vae"]["identity"] == vae_identity(made["vae"])
    assert manifest["text_encoder"]["identity"] == text.identity
    assert [s["samples"] for s in manifest["shards"]] == [2, 2, 2]
    # latent statistics: the mean/std of all exported values, per channel
    all_lat = np.concatenate(
        [np.load(io.BytesIO(s["latent.npy"]))[None] for i in range(3)
         for s in read_tar(str(made["lat"] / f"latents-{i:06d}.tar"))]
    )  # fmt: skip
    np.testing.assert_allclose(manifest["latent_stats"]["mean"], all_lat.mean(axis=(0, 2, 3, 4)),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(manifest["latent_stats"]["std"], all_lat.std(axis=(0, 2, 3, 4)),
                               rtol=1e-4)  # fmt: skip


def test_interrupted_export_resumes_and_skips_finished_shards(
    made: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash during shard 1 (after one of its samples is encoded) leaves shard 0 complete,
    shard 1 only under .tmp, no manifest; the re-run writes shards 1 and 2 only, and the result
    equals an uninterrupted export (same thread count: the same computation, bit for bit)."""
    root = made["root"]
    _same_computation_as(made)
    real = encoders_mod._Encoders.encode
    calls = []

    def crash_on_fourth(self, video, caption):
        calls.append(caption)
        if len(calls) == 4:  # shard 1's second sample: the process dies mid-shard
            raise KeyboardInterrupt
        return real(self, video, caption)

    monkeypatch.setattr(encoders_mod._Encoders, "encode", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        export_latents(_cfg(root, "resumed"))
    out = root / "resumed"
    assert (out / "latents-000000.tar").exists() and not (out / "latents-000001.tar").exists()
    assert (out / "latents-000001.tar.tmp").exists()
    assert not (out / "latents.json").exists()
    with pytest.raises(LatentFormatError, match="unfinished"):
        open_latent_set(out)
    monkeypatch.setattr(encoders_mod._Encoders, "encode", real)
    report = export_latents(_cfg(root, "resumed"))
    assert report.already_done == 1
    assert [p.name for p in report.written] == ["latents-000001.tar", "latents-000002.tar"]
    assert report.manifest is not None
    for i in range(3):
        name = f"latents-{i:06d}.tar"
        assert (out / name).read_bytes() == (made["lat"] / name).read_bytes(), name
    assert not list(out.glob("*.tmp"))
    # the manifest describes all three shards, not only the two this run wrote
    assert _manifest(out) == _manifest(made["lat"])
    # a third run has nothing to do
    again = export_latents(_cfg(root, "resumed"))
    assert again.written == [] and again.already_done == 3


def test_ranks_split_the_shards_and_the_last_writes_the_manifest(made: dict[str, Path]) -> None:
    """Two processes' shares (rank 0: shards 0, 2; rank 1: shard 1) make the same shard set."""
    root = made["root"]
    _same_computation_as(made)
    first = export_latents(_cfg(root, "split"), rank=1, world_size=2)
    assert [p.name for p in first.written] == ["latents-000001.tar"] and first.manifest is None
    second = export_latents(_cfg(root, "split"), rank=0, world_size=2)
    assert [p.name for p in second.written] == ["latents-000000.tar", "latents-000002.tar"]
    assert second.manifest is not None
    for i in range(3):
        name = f"latents-{i:06d}.tar"
        assert (root / "split" / name).read_bytes() == (made["lat"] / name).read_bytes()
    assert _manifest(root / "split") == _manifest(made["lat"])


def test_bad_inputs_are_counted_not_fatal(made: dict[str, Path]) -> None:
    """A corrupt video and a caption-less sample are skipped and counted in the manifest."""
    root = made["root"]
    bad = root / "raw_bad"
    shutil.copytree(made["raw"], bad)
    shard = bad / "train-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            if m.name.endswith("0000000.mp4"):
                data = b"not a video at all"
            if m.name.endswith("0000001.txt"):
                data = b""
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    report = export_latents(_cfg(root, "lat_bad", raw="raw_bad"))
    assert report.samples == 4
    assert dict(report.skipped) == {"undecodable": 1, "no_caption": 1}
    manifest = json.loads((root / "lat_bad" / "latents.json").read_text())
    assert manifest["skipped"] == {"undecodable": 1, "no_caption": 1}
    assert [s["samples"] for s in manifest["shards"]] == [0, 2, 2]
    # the empty shard is never drawn: every training sample comes from shards 1 and 2
    batches = latent_batches(open_latent_set(root / "lat_bad"), seed=0, rank=0, batch_size=2,
                             start_batch=0)  # fmt: skip
    for _ in range(4):
        batch, skipped = next(batches)
        assert batch["latents"].shape[0] == 2 and not skipped


def test_mismatched_encoders_are_refused(made: dict[str, Path], tmp_path: Path) -> None:
    """Opening latents for another VAE or text encoder fails with both named; the check needs
    neither model built (weights file hash + config)."""
    lset = open_latent_set(made["lat"], vae=vae_identity(made["vae"]), text_encoder=TEXT)
    other_vae = VideoAutoencoder.from_pretrained(made["vae"])
    other_vae.set_latent_stats(torch.zeros(8), torch.ones(8))  # same net, other statistics
    other_vae.save_pretrained(tmp_path / "vae2")
    with pytest.raises(LatentFormatError, match="made by VAE .* but the config names VAE") as err:
        open_latent_set(made["lat"], vae=vae_identity(tmp_path / "vae2"))
    assert lset.vae_identity in str(err.value)
    with pytest.raises(LatentFormatError, match="random_init_seed=1 .latents: 0") as err:
        open_latent_set(made["lat"], text_encoder=TextEncoderConfig(random_init_seed=1))
    assert lset.text_identity in str(err.value)
    other = build_text_encoder(TextEncoderConfig(random_init_seed=1)).identity
    with pytest.raises(LatentFormatError, match="text encoder"):
        open_latent_set(made["lat"], text_encoder=other)
    # exporting into the same directory with another text encoder is refused too
    cfg = _cfg(made["root"], "lat")
    cfg.text_encoder = TextEncoderConfig(random_init_seed=1)
    with pytest.raises(ValueError, match="export to a new directory"):
        export_latents(cfg)


def test_stream_is_a_function_of_batch_index(made: dict[str, Path]) -> None:
    """Batch b is the same read continuously, from a resume at b, or by 2 DataLoader workers."""
    lset = open_latent_set(made["lat"])

    def take(start: int, n: int, rank: int = 0, workers: int = 0) -> list[dict]:
        it = latent_batches(lset, seed=5, rank=rank, batch_size=3, start_batch=start,
                            latent_frames=2, workers=workers)  # fmt: skip
        return [next(it)[0] for _ in range(n)]

    full = take(0, 6)
    for a, b in zip(full[4:], take(4, 2), strict=True):
        for k in a:
            assert torch.equal(a[k], b[k]), k
    for a, b in zip(full, take(0, 6, workers=2), strict=True):
        for k in a:
            assert torch.equal(a[k], b[k]), k
    assert full[0]["latents"].shape == (3, 8, 2, 8, 8)
    other_rank = take(0, 6, rank=1)
    assert not all(
        torch.equal(a["latents"], b["latents"]) for a, b in zip(full, other_rank, strict=True)
    )
    assert len({int(b["noise_seed"]) for b in full}) == 6


def test_cli_on_a_finished_export_skips_everything(made: dict[str, Path], caplog) -> None:
    """`cinemamba export-latents key=value ...` parses overrides and resumes (nothing to do)."""
    from cinemamba.cli import main

    before = {p.name: p.stat().st_mtime_ns for p in made["lat"].iterdir()}
    code = main([
        "export-latents", f"input={made['raw']}", f"output={made['lat']}", f"vae={made['vae']}",
        "text_encoder.random_init_seed=0", "clip.start=first", "clip.frames=9", "progress=false",
    ])  # fmt: skip
    assert code == 0
    after = {p.name: p.stat().st_mtime_ns for p in made["lat"].iterdir()}
    shards = [n for n in before if n.endswith(".tar")]
    assert len(shards) == 3 and all(before[n] == after[n] for n in shards)
    assert main(["export-latents", "input=x", "clip.frame=9"]) == 2  # typo: a clear error


def test_clips_the_vae_cannot_encode(made: dict[str, Path]) -> None:
    """A frame count the VAE cannot take fails up front; a size it cannot take is counted per
    sample, and a set with no usable sample is an error naming the reasons."""
    cfg = _cfg(made["root"], "bad_frames")
    cfg.clip.frames = 10
    with pytest.raises(ValueError, match="clip.frames=10: the VAE encodes 1 \\+ 4\\*k frames"):
        export_latents(cfg)
    cfg = _cfg(made["root"], "bad_size")
    cfg.clip.height = cfg.clip.width = 30  # not divisible by the 4x spatial compression
    with pytest.raises(ValueError, match="no usable samples .*'unencodable': 6"):
        export_latents(cfg)
