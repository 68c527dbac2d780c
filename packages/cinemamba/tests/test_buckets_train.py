"""Buckets in training: the backbone and the VAE train one step on every bucket shape of a
mixed-aspect raw shard set (square, 3:2, 2:3), each micro-batch one bucket (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from cinemamba.config import ConfigError
from cinemamba.data.shards import sample_to_tar_entries
from cinemamba.data.video import encode_video
from cinemamba.latents import ClipConfig, ExportConfig, export_latents
from cinemamba.tasks.backbone import BackboneTask, load_backbone_experiment
from cinemamba.tasks.vae import VAETask, load_vae_experiment
from cinemamba.train import DataSpec
from cinemamba_conditioning import TextEncoderConfig
from cinemamba_vae import VideoAutoencoder, vae_preset

REPO = Path(__file__).resolve().parents[3]
SIZES = {"sq": (32, 32), "wide": (32, 48), "tall": (48, 32)}  # (height, width) per kind
BUCKETS = "[[32,32,9],[32,48,9],[48,32,9]]"


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors: one thread is faster on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A raw shard set (2 shards, 2 videos of each kind per shard, 12 frames, with a plan) and a
    seeded tiny VAE."""
    root = tmp_path_factory.mktemp("bucket_train")
    raw = root / "raw"
    raw.mkdir()
    rng = np.random.default_rng(1)
    plan = {"shards": []}
    for shard in range(2):
        name, keys = f"mix-{shard:06d}.tar", []
        with wds.TarWriter(str(raw / name)) as tw:
            for kind, (h, w) in SIZES.items():
                for i in range(2):
                    key = f"{kind}{shard}{i}"
                    frames = rng.integers(0, 255, (12, h, w, 3), dtype=np.uint8)
                    tw.write(sample_to_tar_entries(key, encode_video(frames, 12.0), key, {}))
                    keys.append(key)
        plan["shards"].append({"name": name, "samples": len(keys), "keys": keys})
    (raw / "mix.plan.json").write_text(json.dumps(plan))
    torch.manual_seed(0)
    vae = VideoAutoencoder(vae_preset("tiny"))
    vae.set_latent_stats(torch.zeros(8), torch.ones(8))
    vae.save_pretrained(root / "vae")
    # latents of each video's first 9 frames at its own size: (8, 3, H/4, W/4)
    export_latents(ExportConfig(
        input=str(raw), output=str(root / "lat"), vae=str(root / "vae"),
        text_encoder=TextEncoderConfig(random_init_seed=0),
        clip=ClipConfig(frames=9, start="first"), progress=False,
    ))  # fmt: skip
    return {"root": root, "raw": raw, "vae": root / "vae", "lat": root / "lat"}


