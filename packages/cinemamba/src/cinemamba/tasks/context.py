"""Clean-context training times: teach the backbone what rolling generation will ask of it.

Rolling mode (`cinemamba_sampling.VideoPipeline`) denoises each new window next to the last
`context` latent frames of the previous one, already clean, at t = 0. A backbone trained with
one noise level per clip never sees clean frames beside noisy ones, and independent per-frame
levels almost never draw t near 0 (under a logit-normal law, P(t < 0.05) is about 0.2 %). This
wrapper keeps the process's own time law for the clip and, with probability `prob`, makes its
first k ~ U{1..max_frames} latent frames clean and gives them zero loss weight (their target
is noise the model cannot know). Everything else is the wrapped process.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class CleanContext:
    """A noise process whose training times sometimes start with clean context frames."""

    def __init__(self, base: Any, prob: float, max_frames: int) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"context prob must be in [0, 1], got {prob}")
        if max_frames < 1:
            raise ValueError(f"context max_frames must be >= 1, got {max_frames}")
        self.base = base
        self.prob = float(prob)
        self.max_frames = int(max_frames)

    def __getattr__(self, name: str) -> Any:
        # alpha_sigma, add_noise, target, predict, timesteps, prediction: the wrapped process's.
        return getattr(self.base, name)

    def sample_t(
        self,
        batch: int,
        frames: int | None = None,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        num_tokens: int | None = None,
    ) -> Tensor:
        """One level per clip from the base law, `(batch, frames)`, with clean leading frames."""
        if frames is None:
            raise ValueError(
                "clean-context training needs per-frame times: set task.per_frame_t=true"
            )
        t = self.base.sample_t(batch, generator=generator, device=device, num_tokens=num_tokens)
        t = t[:, None].expand(batch, frames).clone()  # (B, T)
        use = torch.rand(batch, generator=generator, device=device) < self.prob
        upper = min(self.max_frames, frames - 1)  # at least one frame stays noisy
        if upper < 1:
            return t
        count = torch.randint(1, upper + 1, (batch,), generator=generator, device=device)
        clean = use[:, None] & (torch.arange(frames, device=t.device)[None] < count[:, None])
        return t.masked_fill(clean, 0.0)

    def loss_weight(self, t: Tensor) -> Tensor:
        """The base weight, zero on clean (t = 0) context frames."""
        return self.base.loss_weight(t) * (t > 0).to(torch.float32)
