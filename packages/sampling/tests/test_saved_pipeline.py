"""A pipeline is a directory: save_pretrained -> from_pretrained reproduces the latents of the
in-memory pipeline; wrong VAE, another process and long rolling windows are caught."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from cinemamba_backbone import BackboneConfig, VideoDiT
from cinemamba_conditioning import TextEncoderConfig, build_text_encoder
from cinemamba_sampling import (
    PipelineConfig,
    ProcessConfig,
    SamplingDefaults,
    TrainingClip,
    VideoPipeline,
    build_process,
)
from cinemamba_vae import VideoAutoencoder, vae_preset

SIZE = dict(frames=5, height=16, width=16)


def _pipeline(process: ProcessConfig | None = None) -> VideoPipeline:
    torch.manual_seed(0)
    vae = VideoAutoencoder(vae_preset("tiny"))
    vae.set_latent_stats(torch.linspace(-0.1, 0.1, 8), torch.linspace(0.5, 1.5, 8))
    text = build_text_encoder(TextEncoderConfig(random_init_seed=0))
    arch = BackboneConfig.from_preset("tiny", in_channels=8, text_dim=text.dim, mixer="mamba")
    net = VideoDiT(arch)
    for p in net.parameters():  # adaLN-zero starts as a constant map: make it non-trivial
        torch.nn.init.normal_(p, std=0.05)
    return VideoPipeline(
        vae, net, text, build_process(process), PipelineConfig(solver="heun", window=2,
                                                               context=1, progress=False),
        defaults=SamplingDefaults(steps=3, guidance=2.0),
        training_clip=TrainingClip(latent_frames=2, latent_height=4, latent_width=4),
    )  # fmt: skip


def test_round_trip_gives_the_same_latents(tmp_path) -> None:
    """Same computation on rebuilt modules: bit-for-bit equal latents for a seed, with the
    saved solver, steps, guidance and clip restored."""
    pipe = _pipeline()
    want = pipe.sample_latents(["a red circle"], seed=3, mode="rolling", **SIZE)
    pipe.save_pretrained(tmp_path / "pipe")
    meta = json.loads((tmp_path / "pipe" / "pipeline.json").read_text())
    assert meta["format"] == "cinemamba-pipeline/1" and meta["vae"]["path"] == "vae"
    assert not (tmp_path / "pipe.partial").exists()
    loaded = VideoPipeline.from_pretrained(tmp_path / "pipe")
    loaded.config.progress = False
    assert loaded.solver_name == "heun" and loaded.defaults == SamplingDefaults(3, 2.0)
    assert loaded.training_clip == TrainingClip(2, 4, 4)
    got = loaded.sample_latents(["a red circle"], seed=3, mode="rolling", **SIZE)
    assert torch.equal(got, want)
    loaded.save_pretrained(tmp_path / "pipe")  # replacing a saved pipeline is fine
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="is not a saved pipeline"):
        pipe.save_pretrained(tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"


def test_vae_reference_is_checked_by_identity(tmp_path) -> None:
    """A shared VAE is referenced by path; if its weights change, loading names both hashes."""
    pipe = _pipeline()
    pipe.vae.save_pretrained(tmp_path / "vae")
    pipe.save_pretrained(tmp_path / "pipe", vae_reference=tmp_path / "vae")
    assert not (tmp_path / "pipe" / "vae").exists()
    VideoPipeline.from_pretrained(tmp_path / "pipe")  # loads
    other = VideoAutoencoder.from_pretrained(tmp_path / "vae")
    other.set_latent_stats(torch.zeros(8), torch.ones(8))
    other.save_pretrained(tmp_path / "vae")
    with pytest.raises(ValueError, match="was saved with 'vae/sha256-"):
        VideoPipeline.from_pretrained(tmp_path / "pipe")
    with pytest.raises(ValueError, match="does not hold this pipeline's VAE"):
        pipe.save_pretrained(tmp_path / "pipe2", vae_reference=tmp_path / "vae")
    assert not (tmp_path / "pipe2").exists() and not (tmp_path / "pipe2.partial").exists()


def test_a_diffusers_vae_travels_with_the_pipeline(tmp_path) -> None:
    """A pipeline over a diffusers Wan VAE (through `load_vae`) saves and reloads it: same
    latents, same decoded pixels, the published normalisation kept (no statistics file)."""
    diffusers = pytest.importorskip("diffusers")
    from cinemamba_vae import DiffusersVideoVAE, load_vae

    torch.manual_seed(0)
    diffusers.AutoencoderKLWan(
        base_dim=8, z_dim=8, dim_mult=[1, 2, 2], num_res_blocks=1,
        temperal_downsample=[True, True], scale_factor_spatial=4,
        latents_mean=[0.1] * 8, latents_std=[2.0] * 8,
    ).save_pretrained(tmp_path / "wan")  # fmt: skip
    pipe = _pipeline()
    pipe.vae = load_vae(tmp_path / "wan")
    want = pipe.sample_latents(["a red circle"], seed=3, mode="rolling", **SIZE)
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = VideoPipeline.from_pretrained(tmp_path / "pipe")
    loaded.config.progress = False
    assert isinstance(loaded.vae, DiffusersVideoVAE)
    assert loaded.vae.config.normalization == "published"
    assert torch.equal(loaded.vae.latent_std, torch.full((8,), 2.0))
    got = loaded.sample_latents(["a red circle"], seed=3, mode="rolling", **SIZE)
    assert torch.equal(got, want)
    with torch.no_grad():
        assert torch.equal(loaded.vae.decode(got), pipe.vae.decode(want))
    # Referenced instead of copied (what training does with task.vae): the check reads the
    # diffusers directory, not our weights file name; other statistics are refused.
    pipe.save_pretrained(tmp_path / "ref", vae_reference=tmp_path / "wan")
    assert not (tmp_path / "ref" / "vae").exists()
    assert torch.equal(VideoPipeline.from_pretrained(tmp_path / "ref").vae.latent_std,
                       torch.full((8,), 2.0))  # fmt: skip
    pipe.vae.set_latent_stats(torch.zeros(8), torch.ones(8))
    with pytest.raises(ValueError, match="does not hold this pipeline's VAE"):
        pipe.save_pretrained(tmp_path / "ref2", vae_reference=tmp_path / "wan")


def test_another_process_is_refused_naming_both(tmp_path) -> None:
    """A flow-matching backbone sampled as DDPM is an error; a different flow shift is not."""
    _pipeline().save_pretrained(tmp_path / "pipe")
    with pytest.raises(ValueError, match=r"trained with process \(name='flow'\).*\(name='ddpm'"):
        VideoPipeline.from_pretrained(tmp_path / "pipe", process=ProcessConfig(name="ddpm"))
    pipe = VideoPipeline.from_pretrained(tmp_path / "pipe", process=ProcessConfig(shift=3.0))
    assert pipe.process.cfg.shift == 3.0
    _pipeline(ProcessConfig(name="ddpm", prediction="v")).save_pretrained(tmp_path / "ddpm")
    with pytest.raises(ValueError, match="prediction='v'.*prediction='epsilon'"):
        VideoPipeline.from_pretrained(tmp_path / "ddpm", process=ProcessConfig(name="ddpm"))


def test_rolling_window_longer_than_the_training_clip_warns(caplog) -> None:
    pipe = _pipeline()
    with caplog.at_level(logging.WARNING, logger="cinemamba_sampling.pipeline"):
        pipe.sample_latents("x", seed=0, mode="rolling", steps=1, **SIZE)
    assert not [r for r in caplog.records if "longer than" in r.getMessage()]
    pipe.config.window = 3
    with caplog.at_level(logging.WARNING, logger="cinemamba_sampling.pipeline"):
        pipe.sample_latents("x", seed=0, mode="rolling", steps=1, **SIZE)
    assert [r for r in caplog.records if "window of 3 latent frames" in r.getMessage()]
