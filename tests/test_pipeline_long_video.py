"""VideoPipeline with the real tiny VAE, VideoDiT and CLIP text tower (random init): frame
counts at 8x the training clip, determinism, streaming == causal reference, bounded memory."""

from __future__ import annotations

import pytest
import torch

from cinemamba_backbone import BackboneConfig, VideoDiT
from cinemamba_conditioning import TextEncoderConfig, build_text_encoder
from cinemamba_sampling import (
    DDPM,
    FlowMatching,
    PipelineConfig,
    ProcessConfig,
    VideoPipeline,
    WithContext,
    guided,
    peak_memory,
    stream_chunks,
)
from cinemamba_vae import VideoAutoencoder, vae_preset

CLIP = 4  # latent frames per training clip (13 pixel frames): the rolling window
SIZE = dict(height=16, width=16)
PROMPTS = ["a red circle moving left over a striped background"]


def _frames(latent_frames: int) -> int:
    return 1 + 4 * (latent_frames - 1)


@pytest.fixture(scope="module")
def parts():
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        vae = VideoAutoencoder(vae_preset("tiny")).eval()
        text = build_text_encoder(TextEncoderConfig(random_init_seed=0))
        nets = {
            mixer: VideoDiT(
                BackboneConfig.from_preset("tiny", in_channels=8, text_dim=text.dim, mixer=mixer)
            ).eval()
            for mixer in ("bimamba", "mamba", "full3d_causal")
        }
        # adaLN-zero makes a fresh DiT output exactly 0; perturb so outputs depend on inputs.
        for net in nets.values():
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return vae, text, nets


def _pipe(parts, mixer="bimamba", process=None, **cfg):
    vae, text, nets = parts
    config = PipelineConfig(
        window=CLIP, context=1, chunk=2, decode_chunk_frames=8, progress=False, **cfg
    )
    return VideoPipeline(vae, nets[mixer], text, process or FlowMatching(), config)


@pytest.mark.parametrize(
    "mode,mixer",
    [
        ("oneshot", "bimamba"),
        ("rolling", "bimamba"),
        ("streaming", "mamba"),
        ("streaming", "full3d_causal"),  # KV cache of past frames in every block
    ],
)
def test_modes_make_8x_the_training_clip(parts, mode, mixer):
    pipe = _pipe(parts, mixer)
    frames = _frames(8 * CLIP) - 2  # 123: not of the form 1 + 4k, decoded to 125 and trimmed
    video = pipe.generate(PROMPTS, frames=frames, steps=1, guidance=1.0, seed=0, mode=mode, **SIZE)
    assert video.shape == (1, 3, frames, 16, 16)
    assert torch.isfinite(video).all() and video.abs().max() <= 1


def test_deterministic_per_seed_with_ddpm_and_cfg(parts):
    proc = DDPM(ProcessConfig(name="ddpm", prediction="v", zero_terminal_snr=True))
    pipe = _pipe(parts, process=proc, solver="ddim", eta=1.0)
    run = dict(
        frames=_frames(5), steps=2, guidance=4.0, mode="rolling", negative_prompt="blurry", **SIZE
    )
    a = pipe.sample_latents(PROMPTS * 2, seed=3, **run)
    b = pipe.sample_latents(PROMPTS * 2, seed=3, **run)
    c = pipe.sample_latents(PROMPTS * 2, seed=4, **run)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.isfinite(a).all()


def test_streaming_equals_full_context_reference(parts):
    """Carrying the causal state equals re-running the full causal forward over every clean
    frame so far (at t = 0) for each chunk, with the same noise."""
    pipe = _pipe(parts, "mamba")
    frames, steps, guidance, seed = _frames(5), 2, 3.0, 5
    got = pipe.sample_latents(
        PROMPTS, frames=frames, steps=steps, guidance=guidance, seed=seed, mode="streaming", **SIZE
    )

    t_lat, h, w, _ = pipe.latent_size(frames, **SIZE)
    cond, uncond = pipe.embed(PROMPTS, guidance)
    model = guided(pipe.backbone, cond, uncond, guidance)
    gen = torch.Generator().manual_seed(seed)
    ts = pipe.process.timesteps(steps, num_tokens=2 * h * w)
    ref = torch.zeros_like(got)
    with torch.no_grad():
        for s, e in stream_chunks(t_lat, 2):
            noise = torch.randn((1, 8, e - s, h, w), generator=gen)
            ref[:, :, s:e] = pipe.solver(
                WithContext(model, ref[:, :, :s]), noise, ts, process=pipe.process, generator=gen
            )
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_peak_memory_bounded_as_frames_grow(parts):
    """Peak tensor memory at 4 and 12 latent frames: rolling and streaming grow only by the
    extra latents they return; oneshot (for contrast) grows with the video."""

    def peak(mode, mixer, latent_frames):
        pipe = _pipe(parts, mixer)
        run = dict(frames=_frames(latent_frames), steps=1, guidance=1.0, seed=0, mode=mode, **SIZE)
        lat, bytes_ = peak_memory(lambda: pipe.sample_latents(PROMPTS, **run))
        return bytes_, lat.numel() * lat.element_size()

    for mode, mixer in (("rolling", "bimamba"), ("streaming", "mamba")):
        (short, lat_short), (long, lat_long) = peak(mode, mixer, 4), peak(mode, mixer, 12)
        assert long - short <= (lat_long - lat_short) + 16 * 1024, (mode, short, long)
    (one_short, _), (one_long, _) = peak("oneshot", "bimamba", 4), peak("oneshot", "bimamba", 12)
    assert one_long - one_short > 10 * (lat_long - lat_short)  # the measurement sees growth
