"""Backbone training: latent shards vs raw shards give the same losses (same seed and noise),
the loss against a hand computation, periodic samples, exact resume, encoder refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cinemamba.config import ConfigError
from cinemamba.tasks.backbone import (
    BackboneTask,
    load_backbone_experiment,
    train_backbone,
)
from cinemamba.train import DataSpec
from cinemamba_backbone import VideoDiT
from cinemamba_conditioning import TextEncoderConfig, build_text_encoder
from cinemamba_vae import VideoAutoencoder

pytestmark = pytest.mark.distributed
CONFIG = Path(__file__).parents[3] / "configs" / "experiment" / "backbone_tiny.yaml"


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, make_latent_set) -> dict[str, Path]:
    """4 raw synth videos (12 frames, 32x32, 2 per shard), a tiny VAE, their latent export."""
    return make_latent_set(tmp_path_factory.mktemp("bb"))


def _experiment(made: dict[str, Path], run: str, *extra: str):
    return load_backbone_experiment(CONFIG, [
        f"train.run_dir={made['root'] / run}", "train.steps=2", "train.batch_size=2",
        "train.log_every=1", "train.progress=false", "train.checkpoint_every=0",
        "train.optimizer.warmup_steps=0", "train.optimizer.schedule=constant",
        f"task.vae={made['vae']}", f"task.data.path={made['lat']}", "task.samples.prompts=[]",
        "task.caption_dropout=0.5", "task.data.crop=first", "task.data.latent_frames=0",
        *extra,
    ])  # fmt: skip


def _losses(run_dir: Path) -> list[float]:
    recs = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r["backbone/loss"] for r in recs if r["kind"] == "train"]


def test_latent_and_raw_training_give_the_same_losses(made: dict[str, Path]) -> None:
    """Same seed: the raw path (VAE + text encoder on the fly, first 9 frames) reproduces the
    latent path's losses exactly, through two optimizer steps; the first run also writes the
    EMA backbone and periodic samples (mp4, contact sheet, TensorBoard image)."""
    lat = train_backbone(_experiment(
        made, "from_latents", "task.samples.prompts=[a red circle moves left]",
        "task.samples.frames=5", "task.samples.steps=2",
    ))  # fmt: skip
    raw = train_backbone(_experiment(
        made, "from_raw", "task.data.source=raw", f"task.data.path={made['raw']}",
        "task.data.clip.frames=9", "task.data.clip.start=first",
    ))  # fmt: skip
    assert lat.reason == raw.reason == "done"
    a, b = _losses(made["root"] / "from_latents"), _losses(made["root"] / "from_raw")
    assert len(a) == 2 and a == b, (a, b)
    run = made["root"] / "from_latents"
    assert (run / "samples" / "step0000002_0.mp4").stat().st_size > 0
    assert (run / "samples" / "step0000002_0.png").stat().st_size > 0
    events = b"".join(p.read_bytes() for p in (run / "tensorboard").iterdir())
    assert b"samples/0" in events
    model = VideoDiT.from_pretrained(run / "backbone")
    assert model.config.text_dim == 64 and model.config.in_channels == 8


def test_loss_matches_a_hand_computation(made: dict[str, Path]) -> None:
    """Flow matching: mean over (B, C, t, h, w) of (net(x_t) - (eps - x0))^2 with t, eps and
    dropout drawn from the batch's generator in that order; dropped captions see the null text."""
    exp = _experiment(made, "unused", "task.caption_dropout=0.5", "task.per_frame_t=true")
    task = BackboneTask(exp.task)
    task.validate()
    spec = DataSpec(rank=0, world_size=1, micro_batch_size=4, seed=3, start_batch=0)
    batch = next(iter(task.train_data(spec)))
    torch.manual_seed(1)
    net = VideoDiT(exp.task.backbone).double()
    for p in net.parameters():  # a non-trivial network (adaLN-zero starts as the identity)
        torch.nn.init.normal_(p, std=0.05)
    net = net.float()
    got = task.loss("backbone", {"backbone": net}, batch, step=0).loss

    x0 = batch["latents"]
    gen = torch.Generator().manual_seed(int(batch["noise_seed"]))
    b, _, frames, h, w = x0.shape
    z = torch.randn(b, frames, generator=gen)  # logit-normal(0, 1) ...
    shift = (frames * h * w / 4096) ** 0.5  # ... shifted for t*h*w tokens (shift 1 at 4096)
    t = shift * torch.sigmoid(z) / (1 + (shift - 1) * torch.sigmoid(z))
    eps = torch.randn(x0.shape, generator=gen)
    drop = torch.rand(b, generator=gen) < 0.5
    null = build_text_encoder(TextEncoderConfig(random_init_seed=0)).null(1)
    text, mask, pooled = batch["text"].clone(), batch["text_mask"].clone(), batch["pooled"].clone()
    text[drop], mask[drop], pooled[drop] = null.tokens[0], null.mask[0], null.pooled[0]
    tt = t[:, None, :, None, None]
    x_t = (1 - tt) * x0 + tt * eps
    with torch.no_grad():
        pred = net(x_t, t, text, mask, pooled)
    want = ((pred.double() - (eps - x0).double()) ** 2).mean()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0)
    assert 0 < int(drop.sum()) < b  # the seed exercises both branches


