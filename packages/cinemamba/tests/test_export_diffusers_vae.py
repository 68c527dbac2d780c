"""export-latents and vae-stats with a diffusers VAE directory (a tiny random-init Wan VAE):
latents equal diffusers' own encode with the published normalisation, the manifest names the
diffusers identity, vae-stats writes measured statistics that change the identity."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cinemamba.cli import main
from cinemamba.data.synth import SceneConfig
from cinemamba.data.synth_video import write_synth
from cinemamba.data.video import decode_video
from cinemamba.latents import (
    ClipConfig,
    ExportConfig,
    LatentFormatError,
    export_latents,
    open_latent_set,
    vae_identity,
)
from cinemamba.latents.stream import read_tar
from cinemamba_conditioning import TextEncoderConfig
from cinemamba_vae import VideoAutoencoder, vae_preset

diffusers = pytest.importorskip("diffusers")

TEXT = TextEncoderConfig(random_init_seed=0)
MEAN, STD = [0.1, 0.2, -0.1, 0.0], [1.5, 2.0, 0.5, 1.0]


def tiny_wan() -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
        temperal_downsample=[False, True, True], latents_mean=MEAN, latents_std=STD,
    ).eval()  # fmt: skip


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("dexport")
    write_synth(root / "raw", "train", 4, SceneConfig(frames=12, height=32, width=32),
                samples_per_shard=2)  # fmt: skip
    model = tiny_wan()
    model.save_pretrained(root / "wan")
    report = export_latents(ExportConfig(
        input=str(root / "raw"), output=str(root / "lat"), vae=str(root / "wan"),
        text_encoder=TEXT, clip=ClipConfig(frames=9, start="first"), progress=False,
    ))  # fmt: skip
    assert report.manifest is not None and report.samples == 4 and not report.skipped
    return {"root": root, "model": model}


def test_export_with_a_diffusers_wan_vae(made: dict) -> None:
    root = made["root"]
    raw = next(read_tar(str(root / "raw" / "train-000001.tar")))
    lat = next(read_tar(str(root / "lat" / "latents-000001.tar")))
    assert lat["__key__"] == raw["__key__"]
    frames = decode_video(raw["mp4"], 0, 9)
    video = torch.from_numpy(frames).double().permute(3, 0, 1, 2)[None] / 127.5 - 1
    with torch.no_grad():
        mean = made["model"].encode(video.float()).latent_dist.mean[0]
    expected = (mean - torch.tensor(MEAN).view(-1, 1, 1, 1)) / torch.tensor(STD).view(-1, 1, 1, 1)
    got = torch.from_numpy(np.load(io.BytesIO(lat["latent.npy"])))
    assert got.shape == (4, 3, 4, 4)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    manifest = json.loads((root / "lat" / "latents.json").read_text())
    assert manifest["vae"]["identity"] == vae_identity(root / "wan")
    assert manifest["vae"]["identity"].startswith("diffusers/AutoencoderKLWan/")
    assert manifest["vae"]["config"]["temporal_compression"] == 4
    assert manifest["vae"]["config"]["normalization"] == "published"
    assert manifest["vae"]["latent_std"] == STD


def test_whole_video_export_with_wan_equals_its_own_encode(made: dict, tmp_path: Path) -> None:
    """Whole-video export (3-frame chunks streamed through Wan's feature cache) of 12-frame
    videos = diffusers' own encode of their first 9 frames (1 + 4k) in one call."""
    root = made["root"]
    report = export_latents(ExportConfig(
        input=str(root / "raw"), output=str(tmp_path / "lat"), vae=str(root / "wan"),
        text_encoder=TEXT, chunk_frames=3, progress=False,
    ))  # fmt: skip
    assert report.samples == 4 and not report.skipped
    raws = {
        s["__key__"]: s
        for i in range(2)
        for s in read_tar(str(root / "raw" / f"train-{i:06d}.tar"))
    }
    for i in range(2):
        for lat in read_tar(str(tmp_path / "lat" / f"latents-{i:06d}.tar")):
            frames = decode_video(raws[lat["__key__"]]["mp4"])[:9]
            video = torch.from_numpy(frames).float().permute(3, 0, 1, 2)[None] / 127.5 - 1
            with torch.no_grad():
                mean = made["model"].encode(video).latent_dist.mean[0]
            expected = (mean - torch.tensor(MEAN).view(-1, 1, 1, 1)) / torch.tensor(STD).view(
                -1, 1, 1, 1
            )
            got = torch.from_numpy(np.load(io.BytesIO(lat["latent.npy"])))
            assert got.shape == (4, 3, 4, 4)
            tol = 64 * torch.finfo(torch.float32).eps * expected.abs().max()
            assert (got - expected).abs().max() <= tol
            meta = json.loads(lat["json"])
            assert meta["clip"]["frames"] == 9 and meta["source_frames"] == 12


def test_latents_of_the_diffusers_vae_refuse_another_vae(made: dict, tmp_path: Path) -> None:
    root = made["root"]
    open_latent_set(root / "lat", vae=vae_identity(root / "wan"), text_encoder=TEXT)
    VideoAutoencoder(vae_preset("tiny")).save_pretrained(tmp_path / "own")
    with pytest.raises(LatentFormatError, match="another VAE|re-export"):
        open_latent_set(root / "lat", vae=vae_identity(tmp_path / "own"))


def test_vae_stats_cli_writes_measured_stats_into_a_diffusers_dir(made: dict, tmp_path) -> None:
    root = made["root"]
    before = vae_identity(root / "wan")
    out = tmp_path / "wan_stats"
    rc = main(["vae-stats", str(root / "wan"), str(root / "raw"), "--clip-frames", "9",
               "--out", str(out)])  # fmt: skip
    assert rc == 0
    stats = json.loads((out / "cinemamba_latent_stats.json").read_text())
    assert len(stats["mean"]) == 4 and all(s > 0 for s in stats["std"])
    assert vae_identity(out) != before and vae_identity(root / "wan") == before


def test_cogvideox_frame_rule_fails_up_front(made: dict, tmp_path: Path) -> None:
    """CogVideoX takes 1 + 8k frames: a 13-frame clip is refused before any sample is read."""
    torch.manual_seed(0)
    diffusers.AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 16, 16), latent_channels=4, layers_per_block=1,
        norm_num_groups=4, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
    ).save_pretrained(tmp_path / "cog")  # fmt: skip
    cfg = ExportConfig(
        input=str(made["root"] / "raw"), output=str(tmp_path / "lat"), vae=str(tmp_path / "cog"),
        text_encoder=TEXT, clip=ClipConfig(frames=13, start="first"), progress=False,
    )  # fmt: skip
    with pytest.raises(ValueError, match="clip.frames=13: the VAE encodes 1 \\+ 8\\*k frames"):
        export_latents(cfg)
    assert not list((tmp_path / "lat").glob("*.tar"))


