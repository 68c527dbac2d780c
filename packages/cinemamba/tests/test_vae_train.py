"""The VAE task through the engine, and the train-vae / vae-stats / eval-vae commands."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from cinemamba.cli import main
from cinemamba.data.synth import SceneConfig
from cinemamba.data.synth_video import write_synth
from cinemamba.eval.reconstruction import evaluate_reconstruction, iter_clips
from cinemamba.latents.clips import ClipConfig, to_pixels
from cinemamba.tasks.vae import is_image_batch, load_vae_experiment, train_vae
from cinemamba_vae import VideoAutoencoder, vae_preset
from cinemamba_vae.metrics import frames_psnr

REPO = Path(__file__).resolve().parents[3]
TINY = str(REPO / "configs" / "vae" / "tiny.yaml")


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors: one thread is faster, and far faster on an oversubscribed shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two synthetic 9-frame 16x16 videos in one shard."""
    root = tmp_path_factory.mktemp("vae_shards")
    write_synth(root, "train", 2, SceneConfig(frames=9, height=16, width=16), samples_per_shard=2)
    return root


def overrides(shards: Path, run_dir: Path, steps: int) -> list[str]:
    return [
        f"task.data.path={shards}",
        f"train.run_dir={run_dir}",
        f"train.steps={steps}",
        "train.batch_size=2",
        "train.optimizer.warmup_steps=0",
        "train.optimizer.lr=3e-3",
        "train.optimizer.schedule=constant",
        "train.ema_decay=0",
        "train.checkpoint_every=0",
        "train.log_every=1",
        "train.progress=false",
        "task.model.base_channels=16",
        "task.data.clip.frames=5",
        "task.data.clip.height=16",
        "task.data.clip.width=16",
        "task.data.clip.start=first",
        "task.data.image_prob=0",
        "task.data.val_clips=1",
    ]


def test_training_steps_reduce_the_loss_and_write_media(shards, tmp_path):
    run = tmp_path / "run"
    result = train_vae(load_vae_experiment(TINY, overrides(shards, run, 8)))
    assert result.reason == "done" and result.step == 8
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    rec = [r["vae/rec"] for r in rows if r.get("kind") == "train"]
    assert len(rec) == 8 and np.mean(rec[-2:]) < 0.8 * np.mean(rec[:2])
    evals = [r for r in rows if r.get("kind") == "eval"]
    assert evals and np.isfinite(evals[-1]["psnr"])
    assert sorted(p.suffix for p in (run / "samples").iterdir()) == [".mp4", ".png"]
    vae = VideoAutoencoder.from_pretrained(run / "vae")  # the (EMA) weights, loadable
    assert vae.config.base_channels == 16


def test_image_batches_are_seeded_by_batch_index():
    flags = [is_image_batch(0, 0, b, 0.25) for b in range(400)]
    assert flags == [is_image_batch(0, 0, b, 0.25) for b in range(400)]
    assert 0.15 < np.mean(flags) < 0.35
    assert not any(is_image_batch(0, 0, b, 0.0) for b in range(50))


