"""Wrappers that turn a text-conditioned network into the `model(x, t)` callable solvers take.

Guidance lives here, outside the network (k-diffusion `CFGDenoiser`): the backbone only ever
sees a batch of latents, times and text embeddings.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from cinemamba_conditioning import TextEmbedding


class TextConditionedNetwork(Protocol):
    """The backbone's call: predicts the process target for `x` at times `t` given text."""

    def __call__(
        self,
        x: Tensor,
        t: Tensor,
        text: Tensor,
        text_mask: Tensor | None = None,
        pooled: Tensor | None = None,
    ) -> Tensor: ...


def _repeat_t(t: Tensor, n: int) -> Tensor:
    return torch.cat([t] * n) if n > 1 else t


class Conditioned:
    """`model(x, t)` for one fixed text embedding (no guidance)."""

    def __init__(self, network: TextConditionedNetwork, text: TextEmbedding) -> None:
        self.network = network
        self.text = text

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        """The network's prediction for `x` at `t` under `self.text`."""
        return self.network(x, t, self.text.tokens, self.text.mask, self.text.pooled)


class ClassifierFreeGuidance:
    """`model(x, t)` = uncond + scale * (cond - uncond) (Ho & Salimans 2022).

    Conditional and unconditional halves run as one batch of 2B. `uncond` is the empty prompt
    (`text_encoder.null(B)`) or a negative prompt's embedding. Guidance is linear in the network
    output, so combining velocities, epsilons or v equals combining the implied x0.
    At `scale == 1` only the conditional half runs (the result is identical and half the cost).
    """

    def __init__(
        self,
        network: TextConditionedNetwork,
        cond: TextEmbedding,
        uncond: TextEmbedding,
        scale: float,
    ) -> None:
        if cond.batch != uncond.batch or cond.tokens.shape[1:] != uncond.tokens.shape[1:]:
            raise ValueError(
                f"cond and uncond embeddings differ in shape: {tuple(cond.tokens.shape)} vs {tuple(uncond.tokens.shape)}"
            )
        self.network = network
        self.scale = float(scale)
        self.cond = cond
        self.both = TextEmbedding.cat([cond, uncond])

    @property
    def batch_multiplier(self) -> int:
        """How many copies of the latent batch one call sends through the network."""
        return 1 if self.scale == 1.0 else 2

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        """The guided prediction for `x` `(B, ...)` at `t` `(B,)` or `(B, T)`."""
        if self.scale == 1.0:
            return self.network(x, t, self.cond.tokens, self.cond.mask, self.cond.pooled)
        both = self.both
        out = self.network(torch.cat([x, x]), _repeat_t(t, 2), both.tokens, both.mask, both.pooled)
        cond, uncond = out.chunk(2)
        return uncond + self.scale * (cond - uncond)


def guided(
    network: TextConditionedNetwork, cond: TextEmbedding, uncond: TextEmbedding | None, scale: float
):
    """CFG when `scale != 1` (then `uncond` is required), the plain conditional model otherwise."""
    if scale == 1.0:
        return Conditioned(network, cond)
    if uncond is None:
        raise ValueError(f"guidance scale {scale} needs an unconditional embedding")
    return ClassifierFreeGuidance(network, cond, uncond, scale)


class WithContext:
    """`model(x, t)` for the new frames of a window whose first frames are already clean.

    The clean `context` `(B, C, c, h, w)` is prepended at t = 0 (per-frame times), the network
    sees the whole window, and only the new frames' prediction is returned (rolling mode).
    """

    def __init__(self, model, context: Tensor) -> None:
        self.model = model
        self.context = context

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        """Prediction for the new frames `x` `(B, C, n, h, w)` at `t` `(B,)` or `(B, n)`."""
        c = self.context.shape[2]
        if c == 0:
            return self.model(x, t)
        b, n = x.shape[0], x.shape[2]
        t_new = t[:, None].expand(b, n) if t.ndim == 1 else t
        t_full = torch.cat([t_new.new_zeros(b, c), t_new], dim=1)  # (B, c + n)
        out = self.model(torch.cat([self.context.to(x.dtype), x], dim=2), t_full)
        return out[:, :, c:]