def _backbone_task(root: Path, vae: Path, *extra: str):
    from cinemamba.tasks.backbone import BackboneTask, load_backbone_experiment

    config = Path(__file__).parents[3] / "configs" / "experiment" / "backbone_tiny.yaml"
    exp = load_backbone_experiment(config, [
        f"train.run_dir={root / 'run'}", f"task.vae={vae}", f"task.data.path={root / 'lat'}",
        "task.samples.prompts=[]", *extra,
    ])  # fmt: skip
    return BackboneTask(exp.task)


def test_backbone_task_takes_a_diffusers_vae(made: dict, tmp_path: Path) -> None:
    """task.vae may name a diffusers directory: its latents are accepted, its channel count is
    checked for raw-shard training, and another VAE's identity is refused."""
    from cinemamba.config import ConfigError

    root = made["root"]
    task = _backbone_task(root, root / "wan", "task.backbone.in_channels=4")
    task.validate()
    assert task.latent_set.vae_identity == vae_identity(root / "wan")
    raw = _backbone_task(root, root / "wan", "task.data.source=raw",
                         f"task.data.path={root / 'raw'}", "task.data.clip.frames=9")  # fmt: skip
    with pytest.raises(ConfigError, match="makes 4 latent channels"):
        raw.validate()
    VideoAutoencoder(vae_preset("tiny")).save_pretrained(tmp_path / "own")
    with pytest.raises(ConfigError, match="made by VAE 'diffusers/AutoencoderKLWan/"):
        _backbone_task(root, tmp_path / "own", "task.backbone.in_channels=4").validate()
