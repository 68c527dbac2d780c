"""Noise processes: one object serves training (`sample_t`, `add_noise`, `target`, `loss_weight`)
and sampling (`timesteps`, `predict`).

Both processes are Gaussian paths x_t = alpha(t) x0 + sigma(t) eps with diffusion time t in
[0, 1]: t = 0 is clean data, t = 1 is (almost) pure noise. `t` has shape `(B,)` (one level per
video) or `(B, T)` (one level per latent frame, for rolling and streaming generation); it
broadcasts over latents `(B, C, T, h, w)`.

- `FlowMatching` (default): alpha = 1 - t, sigma = t, the network predicts the velocity
  eps - x0 (rectified flow; Liu et al. 2022, Esser et al. 2024). Training times are logit-normal;
  a timestep shift t' = s t / (1 + (s - 1) t) with s growing as sqrt(num_tokens / base) spends
  more steps at high noise for bigger/longer videos (SD3, Open-Sora 1.2, Wan).
- `DDPM` (the seed paper's process; Ho et al. 2020): N discrete steps, t = i / N, linear or
  cosine betas, optional zero-terminal SNR (Lin et al. 2024), epsilon- or v-prediction.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ProcessConfig:
    """Which noise process, and its settings (fields of the other process are ignored).

    name: "flow" or "ddpm".
    Flow: `t_sampling` "logit_normal" | "uniform", `logit_mean`, `logit_std`; `shift` is the
        timestep shift at `shift_base_tokens` latent positions (t*h*w), growing with
        sqrt(num_tokens / shift_base_tokens) up to `max_shift`; `shift_base_tokens: 0` keeps a
        constant shift.
    DDPM: `num_steps`, `beta_schedule` "linear" | "cosine", `beta_start`/`beta_end` (linear),
        `zero_terminal_snr`, `prediction` "epsilon" | "v", `loss_weighting` "uniform" | "min_snr"
        (`min_snr_gamma`).
    """

    name: str = "flow"
    t_sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0
    shift_base_tokens: int = 4096
    max_shift: float = 8.0
    num_steps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    zero_terminal_snr: bool = False
    prediction: str = "epsilon"
    loss_weighting: str = "uniform"
    min_snr_gamma: float = 5.0


def expand_t(t: Tensor, x: Tensor) -> Tensor:
    """Broadcast `t` `(B,)` or `(B, T)` against latents `x` `(B, C, T, h, w)` (or any `(B, ...)`)."""
    if t.ndim in (1, 2) and t.shape[0] != x.shape[0]:
        raise ValueError(f"t has batch {t.shape[0]} but x has batch {x.shape[0]}")
    if t.ndim == 1:
        return t.reshape(t.shape[0], *([1] * (x.ndim - 1)))
    if t.ndim == 2:
        if x.ndim != 5 or x.shape[2] != t.shape[1]:
            raise ValueError(
                f"per-frame t {tuple(t.shape)} needs latents (B, C, {t.shape[1]}, h, w), got {tuple(x.shape)}"
            )
        return t[:, None, :, None, None]
    raise ValueError(f"t must be (B,) or (B, T), got shape {tuple(t.shape)}")


class NoiseProcess(ABC):
    """A Gaussian path x_t = alpha(t) x0 + sigma(t) eps and the network's target on it."""

    #: What the network predicts: "velocity" (flow), "epsilon" or "v" (DDPM).
    prediction: str

    @abstractmethod
    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Signal and noise scales at time `t` (same shape as `t`)."""

    @abstractmethod
    def sample_t(
        self,
        batch: int,
        frames: int | None = None,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        num_tokens: int | None = None,
    ) -> Tensor:
        """Training times: `(batch,)`, or `(batch, frames)` independent per-frame levels."""

    @abstractmethod
    def timesteps(
        self, steps: int, *, num_tokens: int | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """Sampling grid `(steps + 1,)` float64, from the noisiest time down to exactly 0."""

    @abstractmethod
    def loss_weight(self, t: Tensor) -> Tensor:
        """Per-sample (or per-frame) weight of the squared error at time `t`."""

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = alpha(t) x0 + sigma(t) noise."""
        alpha, sigma = self.alpha_sigma(t)
        return expand_t(alpha, x0).to(x0.dtype) * x0 + expand_t(sigma, x0).to(x0.dtype) * noise

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the network should output for `add_noise(x0, noise, t)`."""
        alpha, sigma = (expand_t(s, x0).to(x0.dtype) for s in self.alpha_sigma(t))
        if self.prediction == "velocity":
            return noise - x0
        if self.prediction == "epsilon":
            return noise
        if self.prediction == "v":
            return alpha * noise - sigma * x0
        raise ValueError(f"unknown prediction {self.prediction!r}")

    def predict(self, output: Tensor, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Turn a network output at `(x, t)` into the implied clean sample and noise `(x0, eps)`."""
        alpha, sigma = (expand_t(s, x).to(x.dtype) for s in self.alpha_sigma(t))
        if self.prediction == "velocity":  # v = eps - x0, x = (1 - t) x0 + t eps
            return x - sigma * output, x + alpha * output
        if self.prediction == "epsilon":
            return (x - sigma * output) / alpha, output
        if self.prediction == "v":  # v = alpha eps - sigma x0 with alpha^2 + sigma^2 = 1
            return alpha * x - sigma * output, sigma * x + alpha * output
        raise ValueError(f"unknown prediction {self.prediction!r}")


