"""3D patch discriminator, hinge losses and LeCam regularisation for VAE training.

The discriminator scores overlapping space-time patches (PatchGAN, extended to 3D as in
Open-Sora-Plan / MAGVIT). It is only used in training, so it need not be causal; its
temporal kernel is 3 with padding 1 so a 1-frame clip (an image) is scored too.

The temporal zero padding is applied by `F.pad`, not by the convolution (`TimePaddedConv3d`):
on Intel CPUs with AMX (Sapphire Rapids), PyTorch 2.14's oneDNN bf16 Conv3d returns garbage
(errors up to 1e38, so GroupNorm overflows to NaN) for a 1-frame input padded in time by the
kernel, i.e. for every image batch of bf16 GAN training. The same weights on an explicitly
padded input are correct there, and the result is the same convolution everywhere else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TimePaddedConv3d(nn.Conv3d):
    """`nn.Conv3d` (same parameters and state-dict keys) that zero-pads time with `F.pad`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(self.padding, str) or self.padding_mode != "zeros":
            raise ValueError("TimePaddedConv3d takes integer zero padding")
        self.time_pad = int(self.padding[0])
        # the convolution itself pads only in space: see the module docstring for why
        self.padding = (0, *self.padding[1:])

    def forward(self, x: Tensor) -> Tensor:
        """The convolution of `x` zero-padded by `time_pad` frames on both ends of time."""
        if self.time_pad:
            x = F.pad(x, (0, 0, 0, 0, self.time_pad, self.time_pad))
        return super().forward(x)


class PatchDiscriminator3D(nn.Module):
    """(B, 3, T, H, W) -> patch logits (B, 1, T', H', W')."""

    def __init__(self, channels: int = 64, layers: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = [
            TimePaddedConv3d(in_channels, channels, (3, 4, 4), stride=(2, 2, 2), padding=1),
            nn.LeakyReLU(0.2),
        ]
        ch = channels
        for i in range(1, layers):
            out = channels * min(2**i, 8)
            t_stride = 2 if i == 1 else 1  # two 2x time reductions in all
            blocks += [
                TimePaddedConv3d(
                    ch, out, (3, 4, 4), stride=(t_stride, 2, 2), padding=1, bias=False
                ),
                nn.GroupNorm(min(32, out // 4), out),
                nn.LeakyReLU(0.2),
            ]
            ch = out
        blocks.append(TimePaddedConv3d(ch, 1, (3, 4, 4), stride=1, padding=1))
        self.net = nn.Sequential(*blocks)
        # LeCam anchors: EMAs of the mean logits on real and fake data (Tseng et al. 2021).
        self.register_buffer("lecam_real", torch.zeros(()))
        self.register_buffer("lecam_fake", torch.zeros(()))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DCGAN-style N(0, 0.02) convolution weights, as in PatchGAN."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, video: Tensor) -> Tensor:
        """Patch logits of a clip."""
        return self.net(video)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator hinge loss: E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]."""
    return F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean()


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    """Generator hinge loss: -E[D(G(z))]."""
    return -logits_fake.mean()


def lecam_loss(
    logits_real: Tensor, logits_fake: Tensor, ema_real: Tensor, ema_fake: Tensor
) -> Tensor:
    """LeCam regulariser: E[relu(D(x) - a_fake)^2] + E[relu(a_real - D(G(z)))^2]."""
    return (
        F.relu(logits_real - ema_fake).pow(2).mean() + F.relu(ema_real - logits_fake).pow(2).mean()
    )


@torch.no_grad()
def update_lecam_ema(
    disc: PatchDiscriminator3D, logits_real: Tensor, logits_fake: Tensor, decay: float
) -> None:
    """Move the discriminator's LeCam anchors towards the current mean logits."""
    disc.lecam_real.lerp_(logits_real.mean().to(disc.lecam_real), 1.0 - decay)
    disc.lecam_fake.lerp_(logits_fake.mean().to(disc.lecam_fake), 1.0 - decay)


def adaptive_weight(
    nll_loss: Tensor, g_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4
) -> Tensor:
    """VQGAN's balance: ||grad_L nll|| / (||grad_L g|| + 1e-4) at the decoder's last layer."""
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = nll_grad.norm() / (g_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()