def test_training_refuses_latents_of_another_encoder(made: dict[str, Path]) -> None:
    """A config naming another text encoder or VAE fails before any training starts."""
    exp = _experiment(made, "refused", "task.text_encoder.random_init_seed=1")
    with pytest.raises(ConfigError, match="text encoder"):
        train_backbone(exp)
    other = made["root"] / "vae_other"
    vae = VideoAutoencoder.from_pretrained(made["vae"])
    vae.set_latent_stats(torch.zeros(8), torch.ones(8))
    vae.save_pretrained(other)
    with pytest.raises(ConfigError, match="made by VAE"):
        train_backbone(_experiment(made, "refused", f"task.vae={other}"))
    with pytest.raises(ConfigError, match="in_channels=4 but the VAE"):
        train_backbone(_experiment(made, "refused", "task.data.source=raw",
                                   f"task.data.path={made['raw']}", "task.backbone.in_channels=4"))  # fmt: skip
    assert not (made["root"] / "refused").exists()


def test_cli_reports_config_errors_in_one_line(made: dict[str, Path], capsys) -> None:
    """`cinemamba train CONFIG key=value`: a typo or a missing shard directory is exit code 2."""
    from cinemamba.cli import main

    assert main(["train", str(CONFIG), "task.data.pth=x"]) == 2
    assert "task.data.pth" in capsys.readouterr().err
    assert main(["train", str(CONFIG), f"task.vae={made['vae']}", "task.data.path=/nope"]) == 2
    assert "task.data.path='/nope' is not a shard directory" in capsys.readouterr().err


def _final_state(run_dir: Path, step: int) -> dict[str, dict[str, torch.Tensor]]:
    """Weights, AdamW moments and EMA weights of the checkpoint at `step` (ZeRO-0, one rank)."""
    from safetensors.torch import load_file

    ckpt = run_dir / "checkpoints" / f"step_{step:08d}"
    ds = torch.load(ckpt / "backbone" / "state" / "mp_rank_00_model_states.pt",
                    weights_only=False)  # fmt: skip
    moments = {
        f"{i}.{k}": torch.as_tensor(v)
        for i, st in ds["optimizer"]["state"].items()
        for k, v in st.items()
    }
    return {"weights": ds["module"], "adam": moments,
            "ema": load_file(str(ckpt / "ema" / "backbone.safetensors"))}  # fmt: skip