@pytest.mark.parametrize("mixer", ["bimamba", "full3d"])  # 2D sin-cos / 3D rotary positions
def test_backbone_trains_one_step_on_every_bucket_shape(made, mixer):
    exp = load_backbone_experiment(REPO / "configs/experiment/backbone_tiny.yaml", [
        f"task.backbone.mixer={mixer}",
        f"train.run_dir={made['root'] / 'run'}", f"task.vae={made['vae']}",
        "task.data.source=raw", f"task.data.path={made['raw']}", "task.samples.prompts=[]",
        "task.data.clip.start=first", f"task.data.buckets.buckets={BUCKETS}",
        "task.data.buckets.tokens=150", "task.data.buckets.sampling=uniform",
    ])  # fmt: skip
    task = BackboneTask(exp.task)
    task.validate()
    # tiny VAE: 4x in time and space; patch 2: tokens (1 + 8/4) * (H/8) * (W/8), by hand
    want_batch = {(32, 32): 150 // (3 * 4 * 4), (32, 48): 150 // (3 * 4 * 6)}
    want_batch[(48, 32)] = want_batch[(32, 48)]
    model = task.build_models()["backbone"]
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    data = task.train_data(DataSpec(0, 1, micro_batch_size=1, seed=0, start_batch=0))
    trained = set()
    for step in range(30):
        batch = next(data)
        b, t, h, w, _ = batch["frames"].shape
        assert t == 9 and b == want_batch[(h, w)]
        assert all(c.rstrip("0123456789") == _kind(h, w) for c in batch["captions"])
        if (h, w) in trained:
            continue
        before = [p.detach().clone() for p in model.parameters()]
        loss = task.loss("backbone", {"backbone": model}, batch, step).loss
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
        trained.add((h, w))
        if len(trained) == 3:
            break
    assert trained == set(SIZES.values())
    assert task.training_clip().latent_frames == 3


def _kind(h: int, w: int) -> str:
    return next(k for k, v in SIZES.items() if v == (h, w))


def test_vae_trains_one_step_on_every_bucket_shape(made):
    exp = load_vae_experiment(REPO / "configs/vae/tiny.yaml", [
        f"task.data.path={made['raw']}", f"train.run_dir={made['root'] / 'vae_run'}",
        "task.model.base_channels=16", "task.data.clip.start=first", "task.data.image_prob=0",
        f"task.data.buckets.buckets={BUCKETS}",
        "task.data.buckets.tokens=400",
    ])  # fmt: skip
    task = VAETask(exp.task)
    task.validate()
    vae = task.build_models()["vae"]
    data = task.train_data(DataSpec(0, 1, micro_batch_size=1, seed=0, start_batch=0))
    trained = set()
    for step in range(30):
        batch = next(data)
        b, t, h, w, _ = batch["frames"].shape
        # 4x tiny VAE, latent positions (1 + 8/4) * (H/4) * (W/4), by hand
        assert t == 9 and b == 400 // (3 * (h // 4) * (w // 4))
        if (h, w) not in trained:
            loss = task.loss("vae", {"vae": vae}, batch, step).loss
            loss.backward()
            assert torch.isfinite(loss)
            trained.add((h, w))
    assert trained == set(SIZES.values())
    # the fixed reconstruction clips: one shape (the first bucket's), stacked
    assert task.val_clips().shape == (4, 9, 32, 32, 3)


def test_bucket_config_errors_name_the_setting(made):
    exp = load_backbone_experiment(REPO / "configs/experiment/backbone_tiny.yaml", [
        f"task.vae={made['vae']}", "task.data.source=raw", f"task.data.path={made['raw']}",
        "task.samples.prompts=[]", "task.data.buckets.buckets=[[32,32,9]]",
        "task.data.buckets.tokens=10",
    ])  # fmt: skip
    with pytest.raises(ConfigError, match="task.data.buckets: bucket 32x32x9 has 48 tokens"):
        BackboneTask(exp.task).validate()


def _latent_task(made, *extra: str) -> BackboneTask:
    exp = load_backbone_experiment(REPO / "configs/experiment/backbone_tiny.yaml", [
        f"task.vae={made['vae']}", f"task.data.path={made['lat']}", "task.samples.prompts=[]",
        f"task.data.buckets.buckets={BUCKETS}", *extra,
    ])  # fmt: skip
    task = BackboneTask(exp.task)
    task.validate()
    return task


def test_latent_buckets_group_same_shape_latents_and_resume_exactly(made):
    # windows of 2 latent frames (5 pixel frames) from the stored 3 at a seeded start
    buckets = "[[32,32,5],[32,48,5],[48,32,5],[32,32,9]]"
    task = _latent_task(
        made, f"task.data.buckets.buckets={buckets}", "task.data.buckets.tokens=100"
    )
    spec = DataSpec(0, 1, micro_batch_size=1, seed=0, start_batch=0)
    run = [next(d) for d in [task.train_data(spec)] for _ in range(12)]
    # 4x tiny VAE, patch 2: tokens of a 9-frame 32x32 clip (3 latent frames) 3 * 4 * 4 = 48
    want = {(8, 8): (3, 100 // 48), (8, 12): (2, 100 // (2 * 4 * 6)), (12, 8): (2, 100 // 48)}
    model = task.build_models()["backbone"]
    trained = set()
    for step, batch in enumerate(run):
        b, c, t, h, w = batch["latents"].shape
        assert (t, b) == want[(h, w)] and c == 8
        if (h, w) not in trained:
            loss = task.loss("backbone", {"backbone": model}, batch, step).loss
            loss.backward()
            assert torch.isfinite(loss)
            trained.add((h, w))
    assert trained == set(want)
    later = _latent_task(
        made, f"task.data.buckets.buckets={buckets}", "task.data.buckets.tokens=100"
    ).train_data(DataSpec(0, 1, micro_batch_size=1, seed=0, start_batch=5))
    for want_batch in run[5:]:
        got = next(later)
        assert got.keys() == want_batch.keys()
        assert all(torch.equal(got[k], want_batch[k]) for k in got)


def test_latent_buckets_ignore_latent_frames(made, caplog):
    """With buckets the window is each bucket's (docs/data.md), so task.data.latent_frames,
    here longer than every stored sequence (3 latent frames), is neither an error nor a
    warning about skipped sequences."""
    with caplog.at_level("WARNING"):
        _latent_task(made, "task.data.latent_frames=16", "task.data.buckets.tokens=100")
    assert "latent_frames" not in caplog.text


def test_engine_resume_with_buckets_continues_exactly(made):
    """Through the training engine: 4 steps in one go, and 2 steps + a resume from the step-2
    checkpoint, give the same losses bit for bit (the same computation on the same batches)."""
    from cinemamba.tasks.backbone import train_backbone

    def run(name: str, steps: int) -> None:
        train_backbone(load_backbone_experiment(REPO / "configs/experiment/backbone_tiny.yaml", [
            f"train.run_dir={made['root'] / name}", f"train.steps={steps}",
            "train.checkpoint_every=2", "train.log_every=1", "train.progress=false",
            "train.eval_every=0", f"task.vae={made['vae']}", "task.data.source=raw",
            f"task.data.path={made['raw']}", "task.samples.prompts=[]",
            f"task.data.buckets.buckets={BUCKETS}", "task.data.buckets.tokens=150",
            "task.data.clip.start=random", "task.data.buckets.fit=random",
        ]))  # fmt: skip

    def losses(name: str) -> list[tuple[int, float]]:
        lines = (made["root"] / name / "log.jsonl").read_text().splitlines()
        recs = [json.loads(line) for line in lines]
        return [(r["step"], r["backbone/loss"]) for r in recs if r["kind"] == "train"]

    run("straight", 4)
    run("resumed", 2)
    run("resumed", 4)
    assert [step for step, _ in losses("straight")] == [1, 2, 3, 4]
    assert losses("resumed") == losses("straight")  # steps 3, 4 logged once: it resumed