def _shape(batch: int, frames: int | None) -> tuple[int, ...]:
    if batch < 1 or (frames is not None and frames < 1):
        raise ValueError(
            f"sample_t needs batch >= 1 and frames >= 1, got batch={batch}, frames={frames}"
        )
    return (batch,) if frames is None else (batch, frames)


class FlowMatching(NoiseProcess):
    """Rectified flow: x_t = (1 - t) x0 + t eps, target velocity eps - x0."""

    prediction = "velocity"

    def __init__(self, cfg: ProcessConfig | None = None) -> None:
        cfg = cfg or ProcessConfig()
        if cfg.t_sampling not in ("logit_normal", "uniform"):
            raise ValueError(
                f"ProcessConfig.t_sampling must be 'logit_normal' or 'uniform', got {cfg.t_sampling!r}"
            )
        if cfg.shift <= 0 or cfg.max_shift <= 0:
            raise ValueError(
                f"ProcessConfig.shift and max_shift must be > 0, got {cfg.shift}, {cfg.max_shift}"
            )
        self.cfg = cfg

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """alpha = 1 - t, sigma = t."""
        return 1 - t, t

    def shift_for(self, num_tokens: int | None) -> float:
        """The timestep shift for a video of `num_tokens` latent positions (t*h*w)."""
        cfg = self.cfg
        if num_tokens is None or cfg.shift_base_tokens <= 0:
            return cfg.shift
        return min(cfg.shift * math.sqrt(num_tokens / cfg.shift_base_tokens), cfg.max_shift)

    @staticmethod
    def apply_shift(t: Tensor, shift: float) -> Tensor:
        """t' = s t / (1 + (s - 1) t): keeps 0 and 1, moves mass towards 1 (noise) for s > 1."""
        return shift * t / (1 + (shift - 1) * t)

    def sample_t(
        self, batch, frames=None, *, generator=None, device=None, num_tokens=None
    ) -> Tensor:
        """Logit-normal (or uniform) times, shifted for `num_tokens` when given."""
        shape = _shape(batch, frames)
        if self.cfg.t_sampling == "logit_normal":
            z = torch.randn(shape, generator=generator, device=device)
            t = torch.sigmoid(self.cfg.logit_mean + self.cfg.logit_std * z)
        else:
            t = torch.rand(shape, generator=generator, device=device)
        return self.apply_shift(t, self.shift_for(num_tokens))

    def timesteps(self, steps, *, num_tokens=None, device=None) -> Tensor:
        """Uniform grid 1 -> 0, shifted for `num_tokens`."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64, device=device)
        return self.apply_shift(t, self.shift_for(num_tokens))

    def loss_weight(self, t: Tensor) -> Tensor:
        """Uniform: the logit-normal time density already weights the loss."""
        return torch.ones_like(t)


def ddpm_betas(cfg: ProcessConfig) -> Tensor:
    """The beta schedule `(N,)` float64, rescaled to zero terminal SNR when asked."""
    n = cfg.num_steps
    if cfg.beta_schedule == "linear":
        betas = torch.linspace(cfg.beta_start, cfg.beta_end, n, dtype=torch.float64)
    elif cfg.beta_schedule == "cosine":
        s = 0.008
        steps = torch.arange(n + 1, dtype=torch.float64) / n
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    else:
        raise ValueError(
            f"ProcessConfig.beta_schedule must be 'linear' or 'cosine', got {cfg.beta_schedule!r}"
        )
    if cfg.zero_terminal_snr:
        # Lin et al. 2024, Alg. 1: shift and scale sqrt(alpha_bar) so it ends at exactly 0.
        sqrt_ab = torch.cumprod(1 - betas, 0).sqrt()
        first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
        sqrt_ab = (sqrt_ab - last) * first / (first - last)
        ab = sqrt_ab**2
        betas = 1 - torch.cat([ab[:1], ab[1:] / ab[:-1]])
    return betas


class DDPM(NoiseProcess):
    """Discrete DDPM with N steps mapped to t = i / N; t = 0 is clean (alpha_bar = 1)."""

    def __init__(self, cfg: ProcessConfig | None = None) -> None:
        cfg = cfg or ProcessConfig(name="ddpm")
        if cfg.prediction not in ("epsilon", "v"):
            raise ValueError(
                f"ProcessConfig.prediction must be 'epsilon' or 'v' for ddpm, got {cfg.prediction!r}"
            )
        if cfg.zero_terminal_snr and cfg.prediction == "epsilon":
            # At alpha = 0 an epsilon prediction says nothing about x0 (Lin et al. 2024, sec. 3.2).
            raise ValueError("ProcessConfig.zero_terminal_snr needs prediction 'v'")
        if cfg.loss_weighting not in ("uniform", "min_snr"):
            raise ValueError(
                f"ProcessConfig.loss_weighting must be 'uniform' or 'min_snr', got {cfg.loss_weighting!r}"
            )
        if cfg.num_steps < 2:
            raise ValueError(f"ProcessConfig.num_steps must be >= 2, got {cfg.num_steps}")
        self.cfg = cfg
        self.prediction = cfg.prediction
        self.num_steps = cfg.num_steps
        self.betas = ddpm_betas(cfg)  # (N,)
        # alpha_bar at i = 0..N; index 0 is the clean state used by context frames.
        self.alpha_bar = torch.cat(
            [torch.ones(1, dtype=torch.float64), torch.cumprod(1 - self.betas, 0)]
        )

    def alpha_bar_at(self, t: Tensor) -> Tensor:
        """alpha_bar(t), exact at t = i / N and linear in between."""
        table = self.alpha_bar.to(t.device)
        pos = t.double().clamp(0, 1) * self.num_steps
        lo = pos.floor().long().clamp(max=self.num_steps - 1)
        frac = pos - lo
        return (table[lo] * (1 - frac) + table[lo + 1] * frac).to(
            t.dtype if t.is_floating_point() else torch.float32
        )

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar)."""
        ab = self.alpha_bar_at(t)
        return ab.sqrt(), (1 - ab).clamp(min=0).sqrt()

    def sample_t(
        self, batch, frames=None, *, generator=None, device=None, num_tokens=None
    ) -> Tensor:
        """Uniform over the discrete steps i = 1..N, as t = i / N (`num_tokens` is ignored)."""
        i = torch.randint(
            1, self.num_steps + 1, _shape(batch, frames), generator=generator, device=device
        )
        return i.float() / self.num_steps

    def timesteps(self, steps, *, num_tokens=None, device=None) -> Tensor:
        """ "Trailing" spacing (Lin et al. 2024): starts at i = N, ends at 0, on the training grid."""
        if not 1 <= steps <= self.num_steps:
            raise ValueError(f"steps must be in 1..{self.num_steps}, got {steps}")
        i = torch.round(torch.linspace(self.num_steps, 0, steps + 1, dtype=torch.float64))
        return (i / self.num_steps).to(device)

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio alpha_bar / (1 - alpha_bar)."""
        ab = self.alpha_bar_at(t)
        return ab / (1 - ab).clamp(min=1e-20)

    def loss_weight(self, t: Tensor) -> Tensor:
        """Uniform, or min-SNR-gamma (Hang et al. 2023) expressed for the chosen prediction."""
        if self.cfg.loss_weighting == "uniform":
            return torch.ones_like(t, dtype=torch.float32)
        snr = self.snr(t)
        clipped = snr.clamp(max=self.cfg.min_snr_gamma)
        # min(snr, g) / snr for an epsilon loss, min(snr, g) / (snr + 1) for a v loss.
        weight = (
            clipped / snr.clamp(min=1e-20) if self.prediction == "epsilon" else clipped / (snr + 1)
        )
        return weight.float()


PROCESSES: dict[str, type[NoiseProcess]] = {"flow": FlowMatching, "ddpm": DDPM}


def build_process(cfg: ProcessConfig | None = None) -> NoiseProcess:
    """The process named by `cfg.name` (flow by default)."""
    cfg = cfg or ProcessConfig()
    if cfg.name not in PROCESSES:
        raise ValueError(
            f"unknown noise process {cfg.name!r} (ProcessConfig.name); valid: {', '.join(PROCESSES)}"
        )
    return PROCESSES[cfg.name](cfg)