def test_resumed_run_continues_exactly(made: dict[str, Path]) -> None:
    """5 steps straight == 2 steps, stop, resume to 5 (latent stream and noise by batch index).

    Three steps after the resume: the loss of step k is computed before update k, so only
    losses 4 and 5 and the final state see the AdamW moments, EMA and RNG the resume restored.
    Same process, threads and batches on both sides: equal bit for bit (docs/training.md)."""
    straight = _experiment(made, "straight", "train.steps=5", "train.batch_size=1")
    train_backbone(straight)
    train_backbone(_experiment(made, "resumed", "train.steps=2", "train.batch_size=1"))
    train_backbone(_experiment(made, "resumed", "train.steps=5", "train.batch_size=1"))
    a, b = _losses(made["root"] / "straight"), _losses(made["root"] / "resumed")
    assert len(a) == len(b) == 5 and a == b, (a, b)
    want, got = (
        _final_state(made["root"] / "straight", 5),
        _final_state(made["root"] / "resumed", 5),
    )
    for part in want:
        assert want[part].keys() == got[part].keys(), part
        for k in want[part]:
            assert torch.equal(want[part][k], got[part][k]), (part, k)
    # the moments are non-trivial: a resume that dropped them would not match by accident
    assert all(v.abs().sum() > 0 for k, v in want["adam"].items() if k.endswith("exp_avg_sq"))


def test_raw_bad_samples_are_dropped_and_counted(made: dict[str, Path]) -> None:
    """A corrupt video in a raw shard is counted by reason and replaced: every micro-batch still
    holds micro_batch_size samples (issue 14)."""
    import io
    import shutil
    import tarfile

    bad = made["root"] / "raw_bad"
    shutil.copytree(made["raw"], bad)
    for shard in bad.glob("*.tar"):
        with tarfile.open(shard) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        with tarfile.open(shard, "w") as tar:
            for m, data in members:
                data = b"garbage" if m.name.endswith("0000000.mp4") else data
                m.size = len(data)
                tar.addfile(m, io.BytesIO(data))
    exp = _experiment(made, "unused", "task.data.source=raw", f"task.data.path={bad}",
                      "task.data.clip.frames=9", "task.data.clip.start=random")  # fmt: skip
    task = BackboneTask(exp.task)
    task.validate()
    data = task.train_data(
        DataSpec(rank=0, world_size=1, micro_batch_size=2, seed=0, start_batch=0)
    )
    sizes = [next(data)["frames"].shape[0] for _ in range(6)]
    bad_draws = task.skipped().get("undecodable", 0)
    assert bad_draws > 0 and sizes == [2] * 6
    batch = next(data)
    assert batch["frames"].dtype == torch.uint8 and batch["frames"].shape[1:] == (9, 32, 32, 3)


def test_experiment_takes_deepspeed_and_per_model_optimizer_overrides():
    """`cinemamba train` merges the DeepSpeed file like every other engine entry point."""
    from cinemamba.tasks.backbone import load_backbone_experiment

    exp = load_backbone_experiment(
        Path(__file__).resolve().parents[3] / "configs/experiment/backbone_tiny.yaml",
        ["train.deepspeed.zero_optimization.stage=2", "train.optimizers.backbone.lr=0.5"],
    )
    assert exp.train.deepspeed["zero_optimization"]["stage"] == 2
    assert exp.train.optimizers["backbone"]["lr"] == 0.5


def test_train_command_ends_with_a_summary_naming_the_pipeline(made: dict[str, Path], capsys):
    from cinemamba.cli import main
    from cinemamba_sampling import is_saved_pipeline

    run = made["root"] / "summary"
    assert main(["train", str(CONFIG), f"train.run_dir={run}", "train.steps=2",
                 "train.batch_size=2", "train.progress=false", f"task.vae={made['vae']}",
                 f"task.data.path={made['lat']}", "task.samples.prompts=[]",
                 "task.data.crop=first", "task.data.latent_frames=0"]) == 0  # fmt: skip
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("cinemamba train: done at step 2/2 in ")
    assert f"backbone/loss {_losses(run)[-1]:.4g}" in line
    assert line.endswith(f"; model {run / 'pipeline'}") and is_saved_pipeline(run / "pipeline")
