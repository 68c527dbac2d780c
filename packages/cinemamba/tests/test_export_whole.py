"""Whole-video latent export (issue 15): every frame of each video, encoded chunk by chunk,
equals a one-shot encode of the whole decoded video; metadata and manifest lengths; and the
training windows cut from those sequences (content, seeding, uniform starts, exact resume)."""

from __future__ import annotations

import io
import itertools
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from cinemamba.data.shards import sample_to_tar_entries, write_shards
from cinemamba.data.video import decode_video, encode_video
from cinemamba.latents import (
    ClipConfig,
    ExportConfig,
    export_latents,
    latent_batches,
    open_latent_set,
)
from cinemamba.latents.dataset import window_start
from cinemamba.latents.stream import read_tar
from cinemamba_conditioning import TextEncoderConfig
from cinemamba_vae import VideoAutoencoder, vae_preset

TEXT = TextEncoderConfig(random_init_seed=0)
# frames per video: 41 = 1 + 4*10 is three 16-frame chunks (16 + 16 + 9); 43 keeps 41 (the
# VAE's 1 + 4k rule); 9 is shorter than one chunk; 70 keeps 69
LENGTHS = {"a41": 41, "b43": 43, "c9": 9, "d70": 70}
FPS = 24.0


def _frames(n: int, seed: int, h: int = 32, w: int = 32) -> np.ndarray:
    """A moving, textured video that survives H.264 (every frame differs)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    return np.stack([np.roll(base, k, axis=1) for k in range(n)])


def _item(key: str) -> dict:
    video = encode_video(_frames(LENGTHS[key], len(key) + LENGTHS[key]), FPS)
    return sample_to_tar_entries(key, video, f"video {key}", {"frames": LENGTHS[key]})


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Raw shards of four videos of different lengths (2 per shard), a tiny VAE with latent
    statistics, and a whole-video export in 16-frame chunks (the default `clip.start`)."""
    root = tmp_path_factory.mktemp("whole")
    keys = [["a41", "b43"], ["c9", "d70"]]
    write_shards(root / "raw", "train", keys, _item, keys=keys)
    torch.manual_seed(0)
    vae = VideoAutoencoder(vae_preset("tiny"))
    vae.set_latent_stats(torch.linspace(-0.1, 0.1, 8), torch.linspace(0.5, 1.5, 8))
    vae.save_pretrained(root / "vae")
    cfg = ExportConfig(input=str(root / "raw"), output=str(root / "lat"), vae=str(root / "vae"),
                       text_encoder=TEXT, chunk_frames=16, progress=False)  # fmt: skip
    report = export_latents(cfg)
    assert report.manifest is not None and report.samples == 4 and not report.skipped
    return {"root": root, "raw": root / "raw", "lat": root / "lat", "vae": root / "vae"}


def _samples(directory: Path, prefix: str) -> dict[str, dict]:
    return {s["__key__"]: s for p in sorted(directory.glob(f"{prefix}-*.tar"))
            for s in read_tar(str(p))}  # fmt: skip


