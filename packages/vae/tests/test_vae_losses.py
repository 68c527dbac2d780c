"""Loss terms, GAN pieces, LPIPS construction and metrics against hand computations."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torchvision
from scipy.ndimage import gaussian_filter

from cinemamba_vae import VideoAutoencoder, vae_preset
from cinemamba_vae.discriminator import (
    PatchDiscriminator3D,
    adaptive_weight,
    hinge_d_loss,
    hinge_g_loss,
    lecam_loss,
    update_lecam_ema,
)
from cinemamba_vae.losses import (
    DiscriminatorConfig,
    VAELoss,
    VAELossConfig,
    build_discriminator,
    frame_subset,
    kl_divergence,
)
from cinemamba_vae.metrics import frames_psnr, frames_ssim
from cinemamba_vae.model import VAEOutput
from cinemamba_vae.perceptual import LPIPSConfig, LPIPSWeightsError, build_lpips


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to fetch weights fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr("urllib.request.urlopen", refuse)


def test_kl_against_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(2, 4, 3, 5, 5, generator=g, dtype=torch.float64)
    logvar = torch.randn(2, 4, 3, 5, 5, generator=g, dtype=torch.float64)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    ref = torch.distributions.kl_divergence(q, p).mean()
    torch.testing.assert_close(kl_divergence(mean, logvar), ref)
    assert kl_divergence(torch.zeros(3), torch.zeros(3)).item() == 0.0


def test_hinge_and_lecam_by_hand():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    # real: relu(1-2)=0, relu(0.5)=0.5 -> 0.25; fake: relu(-1)=0, relu(1.5)=1.5 -> 0.75
    assert hinge_d_loss(real, fake).item() == pytest.approx(1.0)
    assert hinge_g_loss(fake).item() == pytest.approx(0.75)
    # a_real=0.25, a_fake=1.0: relu(real-1)^2 = [1, 0] -> 0.5; relu(0.25-fake)^2 = [5.0625, 0] -> 2.53125
    val = lecam_loss(real, fake, torch.tensor(0.25), torch.tensor(1.0))
    assert val.item() == pytest.approx(0.5 + 2.53125)
    d = PatchDiscriminator3D(channels=8, layers=2)
    update_lecam_ema(d, real, fake, decay=0.9)
    assert d.lecam_real.item() == pytest.approx(0.1 * 1.25)
    assert d.lecam_fake.item() == pytest.approx(0.1 * -0.75)


def test_adaptive_weight_by_hand():
    w = torch.nn.Parameter(torch.ones(3))
    a, b = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([0.0, 1.0, 0.0])
    weight = adaptive_weight((w * a).sum(), (w * b).sum(), w)
    assert weight.item() == pytest.approx(5.0 / (1.0 + 1e-4))
    assert not weight.requires_grad


def test_discriminator_scores_images_and_clips():
    d = PatchDiscriminator3D(channels=8, layers=3)
    for t in (1, 9):
        logits = d(torch.zeros(2, 3, t, 32, 32))
        assert logits.shape[:2] == (2, 1) and logits.numel() > 2


def _stock_float64_copy(d: PatchDiscriminator3D) -> torch.nn.Module:
    """The same network with stock `nn.Conv3d` (padding in the kernel), in float64."""
    import copy

    ref = copy.deepcopy(d).double()
    for i, m in enumerate(ref.net):
        if isinstance(m, torch.nn.Conv3d):
            conv = torch.nn.Conv3d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride,
                                   padding=1, bias=m.bias is not None, dtype=torch.float64)  # fmt: skip
            conv.load_state_dict(m.state_dict())
            ref.net[i] = conv
    return ref


@pytest.mark.parametrize("frames", [1, 2, 9])
def test_discriminator_under_bf16_matches_a_float64_reference(frames):
    """bf16 logits of images and clips within bf16 rounding of a float64 stock-Conv3d network.

    Guards the explicit time padding: with it in the kernel, oneDNN's AMX bf16 Conv3d (Intel
    Sapphire Rapids) returns values up to 1e38 for 1-frame inputs, and image batches of bf16
    GAN training had a NaN discriminator loss.
    """
    torch.manual_seed(0)
    d = PatchDiscriminator3D(channels=8, layers=3).bfloat16()
    ref = _stock_float64_copy(d)
    x = (torch.rand(2, 3, frames, 32, 32) * 2 - 1).bfloat16()
    with torch.no_grad():
        got = d(x).double()
        want = ref(x.double())
    assert got.shape == want.shape
    # a few bf16 roundings per layer, relative to the logits' scale (GroupNorm makes it O(1))
    tol = 4 * torch.finfo(torch.bfloat16).eps * want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=0, atol=tol)


def make_output(video: torch.Tensor, seed: int = 0) -> VAEOutput:
    g = torch.Generator().manual_seed(seed)
    recon = (video + 0.3 * torch.randn(video.shape, generator=g)).requires_grad_()
    mean = torch.randn(1, 4, 3, 4, 4, generator=g).requires_grad_()
    logvar = torch.randn(1, 4, 3, 4, 4, generator=g).requires_grad_()
    return VAEOutput(recon, mean, logvar, mean)


@pytest.mark.parametrize("recon", ["l1", "l2"])
def test_generator_loss_sums_its_terms(recon, no_network):
    video = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    out = make_output(video)
    cfg = VAELossConfig(
        recon=recon, kl_weight=0.01, lpips=LPIPSConfig(weight=0.5, random_backbone=True)
    )
    loss_fn = VAELoss(cfg)
    loss, logs = loss_fn.generator_loss(video, out, step=0)
    diff = (out.reconstruction - video).detach()
    rec = diff.abs().mean() if recon == "l1" else diff.pow(2).mean()
    assert logs["rec"] == pytest.approx(rec.item(), rel=1e-6)
    p = loss_fn.lpips(frame_subset(out.reconstruction, 4), frame_subset(video, 4)).mean()
    kl = 0.5 * (out.mean**2 + out.logvar.exp() - 1 - out.logvar).mean()
    assert loss.item() == pytest.approx((rec + 0.5 * p + 0.01 * kl).item(), rel=1e-5)
    assert "g_adv" not in logs


def test_frame_subset_picks_first_and_last():
    v = torch.arange(9.0).view(1, 1, 9, 1, 1).expand(2, 3, 9, 2, 2)
    picked = frame_subset(v, 3)  # frames 0, 4, 8 of each clip
    assert picked.shape == (6, 3, 2, 2)
    assert picked[:3, 0, 0, 0].tolist() == [0.0, 4.0, 8.0]


def test_gan_terms_switch_on_at_start_step():
    torch.manual_seed(0)
    vae = VideoAutoencoder(vae_preset("tiny", base_channels=8, norm_groups=4))
    cfg = VAELossConfig(
        lpips=LPIPSConfig(weight=0.0),
        disc=DiscriminatorConfig(
            enabled=True, start_step=5, channels=8, layers=2, lecam_weight=0.1
        ),
    )
    loss_fn, disc = VAELoss(cfg), build_discriminator(cfg.disc)
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    out = vae(video)
    _, before = loss_fn.generator_loss(video, out, step=4, discriminator=disc)
    assert "g_adv" not in before
    loss, after = loss_fn.generator_loss(
        video, out, step=5, discriminator=disc, last_layer=vae.last_layer_weight
    )
    assert after["adaptive_weight"] > 0
    expect = after["rec"] + 1e-6 * after["kl"] + 0.5 * after["adaptive_weight"] * after["g_adv"]
    assert loss.item() == pytest.approx(expect, rel=1e-5)
    d_loss, d_logs = loss_fn.discriminator_loss(disc, video, out.reconstruction)
    assert d_logs["d_loss"] == pytest.approx(d_logs["d_hinge"] + 0.1 * d_logs["lecam"], rel=1e-6)
    d_loss.backward()
    assert all(p.grad is not None for p in disc.parameters())
    assert disc.lecam_real.item() != 0.0
    with pytest.raises(ValueError, match="no discriminator"):
        loss_fn.generator_loss(video, out, step=5)


def test_lpips_without_weights_fails_clearly(no_network):
    with pytest.raises(LPIPSWeightsError, match=r"lpips\.backbone_weights.*random_backbone=true"):
        build_lpips(LPIPSConfig())
    with pytest.raises(LPIPSWeightsError, match="does not exist"):
        build_lpips(LPIPSConfig(backbone_weights="/nonexistent/alexnet.pth"))
    with pytest.raises(LPIPSWeightsError, match="backbone_weights"):
        VAELoss(VAELossConfig(lpips=LPIPSConfig(weight=0.1)))
    assert VAELoss(VAELossConfig(lpips=LPIPSConfig(weight=0.0))).lpips is None


def test_lpips_random_backbone_is_offline_and_logged(no_network, caplog):
    with caplog.at_level(logging.WARNING):
        model = build_lpips(LPIPSConfig(random_backbone=True))
    assert "RANDOM alex backbone" in caplog.text
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert model(x, x).abs().max().item() == 0.0
    assert (model(x, -x) > 0).all()
    assert not any(p.requires_grad for p in model.parameters())


def test_lpips_loads_local_torchvision_backbone(tmp_path, no_network):
    torch.manual_seed(1)
    tv = torchvision.models.alexnet(weights=None)
    # the backbone part of a torchvision checkpoint (the classifier is ignored anyway, and
    # would make this file 240 MB)
    features = {k: v for k, v in tv.state_dict().items() if k.startswith("features.")}
    torch.save(features, tmp_path / "alexnet.pth")
    model = build_lpips(LPIPSConfig(backbone_weights=str(tmp_path / "alexnet.pth")))
    for idx in (0, 3, 6, 8, 10):
        slice_ = next(m for m in model.net.children() if str(idx) in m._modules)
        assert torch.equal(slice_._modules[str(idx)].weight, tv.features[idx].weight)
    torch.save({"classifier.1.weight": torch.zeros(2)}, tmp_path / "bad.pth")
    with pytest.raises(LPIPSWeightsError, match="not a torchvision alex checkpoint"):
        build_lpips(LPIPSConfig(backbone_weights=str(tmp_path / "bad.pth")))


def test_psnr_closed_form():
    video = torch.rand(2, 3, 4, 16, 16) * 1.6 - 0.8
    recon = video + 0.1  # 0.05 on the [0, 1] scale: MSE 0.0025
    expect = 10 * math.log10(1 / 0.0025)
    torch.testing.assert_close(frames_psnr(video, recon), torch.full((2, 4), expect))


def test_ssim_against_scipy_reference():
    g = torch.Generator().manual_seed(0)
    video = torch.rand(1, 3, 2, 24, 24, generator=g) * 2 - 1
    recon = (video + 0.2 * torch.randn(video.shape, generator=g)).clamp(-1, 1)
    ours = frames_ssim(video, recon)
    torch.testing.assert_close(frames_ssim(video, video), torch.ones(1, 2))

    def ssim_ref(a: np.ndarray, b: np.ndarray) -> float:
        f = lambda z: gaussian_filter(z, 1.5, truncate=3.5)[5:-5, 5:-5]  # noqa: E731
        a, b = a.astype(np.float64), b.astype(np.float64)
        ma, mb = f(a), f(b)
        va, vb, cov = f(a * a) - ma**2, f(b * b) - mb**2, f(a * b) - ma * mb
        c1, c2 = 0.01**2, 0.03**2
        s = (2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
        return float(s.mean())

    x, y = ((video + 1) / 2).numpy(), ((recon + 1) / 2).numpy()
    for t in range(2):
        ref = np.mean([ssim_ref(x[0, c, t], y[0, c, t]) for c in range(3)])
        assert ours[0, t].item() == pytest.approx(ref, abs=1e-5)


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    vae = VideoAutoencoder(vae_preset("tiny", base_channels=8, norm_groups=4))
    loss_fn = VAELoss(VAELossConfig(lpips=LPIPSConfig(weight=0.0)))
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    grid = torch.linspace(-1, 1, 16)
    video = torch.stack(
        [(grid[None, :] * math.cos(t / 3) + grid[:, None] * math.sin(t / 3)) for t in range(5)]
    )[None, None].expand(2, 3, 5, 16, 16) * torch.tensor([1.0, -0.5, 0.3]).view(1, 3, 1, 1, 1)
    losses = []
    for step in range(15):
        loss, _ = loss_fn.generator_loss(video, vae(video), step=step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3])
