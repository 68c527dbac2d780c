"""Shapes, causality, exact chunked inference, save/load and tiling of the video VAE."""

from __future__ import annotations

import itertools

import pytest
import torch

from cinemamba_vae import VAEConfig, VideoAutoencoder, load_vae_config, vae_preset
from cinemamba_vae.tiling import blend_tiles


def small(**kw) -> VideoAutoencoder:
    """A narrow model with the tiny preset's structure (fast enough for many calls)."""
    torch.manual_seed(0)
    cfg = vae_preset("tiny", base_channels=8, norm_groups=4, **kw)
    model = VideoAutoencoder(cfg).eval()
    # Random weights everywhere (no zero-init branches), so every conv's carried frames
    # matter for the exactness and causality checks.
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv3d, torch.nn.Conv2d)):
            m.reset_parameters()
    return model


def video(t: int, hw: int = 16, b: int = 1, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, hw, hw, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def vae() -> VideoAutoencoder:
    return small(mid_attention=True)


def test_presets_and_shapes(vae):
    assert vae.latent_shape(17, 64, 64) == (5, 16, 16)
    assert VideoAutoencoder(vae_preset("tiny")).latent_shape(1, 64, 64) == (1, 16, 16)
    base = vae_preset("base")
    assert (base.temporal_compression, base.spatial_compression, base.latent_channels) == (4, 8, 16)
    with torch.no_grad():
        for t in (1, 5, 9):
            z = vae.encode(video(t), sample=False)
            assert z.shape == (1, 8, *vae.latent_shape(t, 16, 16))
            assert vae.decode(z).shape == (1, 3, t, 16, 16)


@pytest.mark.parametrize("frames", [2, 4, 8, 10])
def test_frame_count_rule(vae, frames):
    with pytest.raises(ValueError, match=r"1 \+ 4\*k"):
        vae.encode(video(frames))


def test_bad_inputs_are_named(vae):
    with pytest.raises(ValueError, match="not divisible by 4"):
        vae.latent_shape(5, 18, 16)
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        vae.encode(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="latents must be"):
        vae.decode(torch.zeros(1, 3, 2, 4, 4))
    with pytest.raises(ValueError, match="chunk_frames"):
        vae.encode(video(5), chunk_frames=0)
    with pytest.raises(ValueError, match="unknown VAE preset 'huge'; valid: base, tiny"):
        vae_preset("huge")
    with pytest.raises(ValueError, match="channel_mults needs 4 entries"):
        VAEConfig(spatial_compression=8, channel_mults=[1, 2]).validate()


@pytest.mark.parametrize(
    "spatial,temporal,patch,mults",
    [
        (4, 4, 1, [1, 2, 2]),
        (8, 2, 1, [1, 1, 2, 2]),
        (4, 8, 1, [1, 1, 2, 2]),
        (8, 1, 2, [1, 1, 2]),
        (16, 4, 4, [1, 2, 2]),
    ],
)
def test_compression_factors(spatial, temporal, patch, mults):
    m = small(
        spatial_compression=spatial,
        temporal_compression=temporal,
        patch_size=patch,
        channel_mults=mults,
    )
    t = 1 + 2 * temporal
    with torch.no_grad():
        z = m.encode(video(t, hw=32), sample=False)
        assert z.shape[2:] == (3, 32 // spatial, 32 // spatial)
        assert m.decode(z).shape == (1, 3, t, 32, 32)
        # exact streaming holds for every factorisation
        assert (m.encode(video(t, hw=32), sample=False, chunk_frames=3) - z).abs().max() <= 1e-5


def test_causality_encoder_and_decoder(vae):
    x = video(13)
    with torch.no_grad():
        z = vae.encode(x, sample=False)
        for t in (0, 4, 8):  # change frames > t: latents of frames <= t must not move
            x2 = x.clone()
            x2[:, :, t + 1 :] = torch.rand_like(x2[:, :, t + 1 :])
            z2 = vae.encode(x2, sample=False)
            keep = t // 4 + 1  # latent j sees frames <= 4j
            torch.testing.assert_close(z2[:, :, :keep], z[:, :, :keep], rtol=0, atol=0)
            assert (z2[:, :, keep:] - z[:, :, keep:]).abs().max() > 1e-4
        # decoder: changing latent j leaves the frames decoded from latents < j unchanged
        z2 = z.clone()
        z2[:, :, 2:] += 1.0
        d, d2 = vae.decode(z), vae.decode(z2)
        torch.testing.assert_close(d2[:, :, :5], d[:, :, :5], rtol=0, atol=0)
        assert (d2[:, :, 5:] - d[:, :, 5:]).abs().max() > 1e-4


def test_image_is_first_frame_of_video(vae):
    x = video(9)
    with torch.no_grad():
        torch.testing.assert_close(
            vae.encode(x[:, :, :1], sample=False), vae.encode(x, sample=False)[:, :, :1]
        )


@pytest.mark.parametrize("k", [1, 3, 4, 6, 17, 40])
def test_chunked_encode_equals_full(vae, k):
    x = video(17, b=2)
    with torch.no_grad():
        full = vae.encode(x, sample=False)
        chunked = vae.encode(x, sample=False, chunk_frames=k)
    assert (chunked - full).abs().max() <= 1e-5


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_chunked_decode_equals_full(vae, k):
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 8, 5, 4, 4, generator=g)
    with torch.no_grad():
        assert (vae.decode(z, chunk_frames=k) - vae.decode(z)).abs().max() <= 1e-5


def test_chunked_sampling_matches_full_with_generator(vae):
    x = video(9)
    with torch.no_grad():
        a = vae.encode(x, generator=torch.Generator().manual_seed(7))
        b = vae.encode(x, chunk_frames=2, generator=torch.Generator().manual_seed(7))
        c = vae.encode(x, generator=torch.Generator().manual_seed(8))
    assert (a - b).abs().max() <= 1e-5
    assert (a - c).abs().max() > 1e-3


def test_temporal_compression_8_chunked():
    m = small(temporal_compression=8, channel_mults=[1, 1, 2, 2])
    x = video(17)
    with torch.no_grad():
        full, z = m.encode(x, sample=False), None
        z = m.encode(x, sample=False, chunk_frames=5)
        assert (z - full).abs().max() <= 1e-5
        assert (m.decode(full, chunk_frames=2) - m.decode(full)).abs().max() <= 1e-5


def test_latent_normalisation_is_owned(vae):
    x = video(5)
    with torch.no_grad():
        raw, _ = vae.encode_moments(x)
        m = small(mid_attention=True)
        m.set_latent_stats(torch.linspace(-1, 1, 8), torch.linspace(0.5, 2, 8))
        z = m.encode(x, sample=False)
        ref = (raw - torch.linspace(-1, 1, 8).view(-1, 1, 1, 1)) / torch.linspace(0.5, 2, 8).view(
            -1, 1, 1, 1
        )
        torch.testing.assert_close(z, ref)
        torch.testing.assert_close(m.decode(z), vae.decode_raw(raw), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="positive"):
        m.set_latent_stats(torch.zeros(8), torch.zeros(8))


def test_initialization_zero_residuals_and_small_posterior_variance():
    vae = VideoAutoencoder(vae_preset("tiny"))
    from cinemamba_vae.layers import ResBlock

    blocks = [m for m in vae.modules() if isinstance(m, ResBlock)]
    assert blocks and all(not b.conv2.conv.weight.any() for b in blocks)
    with torch.no_grad():
        _, logvar = vae.encode_moments(video(5))
    torch.testing.assert_close(logvar, torch.full_like(logvar, -6.0))


def test_save_load_round_trip(tmp_path):
    m = small(mid_attention=True)
    m.set_latent_stats(torch.full((8,), 0.25), torch.full((8,), 3.0))
    m.save_pretrained(tmp_path / "vae")
    assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == [
        "config.yaml",
        "model.safetensors",
    ]
    loaded = VideoAutoencoder.from_pretrained(tmp_path / "vae").eval()
    assert loaded.config == m.config
    for (ka, a), (kb, b) in zip(m.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(a, b)
    x = video(5)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.encode(x, sample=False), m.encode(x, sample=False), rtol=0, atol=0
        )
    assert load_vae_config(tmp_path / "vae" / "config.yaml") == m.config
    with pytest.raises(FileNotFoundError, match="not a saved VideoAutoencoder"):
        VideoAutoencoder.from_pretrained(tmp_path)


def test_blend_tiles_is_partition_of_unity():
    canvas = torch.randn(2, 3, 4, 20, 28, dtype=torch.float64)
    tiles = [
        (top, left, canvas[..., top : top + 12, left : left + 12])
        for top in (0, 8)
        for left in (0, 8, 16)
    ]
    torch.testing.assert_close(blend_tiles(canvas.shape, tiles, overlap=4), canvas)


def test_tiling_single_tile_is_exact_and_multi_tile_runs(vae):
    x = video(5, hw=32)
    with torch.no_grad():
        full = vae.encode(x, sample=False)
        one = vae.encode(x, sample=False, tile_size=32, tile_overlap=8, chunk_frames=2)
        torch.testing.assert_close(one, full, rtol=0, atol=1e-5)
        tiled = vae.encode(x, sample=False, tile_size=16, tile_overlap=8)
        assert tiled.shape == full.shape and torch.isfinite(tiled).all()
        assert vae.decode(full, tile_size=4, tile_overlap=2).shape == x.shape
    with pytest.raises(ValueError, match="multiples of 4"):
        vae.encode(x, tile_size=10)


@pytest.mark.parametrize("sizes", [[17], [1, 4, 4, 8], [5, 7, 3, 2], [16, 3], [5, 7, 6]])
def test_encode_stream_equals_one_shot_encode(sizes):
    """Feeding a video in uneven chunks (as latent export decodes it) gives the one-shot
    `encode(sample=False)` of the frames that complete a latent frame; later ones are dropped."""
    x = video(sum(sizes), b=1, seed=4)
    m = small(mid_attention=True)
    m.set_latent_stats(torch.linspace(-0.5, 0.5, 8), torch.linspace(0.5, 2.0, 8))
    cuts = torch.tensor([0, *sizes]).cumsum(0).tolist()
    with torch.no_grad():
        streamed = torch.cat(
            list(m.encode_stream(x[:, :, a:b] for a, b in itertools.pairwise(cuts))), 2
        )
        kept = 1 + 4 * ((x.shape[2] - 1) // 4)  # 17 -> 17, 18 -> 17
        full = m.encode(x[:, :, :kept], sample=False)
    assert streamed.shape == full.shape
    # same arithmetic per frame, but convs over other lengths may pick other kernels
    tol = 64 * torch.finfo(torch.float32).eps * full.abs().max()
    assert (streamed - full).abs().max() <= tol


def test_encode_stream_names_a_bad_chunk(vae):
    with pytest.raises(ValueError, match="video chunk"), torch.no_grad():
        list(vae.encode_stream([torch.zeros(1, 4, 2, 16, 16)]))
    with pytest.raises(ValueError, match="not divisible"), torch.no_grad():
        list(vae.encode_stream([torch.zeros(1, 3, 2, 15, 16)]))
