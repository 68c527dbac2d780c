"""VAE training objective: reconstruction + LPIPS + KL, and an optional 3D patch GAN.

Conventions (docs/vae.md): the reconstruction term is the mean over pixels, LPIPS the mean
over the frames it sees, the KL the mean over latent elements; so `kl_weight` is per latent
element relative to a per-pixel reconstruction error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import Tensor, nn

from cinemamba_vae.discriminator import (
    PatchDiscriminator3D,
    adaptive_weight,
    hinge_d_loss,
    hinge_g_loss,
    lecam_loss,
    update_lecam_ema,
)
from cinemamba_vae.model import VAEOutput
from cinemamba_vae.perceptual import LPIPSConfig, build_lpips

RECON_LOSSES = ("l1", "l2")


@dataclass
class DiscriminatorConfig:
    """Optional adversarial term (hinge GAN with a 3D patch discriminator)."""

    enabled: bool = False
    weight: float = 0.5  # generator-side weight, times the adaptive weight
    start_step: int = 2000  # the GAN joins once reconstructions are reasonable
    adaptive_weight: bool = True  # VQGAN gradient-norm balance at the decoder's last layer
    channels: int = 64
    layers: int = 3
    lecam_weight: float = 0.0  # 0 disables LeCam regularisation
    lecam_decay: float = 0.999


@dataclass
class VAELossConfig:
    """All terms of the VAE objective."""

    recon: str = "l1"  # l1 | l2
    kl_weight: float = 1e-6
    lpips: LPIPSConfig = field(default_factory=LPIPSConfig)
    disc: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)


def kl_divergence(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)), averaged over all elements."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def frame_subset(video: Tensor, count: int) -> Tensor:
    """(B, C, T, H, W) -> (B*n, C, H, W) with n <= count evenly spaced frames (first included)."""
    t = video.shape[2]
    idx = torch.linspace(0, t - 1, min(count, t)).round().long().unique()
    return rearrange(video[:, :, idx.to(video.device)], "b c t h w -> (b t) c h w")


class VAELoss(nn.Module):
    """Generator and discriminator losses; holds the frozen LPIPS network if used."""

    def __init__(self, cfg: VAELossConfig) -> None:
        super().__init__()
        if cfg.recon not in RECON_LOSSES:
            raise ValueError(f"unknown loss.recon {cfg.recon!r}; valid: {', '.join(RECON_LOSSES)}")
        self.cfg = cfg
        self.lpips = build_lpips(cfg.lpips) if cfg.lpips.weight > 0 else None

    def gan_active(self, step: int) -> bool:
        """Whether the adversarial terms are on at `step`."""
        return self.cfg.disc.enabled and step >= self.cfg.disc.start_step

    def reconstruction(self, video: Tensor, recon: Tensor) -> Tensor:
        """Mean L1 or L2 error over all pixels."""
        if self.cfg.recon == "l1":
            return (recon - video).abs().mean()
        return (recon - video).pow(2).mean()

    def perceptual(self, video: Tensor, recon: Tensor) -> Tensor:
        """Mean LPIPS over up to `lpips.max_frames` frames per clip."""
        if self.lpips is None:
            raise RuntimeError("LPIPS is disabled (lpips.weight = 0)")
        n = self.cfg.lpips.max_frames
        return self.lpips(frame_subset(recon, n), frame_subset(video, n)).mean()

    def generator_loss(
        self,
        video: Tensor,
        out: VAEOutput,
        *,
        step: int,
        discriminator: PatchDiscriminator3D | None = None,
        last_layer: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Loss for the autoencoder and a dict of its terms (floats, for logging)."""
        cfg = self.cfg
        # Loss terms in fp32 whatever the model's compute dtype (bf16 training).
        video, recon = video.float(), out.reconstruction.float()
        rec = self.reconstruction(video, recon)
        nll = rec
        logs = {"rec": rec.item()}
        if self.lpips is not None:
            p = self.perceptual(video, recon)
            nll = nll + cfg.lpips.weight * p
            logs["lpips"] = p.item()
        kl = kl_divergence(out.mean.float(), out.logvar.float())
        loss = nll + cfg.kl_weight * kl
        logs["kl"] = kl.item()
        if self.gan_active(step):
            if discriminator is None:
                raise ValueError("the GAN is active at this step but no discriminator was given")
            g = hinge_g_loss(_score(discriminator, out.reconstruction))
            weight = torch.ones((), device=video.device)
            if cfg.disc.adaptive_weight and torch.is_grad_enabled():
                if last_layer is None:
                    raise ValueError("disc.adaptive_weight needs the decoder's last layer weight")
                weight = adaptive_weight(nll, g, last_layer)
            loss = loss + cfg.disc.weight * weight * g
            logs["g_adv"] = g.item()
            logs["adaptive_weight"] = weight.item()
        logs["loss"] = loss.item()
        return loss, logs

    def discriminator_loss(
        self, discriminator: PatchDiscriminator3D, video: Tensor, recon: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        """Hinge loss (+ LeCam) for the discriminator; `recon` is detached here."""
        real = _score(discriminator, video)
        fake = _score(discriminator, recon.detach())
        loss = hinge_d_loss(real, fake)
        logs = {"d_hinge": loss.item(), "d_real": real.mean().item(), "d_fake": fake.mean().item()}
        if self.cfg.disc.lecam_weight > 0:
            reg = lecam_loss(real, fake, discriminator.lecam_real, discriminator.lecam_fake)
            loss = loss + self.cfg.disc.lecam_weight * reg
            logs["lecam"] = reg.item()
            update_lecam_ema(discriminator, real, fake, self.cfg.disc.lecam_decay)
        logs["d_loss"] = loss.item()
        return loss, logs


def _score(discriminator: nn.Module, video: Tensor) -> Tensor:
    """fp32 logits of a clip, fed in the discriminator's own dtype."""
    dtype = next(discriminator.parameters()).dtype
    return discriminator(video.to(dtype)).float()


def build_discriminator(cfg: DiscriminatorConfig) -> PatchDiscriminator3D | None:
    """The discriminator a loss config asks for, or None when the GAN is off."""
    return PatchDiscriminator3D(cfg.channels, cfg.layers) if cfg.enabled else None
