"""What every temporal mixer shares: the (N, T, D) contract, options, kernel settings."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cinemamba_backbone._kernels import check_kernels_arg

# A streaming state is a tuple of tensors, never mutated in place: a caller may run several
# forwards from the same state (e.g. denoising steps of one chunk) and keep it unchanged.
MixerState = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class MixerOptions:
    """Hyper-parameters a mixer may use; each mixer reads the ones it needs."""

    heads: int = 4
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    chunk_size: int = 64
    qk_norm: bool = True


class KernelChoice(nn.Module):
    """A module whose ops take the runtime kernel choice (never saved in the state dict)."""

    def __init__(self) -> None:
        super().__init__()
        self.kernels = "auto"
        self.require_kernels = False

    def set_kernels(self, kernels: str = "auto", require_kernels: bool = False) -> None:
        """Choose fused kernels ("auto") or the PyTorch path ("torch") for later calls."""
        check_kernels_arg(kernels)
        self.kernels, self.require_kernels = kernels, require_kernels

    @property
    def kernel_kwargs(self) -> dict[str, object]:
        """Keyword arguments forwarded to ``cinemamba_backbone.ops`` calls."""
        return {"kernels": self.kernels, "require_kernels": self.require_kernels}


class TemporalMixer(KernelChoice):
    """Base class: forward maps (N, T, D) -> (N, T, D) along T.

    Causal mixers (``causal = True``) also implement ``init_state`` and ``forward_chunk``.
    """

    causal: bool = False

    def init_state(
        self, batch: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> MixerState:
        """Empty streaming state for ``batch`` sequences (causal mixers only)."""
        raise TypeError(f"{type(self).__name__} is not causal and cannot stream")

    def forward_chunk(self, x: torch.Tensor, state: MixerState) -> tuple[torch.Tensor, MixerState]:
        """Mix a chunk (N, T, D) continuing from ``state``; returns (out, new_state)."""
        raise TypeError(f"{type(self).__name__} is not causal and cannot stream")