def test_missing_lpips_weights_is_a_clear_error(shards, tmp_path, capsys):
    code = main(["train-vae", TINY, f"task.data.path={shards}", f"train.run_dir={tmp_path}",
                 "task.loss.lpips.weight=0.1"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "lpips.backbone_weights" in err and "random_backbone=true" in err
    assert not (tmp_path / "checkpoints").exists()


def test_unknown_key_is_named(shards, capsys):
    assert main(["train-vae", TINY, "task.model.latnet_channels=4"]) == 2
    assert "latnet_channels" in capsys.readouterr().err


@pytest.fixture(scope="module")
def saved_vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vae") / "vae"
    VideoAutoencoder(vae_preset("tiny", base_channels=8, norm_groups=4)).save_pretrained(path)
    return path


def test_vae_stats_normalises_the_latents(saved_vae, shards, tmp_path, capsys):
    out = tmp_path / "with_stats"
    args = ["vae-stats", str(saved_vae), str(shards), "--clip-frames", "9", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["clips"] == 2
    vae = VideoAutoencoder.from_pretrained(out)
    assert not torch.allclose(vae.latent_std, torch.ones(8))
    # Replay the same posterior samples (same seed, same order): normalised, they are exactly
    # zero-mean and unit-std per channel.
    gen = torch.Generator().manual_seed(0)
    clip = ClipConfig(frames=9, start="first")
    zs = [
        vae.encode(to_pixels(frames)[None], generator=gen)
        for _, frames in iter_clips(str(shards), clip, Counter())
    ]
    z = torch.cat([t.transpose(0, 1).reshape(8, -1) for t in zs], dim=1).double()
    torch.testing.assert_close(z.mean(1), torch.zeros(8, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(1, correction=0), torch.ones(8, dtype=torch.float64),
                               atol=1e-4, rtol=0)  # fmt: skip


def test_eval_vae_report_per_frame(saved_vae, shards, tmp_path, capsys):
    out = tmp_path / "report"
    args = ["eval-vae", str(saved_vae), str(shards), "--clip-frames", "5", "--out", str(out),
            "--lpips-random", "--size", "32"]  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "reconstruction.json").read_text())
    assert report["clips"] == 2 and report["frames"] == 5
    assert {k: len(v) for k, v in report["per_frame"].items()} == {"psnr": 5, "ssim": 5, "lpips": 5}
    assert report["psnr"] == pytest.approx(np.mean(report["per_frame"]["psnr"]), rel=1e-6)
    assert "| frame |" in (out / "reconstruction.md").read_text()
    # independent PSNR of the same reconstructions
    vae = VideoAutoencoder.from_pretrained(saved_vae).eval()
    clip = ClipConfig(frames=5, height=32, width=32, start="first")
    psnrs = []
    with torch.no_grad():
        for _, frames in iter_clips(str(shards), clip, Counter()):
            video = to_pixels(frames)[None]
            psnrs.append(frames_psnr(video, vae.decode(vae.encode(video, sample=False)))[0])
    assert report["per_frame"]["psnr"] == pytest.approx(torch.stack(psnrs).mean(0).tolist(), 1e-5)
    # chunked evaluation gives the same numbers; no LPIPS weights -> LPIPS reported absent
    chunked = evaluate_reconstruction(vae, str(shards), clip_frames=5, size=32, chunk_frames=2)
    assert chunked["psnr"] == pytest.approx(report["psnr"], rel=1e-5)
    assert chunked["lpips"] is None
    with pytest.raises(ValueError, match=r"1 \+ 4\*k"):
        evaluate_reconstruction(vae, str(shards), clip_frames=6)


def test_gan_phases_under_bf16(shards, tmp_path):
    run = tmp_path / "gan"
    extra = [
        "train.precision=bf16",
        "task.loss.disc.enabled=true",
        "task.loss.disc.start_step=2",
        "task.loss.disc.channels=8",
        "task.loss.disc.layers=2",
        "task.loss.disc.lecam_weight=0.1",
        "task.data.image_prob=0.5",
    ]
    experiment = load_vae_experiment(TINY, overrides(shards, run, 3) + extra)
    # the GAN step (micro-batch 2) is an image batch: 1-frame clips, which oneDNN's AMX bf16
    # Conv3d got wrong with the time padding inside the kernel (NaN discriminator loss)
    assert is_image_batch(experiment.train.seed, 0, 2, 0.5)
    result = train_vae(experiment)
    assert result.reason == "done"
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r.get("kind") == "train"]
    # the discriminator phase is skipped before start_step, then trains (hinge + LeCam)
    assert [("discriminator/d_loss" in r) for r in train_rows] == [False, False, True]
    last = train_rows[-1]
    assert last["vae/adaptive_weight"] > 0 and np.isfinite(last["vae/loss"])
    assert last["vae/skipped"] == 0 and last["discriminator/skipped"] == 0
    assert np.isfinite([last["discriminator/d_loss"], last["discriminator/lecam"]]).all()
    # untrained logits are small, so the hinge terms are each about 1
    assert 1.5 < last["discriminator/d_hinge"] < 2.5


def _vae_checkpoint(run: Path, step: int) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint at `step`: both models' weights and Adam moments, EMA."""
    from safetensors.torch import load_file

    ckpt = run / "checkpoints" / f"step_{step:08d}"
    out: dict[str, torch.Tensor] = {}
    for model in ("vae", "discriminator"):
        ds = torch.load(ckpt / model / "state" / "mp_rank_00_model_states.pt", weights_only=False)
        out.update({f"{model}.{k}": v for k, v in ds["module"].items()})
        for i, st in ds["optimizer"]["state"].items():
            out.update({f"{model}.adam.{i}.{k}": torch.as_tensor(v) for k, v in st.items()})
    for file in sorted((ckpt / "ema").glob("*.safetensors")):
        out.update({f"ema.{file.stem}.{k}": v for k, v in load_file(str(file)).items()})
    return out


def test_resumed_gan_run_continues_exactly(shards, tmp_path):
    """5 steps straight == 2 steps, stop, resume to 5, with image batches, posterior samples
    (the torch RNG), EMA, warmup + cosine LR and a discriminator that starts after the resume
    (LeCam anchors).

    Same process, threads and batches: equal bit for bit. Batches 2-4 are image, clip, image
    batches, unlike batches 0-2, so a resume that restarted the image draws at 0 differs."""
    assert [is_image_batch(0, 0, b, 0.5) for b in range(5)] == [False, False, True, False, True]
    gan = [
        "train.optimizer.warmup_steps=2",  # an LR that changes every step, as a function of it
        "train.optimizer.schedule=cosine",
        "train.ema_decay=0.9",
        "task.data.image_prob=0.5",
        "task.loss.disc.enabled=true",
        "task.loss.disc.start_step=3",
        "task.loss.disc.channels=8",
        "task.loss.disc.layers=2",
        "task.loss.disc.lecam_weight=0.1",
    ]

    def run(name: str, steps: int) -> Path:
        exp = load_vae_experiment(TINY, overrides(shards, tmp_path / name, steps) + gan)
        assert exp.train.seed == 0 and train_vae(exp).reason == "done"
        return tmp_path / name

    straight = run("straight", 5)
    run("resumed", 2)
    resumed = run("resumed", 5)

    def losses(path: Path) -> list[dict[str, float]]:
        rows = [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]
        return [
            {k: v for k, v in r.items() if k.startswith(("vae/", "discriminator/"))}
            for r in rows
            if r.get("kind") == "train"
        ]

    want, got = losses(straight), losses(resumed)
    assert len(want) == len(got) == 5
    assert [("discriminator/d_loss" in r) for r in want] == [False] * 3 + [True] * 2
    assert len({r["vae/lr"] for r in want[2:]}) == 3  # steps 3-5: each its own LR
    for step, (a, b) in enumerate(zip(want, got, strict=True), start=1):
        assert a == b, step
    a, b = _vae_checkpoint(straight, 5), _vae_checkpoint(resumed, 5)
    assert a.keys() == b.keys() and any(k.startswith("ema.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_train_vae_ends_with_a_summary(shards, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train-vae", TINY, *overrides(shards, run, 2)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"][-1]
    evaluation = [r for r in rows if r["kind"] == "eval"][-1]
    assert line.startswith("cinemamba train-vae: done at step 2/2 in ")
    assert f"vae/loss {train['vae/loss']:.4g};" in line
    assert f"psnr {evaluation['psnr']:.4g} dB" in line
    assert line.endswith(f"; model {run / 'vae'}")
    VideoAutoencoder.from_pretrained(run / "vae")  # the named model loads


def test_reconstruction_picture_shows_every_validation_clip(shards, tmp_path):
    from PIL import Image

    from cinemamba.tasks.vae import VAETask

    run = tmp_path / "run"
    experiment = load_vae_experiment(TINY, [*overrides(shards, run, 1), "task.data.val_clips=2"])
    assert train_vae(experiment).reason == "done"
    clips = VAETask(experiment.task).val_clips().numpy()  # (2, T, H, W, 3): the task's own pick
    assert clips.shape[:2] == (2, 5) and not np.array_equal(clips[0], clips[1])
    sheet = np.asarray(Image.open(run / "samples" / "recon_step0000001.png"))
    n, t, h, w, _ = clips.shape
    assert sheet.shape == (n * 2 * h, t * w, 3)  # per clip: originals row + reconstructions row
    for i in range(n):
        originals = sheet[2 * i * h : (2 * i + 1) * h]
        assert np.array_equal(originals, np.concatenate(list(clips[i]), axis=1))