def test_whole_video_equals_one_shot_encode(whole: dict[str, Path]) -> None:
    """Latents of every frame (chunked, streamed) = the VAE's own encode of the whole decoded
    video in one call, within float32 rounding; the text embedding is stored once."""
    vae = VideoAutoencoder.from_pretrained(whole["vae"]).eval()
    raw, lat = _samples(whole["raw"], "train"), _samples(whole["lat"], "latents")
    assert sorted(lat) == sorted(LENGTHS)
    for key, n in LENGTHS.items():
        kept = 1 + 4 * ((n - 1) // 4)
        frames = decode_video(raw[key]["mp4"])  # every frame, one call
        assert len(frames) == n
        video = torch.from_numpy(frames[:kept]).float().permute(3, 0, 1, 2)[None] / 127.5 - 1
        with torch.no_grad():
            expected = vae.encode(video, sample=False)[0]  # no chunking: the full sequence
        got = torch.from_numpy(np.load(io.BytesIO(lat[key]["latent.npy"])))
        assert got.shape == (8, 1 + (kept - 1) // 4, 8, 8)
        tol = 64 * torch.finfo(torch.float32).eps * expected.abs().max()
        assert (got - expected).abs().max() <= tol, key
        meta = json.loads(lat[key]["json"])
        assert meta["latent_frames"] == got.shape[1]
        assert meta["clip"] == {"start": 0, "stride": 1, "frames": kept}
        assert meta["source_frames"] == n and meta["fps"] == pytest.approx(FPS)
        assert np.load(io.BytesIO(lat[key]["text.npy"])).ndim == 2  # (L, D): once per video


def test_manifest_records_latent_lengths(whole: dict[str, Path]) -> None:
    manifest = json.loads((whole["lat"] / "latents.json").read_text())
    t = [1 + (n - 1) // 4 for n in LENGTHS.values()]  # 11, 11, 3, 18
    assert manifest["latent_frames"] == {"min": min(t), "max": max(t), "total": sum(t)}
    assert manifest["clip"]["start"] == "whole"


def test_whole_is_the_default_and_random_starts_are_refused(whole: dict[str, Path]) -> None:
    assert ExportConfig().clip.start == "whole"
    cfg = ExportConfig(input=str(whole["raw"]), output=str(whole["root"] / "x"),
                       vae=str(whole["vae"]), clip=ClipConfig(start="random"))  # fmt: skip
    with pytest.raises(ValueError, match=r"clip start must be one of \('whole', 'first'\)"):
        export_latents(cfg)


def test_stride_and_center_crop_apply_to_every_chunk(whole: dict[str, Path]) -> None:
    """Resizing, cropping and the stride work as for a clip: the same frames a one-call decode
    with the same size selects, cropped to the centre."""
    root = whole["root"]
    clip = ClipConfig(start="whole", stride=2, height=16, width=8, crop="center")
    cfg = ExportConfig(input=str(root / "raw"), output=str(root / "lat_s2"), vae=str(whole["vae"]),
                       text_encoder=TEXT, chunk_frames=5, clip=clip, progress=False)  # fmt: skip
    export_latents(cfg)
    vae = VideoAutoencoder.from_pretrained(whole["vae"]).eval()
    raw, lat = _samples(whole["raw"], "train"), _samples(root / "lat_s2", "latents")
    n = LENGTHS["d70"]
    selected = (n - 1) // 2 + 1  # 35 frames at stride 2 -> 33 kept
    kept = 1 + 4 * ((selected - 1) // 4)
    frames = decode_video(raw["d70"]["mp4"], 0, kept, 2, size=(16, 16))[:, :, 4:12]
    video = torch.from_numpy(frames).float().permute(3, 0, 1, 2)[None] / 127.5 - 1
    with torch.no_grad():
        expected = vae.encode(video, sample=False)[0]
    got = torch.from_numpy(np.load(io.BytesIO(lat["d70"]["latent.npy"])))
    assert got.shape == expected.shape == (8, 9, 4, 2)
    assert (got - expected).abs().max() <= 64 * torch.finfo(
        torch.float32
    ).eps * expected.abs().max()
    meta = json.loads(lat["d70"]["json"])
    assert meta["clip"] == {"start": 0, "stride": 2, "frames": kept}
    assert meta["fps"] == pytest.approx(FPS / 2)


# ---------------------------------------------------------------- training windows
WINDOW = 4  # latent frames: a41/b43 hold 11, d70 18, c9 only 3 (shorter than the window)


def _stored(directory: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(latents, text tokens) per key, read with tarfile + numpy (not the project's reader)."""
    members: dict[str, dict[str, bytes]] = {}
    for path in sorted(directory.glob("latents-*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                key, _, field = m.name.partition(".")
                members.setdefault(key, {})[field] = tar.extractfile(m).read()
    return {k: (np.load(io.BytesIO(f["latent.npy"])), np.load(io.BytesIO(f["text.npy"])))
            for k, f in members.items()}  # fmt: skip


def _windows(lat: Path, *, seed: int, start: int, n: int, shuffle: int = 0) -> list[tuple]:
    lset = open_latent_set(lat)
    stream = latent_batches(lset, seed=seed, rank=0, batch_size=1, start_batch=start,
                            latent_frames=WINDOW, shuffle=shuffle)  # fmt: skip
    return list(itertools.islice(stream, n))


def _locate(stored: dict, window: np.ndarray) -> tuple[str, int]:
    """(key, start) of the one stored slice equal to `window`."""
    hits = [(k, s) for k, (z, _) in stored.items() for s in range(z.shape[1] - WINDOW + 1)
            if np.array_equal(z[:, s : s + WINDOW], window)]  # fmt: skip
    assert len(hits) == 1, hits
    return hits[0]


def _chi2(counts: np.ndarray) -> float:
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


def test_windows_are_uniform_slices_of_the_stored_sequence(whole: dict[str, Path]) -> None:
    """Each window equals `stored[:, s:s+WINDOW]` of one video, with that video's text; its
    start `s` is uniform over the valid starts; the video shorter than the window is skipped
    and counted, never padded."""
    stored = _stored(whole["lat"])
    starts: dict[str, list[int]] = {"a41": [], "b43": [], "d70": []}
    skipped: Counter = Counter()
    for batch, skips in _windows(whole["lat"], seed=3, start=0, n=600):
        skipped.update(skips)
        assert batch["latents"].shape == (1, 8, WINDOW, 8, 8)
        key, start = _locate(stored, batch["latents"][0].numpy())
        assert np.array_equal(batch["text"][0].numpy(), stored[key][1])
        starts[key].append(start)
    assert skipped["shorter_than_window"] >= 100  # c9: about a quarter of the stream
    # 11 latent frames: 8 starts; 18: 15 starts; every start drawn, none past the end
    short = np.bincount(starts["a41"] + starts["b43"], minlength=8)
    long = np.bincount(starts["d70"], minlength=15)
    assert len(short) == 8 and len(long) == 15 and short.min() > 0 and long.min() > 0
    assert _chi2(short) < 24.3 and _chi2(long) < 36.1  # chi-square, p = 0.001 (7 / 14 dof)
    assert window_start(18, WINDOW, "first", np.random.default_rng(0)) == 0


def test_window_stream_is_seeded_and_resumes_exactly(whole: dict[str, Path]) -> None:
    """Micro-batch b (its window included) is a function of (seed, rank, b): a resume at b
    gives the uninterrupted stream's batches, with a shuffle window too; another seed
    draws other windows."""
    for shuffle in (0, 3):
        full = _windows(whole["lat"], seed=5, start=0, n=12, shuffle=shuffle)
        resumed = _windows(whole["lat"], seed=5, start=7, n=5, shuffle=shuffle)
        for (a, sa), (b, sb) in zip(full[7:], resumed, strict=True):
            assert torch.equal(a["latents"], b["latents"]) and torch.equal(a["text"], b["text"])
            assert a["noise_seed"] == b["noise_seed"] and sa == sb  # same skips counted
    other = _windows(whole["lat"], seed=6, start=0, n=12)
    same = _windows(whole["lat"], seed=5, start=0, n=12)
    assert not all(
        torch.equal(a["latents"], b["latents"]) for (a, _), (b, _) in zip(same, other, strict=True)
    )


def _experiment(whole: dict[str, Path], run: str, *extra: str):
    from cinemamba.tasks.backbone import load_backbone_experiment

    config = Path(__file__).parents[3] / "configs" / "experiment" / "backbone_tiny.yaml"
    return load_backbone_experiment(config, [
        f"train.run_dir={whole['root'] / run}", "train.batch_size=2", "train.log_every=1",
        "train.progress=false", "train.checkpoint_every=0", "train.optimizer.warmup_steps=0",
        "train.optimizer.schedule=constant",  # a cosine over 2 steps would differ from 4
        f"task.vae={whole['vae']}", f"task.data.path={whole['lat']}", "task.samples.prompts=[]",
        f"task.data.latent_frames={WINDOW}", "task.data.shuffle=3", *extra,
    ])  # fmt: skip


@pytest.mark.distributed
def test_training_on_windows_resumes_exactly(whole: dict[str, Path]) -> None:
    """Backbone training on windows of whole-video latents: 4 steps straight == 2 steps, stop,
    resume to 4 (windows redrawn by stream position), losses bit for bit (same process and
    threads); the video shorter than the window is logged as a skip."""
    from cinemamba.tasks.backbone import train_backbone

    train_backbone(_experiment(whole, "straight", "train.steps=4"))
    train_backbone(_experiment(whole, "resumed", "train.steps=2"))
    train_backbone(_experiment(whole, "resumed", "train.steps=4"))
    logs = {}
    for run in ("straight", "resumed"):
        lines = (whole["root"] / run / "log.jsonl").read_text().splitlines()
        logs[run] = [json.loads(x) for x in lines if json.loads(x)["kind"] == "train"]
    a, b = ([r["backbone/loss"] for r in logs[run]] for run in ("straight", "resumed"))
    assert len(a) == 4 and a == b, (a, b)
    assert any(r.get("data/skipped_shorter_than_window", 0) > 0 for r in logs["straight"])


def test_a_window_longer_than_every_video_is_refused(whole: dict[str, Path]) -> None:
    from cinemamba.config import ConfigError
    from cinemamba.tasks.backbone import BackboneTask

    task = BackboneTask(_experiment(whole, "x", "task.data.latent_frames=19").task)
    with pytest.raises(ConfigError, match=r"latent_frames=19 is longer than every latent "
                       r"sequence .* \(the longest has 18 latent frames\)"):  # fmt: skip
        task.validate()
    BackboneTask(_experiment(whole, "x", "task.data.latent_frames=18").task).validate()


def test_the_vae_sees_one_chunk_at_a_time(whole: dict[str, Path], monkeypatch) -> None:
    """Memory flat in length: the export hands the VAE a lazy stream of `chunk_frames`-frame
    float chunks (decoded as they are consumed), never the whole video."""
    from cinemamba.latents import export as export_mod

    fed: dict[int, list[int]] = {}
    stream = VideoAutoencoder.encode_stream

    def spy(self, chunks):
        sizes = fed.setdefault(len(fed), [])
        assert not isinstance(chunks, list | tuple)  # a generator: nothing decoded up front
        return stream(self, (sizes.append(c.shape[2]) or c for c in chunks))

    monkeypatch.setattr(VideoAutoencoder, "encode_stream", spy)
    cfg = ExportConfig(input=str(whole["raw"]), output=str(whole["root"] / "lat_spy"),
                       vae=str(whole["vae"]), text_encoder=TEXT, chunk_frames=16,
                       progress=False)  # fmt: skip
    export_mod.export_latents(cfg)
    kept = sorted(1 + 4 * ((n - 1) // 4) for n in LENGTHS.values())  # 9, 41, 41, 69
    assert sorted(sum(s) for s in fed.values()) == kept
    assert all(max(s) <= 16 for s in fed.values())
    assert sorted(len(s) for s in fed.values()) == [1, 3, 3, 5]


def test_a_header_that_overstates_the_frames_is_a_counted_warning(
    whole: dict[str, Path], monkeypatch
) -> None:
    """A container claiming 8 more frames than its stream holds: the frames that decode are
    exported (their latents as usual) and the sample is counted under warnings."""
    from dataclasses import replace

    from cinemamba.latents import clips

    probe = clips.probe_video
    monkeypatch.setattr(
        clips, "probe_video", lambda data: replace(probe(data), frames=probe(data).frames + 8)
    )
    cfg = ExportConfig(input=str(whole["raw"]), output=str(whole["root"] / "lat_hdr"),
                       vae=str(whole["vae"]), text_encoder=TEXT, chunk_frames=16,
                       progress=False)  # fmt: skip
    report = export_latents(cfg)
    assert report.samples == 4 and report.warnings["fewer_frames_than_header"] == 4
    assert report.warnings["metadata_mismatch"] == 4  # KEY.json's count disagrees too
    lat = _samples(whole["root"] / "lat_hdr", "latents")
    ref = _samples(whole["lat"], "latents")
    for key, n in LENGTHS.items():
        meta = json.loads(lat[key]["json"])
        assert meta["clip"]["frames"] == 1 + 4 * ((n - 1) // 4)  # what decoded, not n + 8
        assert lat[key]["latent.npy"] == ref[key]["latent.npy"]  # same computation
