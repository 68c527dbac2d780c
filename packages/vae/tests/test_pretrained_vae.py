"""Diffusers video VAEs behind our seam: tiny random-init Wan, CogVideoX, HunyuanVideo and
LTX-Video models, saved to a temp dir, loaded through `load_vae`, compared against diffusers'
own calls."""

from __future__ import annotations

import builtins
import itertools
import json

import pytest
import torch

from cinemamba_vae import DiffusersVideoVAE, VideoAutoencoder, load_vae, vae_identity, vae_preset
from cinemamba_vae.pretrained import STATS_NAME

diffusers = pytest.importorskip("diffusers")

WAN_MEAN = [0.1, 0.2, -0.1, 0.0]
WAN_STD = [1.5, 2.0, 0.5, 1.0]


def tiny_wan(seed: int = 0):
    torch.manual_seed(seed)
    return diffusers.AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
        temperal_downsample=[False, True, True], latents_mean=WAN_MEAN, latents_std=WAN_STD,
    ).eval()  # fmt: skip


def tiny_cogvideox(seed: int = 0):
    torch.manual_seed(seed)
    return diffusers.AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 16, 16), latent_channels=4, layers_per_block=1,
        norm_num_groups=4, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, scaling_factor=0.5,
    ).eval()  # fmt: skip


def tiny_hunyuan(seed: int = 0):
    torch.manual_seed(seed)
    return diffusers.AutoencoderKLHunyuanVideo(
        block_out_channels=(8, 8, 16, 16), latent_channels=4, layers_per_block=1,
        norm_num_groups=4, scaling_factor=0.5,
    ).eval()  # fmt: skip


def tiny_ltx(seed: int = 0):
    torch.manual_seed(seed)
    return diffusers.AutoencoderKLLTXVideo(
        block_out_channels=(8, 8, 16, 16), decoder_block_out_channels=(8, 8, 16, 16),
        latent_channels=4, layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False),
        decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4,
        upsample_factor=(1,) * 4, scaling_factor=2.0,
    ).eval()  # fmt: skip


# name: (builder, a valid frame count, frame size, (mean, std) its pipelines normalise with)
MODELS = {
    "wan": (tiny_wan, 9, 16, (WAN_MEAN, WAN_STD)),
    "cogvideox": (tiny_cogvideox, 17, 16, ([0.0] * 4, [1 / 0.5] * 4)),
    "hunyuan": (tiny_hunyuan, 9, 16, ([0.0] * 4, [1 / 0.5] * 4)),
    "ltx": (tiny_ltx, 9, 32, ([0.0] * 4, [1 / 2.0] * 4)),
}
STREAMING = ("wan", "cogvideox")  # native streaming: chunk_frames cannot change the result


@pytest.fixture(params=sorted(MODELS))
def saved(request, tmp_path):
    """(name, diffusers model, its save_pretrained dir, a valid frame count, frame size)."""
    build, frames, size, _ = MODELS[request.param]
    model = build()
    model.save_pretrained(tmp_path / request.param)
    return request.param, model, tmp_path / request.param, frames, size


def video(frames: int, size: int = 16, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, size, size, generator=gen) * 2 - 1


@torch.no_grad()
def test_encode_decode_equal_diffusers(saved):
    name, model, path, frames, size = saved
    vae = load_vae(path)
    assert isinstance(vae, DiffusersVideoVAE)
    x = video(frames, size)
    dist = model.encode(x).latent_dist
    # published normalisation, written out here independently of the wrapper
    mean, std = (torch.tensor(v) for v in MODELS[name][3])
    expect = (dist.mean - mean.view(-1, 1, 1, 1)) / std.view(-1, 1, 1, 1)
    z = vae.encode(x, sample=False)
    assert vae.config.normalization == "published"
    # same computation (same diffusers calls), then one affine map: float rounding only
    torch.testing.assert_close(z, expect, rtol=0, atol=8 * torch.finfo(z.dtype).eps)
    assert tuple(z.shape[2:]) == vae.latent_shape(frames, size, size)
    out = vae.decode(z)
    ref = model.decode(dist.mean).sample
    assert out.shape == x.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_chunk_frames(saved):
    """Wan / CogVideoX: chunk_frames changes nothing (same computation, bit-equal).
    HunyuanVideo / LTX: chunk_frames is the model's own temporal tiling: equal to diffusers'
    call with framewise tiling on, and a different (approximate) result from the full call."""
    name, model, path, frames, size = saved
    vae = load_vae(path)
    x = video(2 * frames - 1 if name in STREAMING else 33, size)  # > 16: tiling engages
    full = vae.encode(x, sample=False)
    chunked = vae.encode(x, sample=False, chunk_frames=4)
    assert chunked.shape == full.shape
    if name in STREAMING:
        assert torch.equal(chunked, full)
        assert torch.equal(vae.decode(full, chunk_frames=1), vae.decode(full))
    else:
        model.use_framewise_encoding = model.use_framewise_decoding = True
        tiled = vae.normalize(model.encode(x).latent_dist.mean)
        assert torch.equal(chunked, tiled)
        assert not torch.equal(chunked, full)
        assert vae.decode(full, chunk_frames=1).shape == x.shape
        assert torch.equal(vae.encode(x, sample=False), full)  # tiling off again
    with pytest.raises(ValueError, match="chunk_frames"):
        vae.encode(x, chunk_frames=0)


