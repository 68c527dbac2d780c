"""What every temporal mixer shares: the (N, T, D) contract, options, kernel settings."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cinemamba_backbone._kernels import check_kernels_arg
from cinemamba_backbone.ops import causal_conv1d, causal_conv1d_torch

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


class CausalConv1d(nn.Conv1d):
    """Depthwise causal conv1d (+ SiLU) over (b, d, l) through the fused op; an ``nn.Conv1d``
    so that its parameters keep the names and shapes of ``mamba_ssm`` (``conv1d.weight``
    (d, 1, k), ``conv1d.bias``).

    The op runs inside this module's own ``forward``: an engine that partitions parameters
    per module (DeepSpeed ZeRO-3, FSDP) gathers them in its forward hooks, and a parent that
    read ``conv1d.weight`` directly would leave them to ZeRO-3's lazy "external parameter"
    registration, whose timing depends on what happens to be gathered (issue 14: resumed
    ZeRO-3 runs crashed at their second step).
    """

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__(channels, channels, kernel_size, groups=channels, padding=kernel_size - 1)

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        initial: torch.Tensor | None = None,
        kernels: str = "auto",
        require_kernels: bool = False,
        reverse: bool = False,
        *,
        copy_params: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (b, d, l) -> SiLU(causal conv) (b, d, l); ``initial`` (b, d, k-1) continues a
        previous chunk (PyTorch path); ``reverse`` makes it anti-causal.

        ``copy_params=True`` returns copies of (weight (d, k), bias (d,)) instead, made here
        so that a parent fusing several convs into one op reads them through this forward
        (ZeRO-3, see above); x is then unused."""
        if copy_params:
            return self.weight[:, 0].clone(), self.bias.clone()
        weight = self.weight[:, 0]  # (d, k)
        if initial is None:
            return causal_conv1d(
                x.contiguous(), weight, self.bias, True, reverse,
                kernels=kernels, require_kernels=require_kernels,
            )  # fmt: skip
        return causal_conv1d_torch(x, weight, self.bias, True, initial=initial)