@torch.no_grad()
def test_encode_stream_equals_diffusers_one_call(saved):
    """Uneven pixel chunks (as whole-video export feeds them) give diffusers' own `encode` of
    the whole video's longest `1 + frame_step*k` prefix, normalised as its pipelines do. Wan
    streams through its feature cache (one group at a time); the others encode in one call."""
    name, model, path, _, size = saved
    vae = load_vae(path)
    x = video(23, size, seed=2)
    cuts = [0, 3, 8, 10, 17, 21, 23]  # chunks of 3, 5, 2, 7, 4, 2 frames
    streamed = torch.cat(
        list(vae.encode_stream(x[:, :, a:b] for a, b in itertools.pairwise(cuts))), dim=2
    )
    step = 8 if name in ("cogvideox", "ltx") else 4
    kept = 1 + step * ((23 - 1) // step)  # 21 or 17
    model.use_framewise_encoding = False  # HunyuanVideo's default tiles: the full call
    dist = model.encode(x[:, :, :kept]).latent_dist
    mean, std = (torch.tensor(v) for v in MODELS[name][3])
    expect = (dist.mean - mean.view(-1, 1, 1, 1)) / std.view(-1, 1, 1, 1)
    assert streamed.shape == expect.shape
    tol = 64 * torch.finfo(torch.float32).eps * expect.abs().max()
    assert (streamed - expect).abs().max() <= tol
    if name == "wan":  # the cache is cleared after a stream: a plain encode is unaffected
        assert torch.equal(vae.encode(x[:, :, :kept], sample=False), vae.encode(
            x[:, :, :kept], sample=False))  # fmt: skip


@torch.no_grad()
def test_wan_encode_is_causal(tmp_path):
    """Wan's cached encode is causal: latents of a prefix equal the prefix of the latents."""
    tiny_wan().save_pretrained(tmp_path)
    vae = load_vae(tmp_path)
    x = video(17)
    full = vae.encode(x, sample=False)
    head = vae.encode(x[:, :, :9], sample=False)
    torch.testing.assert_close(head, full[:, :, :3], rtol=0, atol=1e-6)


def test_latent_shape_rules(saved):
    name, _, path, frames, size = saved
    vae = load_vae(path)
    # the tiny configs: 3 spatial downsamples, 2 temporal; LTX adds its 4x4 patch (32 = 4 * 8)
    # and downsamples time 3 times (8)
    want = {"ltx": (32, 8)}.get(name, (8, 4))
    assert (vae.config.spatial_compression, vae.config.temporal_compression) == want
    assert vae.config.latent_channels == 4
    with pytest.raises(ValueError, match="needs 1 \\+"):
        vae.latent_shape(frames + 1, size, size)
    with pytest.raises(ValueError, match="divisible"):
        vae.latent_shape(frames, size + 4, size)
    with pytest.raises(ValueError, match="latents must be"):
        vae.decode(torch.zeros(1, 3, 3, 2, 2))


def test_cogvideox_refuses_lengths_it_cannot_round_trip(tmp_path):
    """1 + 4k frames with odd k decode to the wrong length in CogVideoX (measured): refused."""
    tiny_cogvideox().save_pretrained(tmp_path)
    vae = load_vae(tmp_path)
    with pytest.raises(ValueError, match="1 \\+ 8\\*k"):
        vae.encode(video(13))
    with pytest.raises(ValueError, match="odd number"):
        vae.decode(torch.zeros(1, 4, 4, 2, 2))


def test_identity_names_class_weights_and_stats(tmp_path):
    tiny_wan(0).save_pretrained(tmp_path / "a")
    tiny_wan(1).save_pretrained(tmp_path / "b")
    tiny_cogvideox().save_pretrained(tmp_path / "c")
    ids = [vae_identity(tmp_path / n) for n in "abc"]
    assert len(set(ids)) == 3
    assert ids[0].startswith("diffusers/AutoencoderKLWan/")
    assert vae_identity(tmp_path / "a") == ids[0]  # deterministic
    # measured statistics (vae-stats) change the normalisation, hence the identity
    vae = load_vae(tmp_path / "a")
    vae.set_latent_stats(torch.zeros(4), torch.full((4,), 3.0))
    vae.save_pretrained(tmp_path / "a")
    assert vae_identity(tmp_path / "a") != ids[0]
    again = load_vae(tmp_path / "a")
    assert again.config.normalization == "measured"
    assert torch.equal(again.latent_std, torch.full((4,), 3.0))
    assert json.loads((tmp_path / "a" / STATS_NAME).read_text())["std"] == [3.0] * 4


def test_load_vae_still_loads_our_own(tmp_path):
    own = VideoAutoencoder(vae_preset("tiny"))
    own.save_pretrained(tmp_path)
    assert isinstance(load_vae(tmp_path), VideoAutoencoder)


def test_missing_or_foreign_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_vae(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="neither"):
        load_vae(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(ValueError, match="AutoencoderKLWan"):
        load_vae(tmp_path)


def test_missing_diffusers_names_the_extra(tmp_path, monkeypatch):
    tiny_wan().save_pretrained(tmp_path)
    real_import = builtins.__import__

    def no_diffusers(name, *args, **kwargs):
        if name == "diffusers" or name.startswith("diffusers."):
            raise ImportError("No module named 'diffusers'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_diffusers)
    with pytest.raises(ImportError, match=r"cinemamba-vae\[diffusers\]"):
        load_vae(tmp_path)


def test_bad_statistics_file_is_named(tmp_path):
    tiny_wan().save_pretrained(tmp_path)
    (tmp_path / STATS_NAME).write_text(json.dumps({"mean": [0.0] * 3, "std": [1.0] * 3}))
    with pytest.raises(ValueError, match=f"{STATS_NAME}.*shape \\(4,\\)"):
        load_vae(tmp_path)
    (tmp_path / STATS_NAME).write_text("{not json")
    with pytest.raises(ValueError, match=f"{STATS_NAME} is not a statistics file"):
        load_vae(tmp_path)
