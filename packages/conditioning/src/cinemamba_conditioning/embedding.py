"""What a text encoder returns, and the protocol every text encoder follows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@dataclass(frozen=True)
class TextEmbedding:
    """Token embeddings `(B, L, D)`, their validity mask `(B, L)` (True = real token) and the
    pooled embedding `(B, P)`. Positions where `mask` is False hold padding outputs that
    consumers must ignore (cross-attention masks them out)."""

    tokens: Tensor  # (B, L, D)
    mask: Tensor  # (B, L) bool
    pooled: Tensor  # (B, P)

    def __post_init__(self) -> None:
        if self.tokens.ndim != 3:
            raise ValueError(
                f"TextEmbedding.tokens must be (B, L, D), got {tuple(self.tokens.shape)}"
            )
        b, length = self.tokens.shape[:2]
        if tuple(self.mask.shape) != (b, length) or self.mask.dtype != torch.bool:
            raise ValueError(
                f"TextEmbedding.mask must be a bool (B, L) = ({b}, {length}) tensor, "
                f"got {self.mask.dtype} {tuple(self.mask.shape)}"
            )
        if self.pooled.ndim != 2 or self.pooled.shape[0] != b:
            raise ValueError(
                f"TextEmbedding.pooled must be (B, P) with B={b}, got {tuple(self.pooled.shape)}"
            )

    @property
    def batch(self) -> int:
        """Number of prompts."""
        return self.tokens.shape[0]

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> TextEmbedding:
        """Move tokens and pooled to `device`/`dtype` (the mask stays bool)."""
        return TextEmbedding(
            tokens=self.tokens.to(device=device, dtype=dtype),
            mask=self.mask.to(device=device),
            pooled=self.pooled.to(device=device, dtype=dtype),
        )

    def __getitem__(self, index: int | slice | Tensor) -> TextEmbedding:
        """Select prompts along the batch axis (an int keeps the batch axis)."""
        if isinstance(index, int):
            i = index % self.batch
            index = slice(i, i + 1)
        return TextEmbedding(self.tokens[index], self.mask[index], self.pooled[index])

    @staticmethod
    def cat(items: Sequence[TextEmbedding]) -> TextEmbedding:
        """Concatenate embeddings along the batch axis (same L and D required)."""
        if not items:
            raise ValueError("TextEmbedding.cat needs at least one embedding")
        return TextEmbedding(
            tokens=torch.cat([e.tokens for e in items]),
            mask=torch.cat([e.mask for e in items]),
            pooled=torch.cat([e.pooled for e in items]),
        )


@runtime_checkable
class TextEncoder(Protocol):
    """A frozen text encoder: prompts in, `TextEmbedding` out.

    `identity` names the exact encoder (architecture + weights) so caches and exported latents
    can tell embeddings from different encoders apart.
    """

    dim: int
    pooled_dim: int
    identity: str

    def encode(self, prompts: list[str]) -> TextEmbedding:
        """Embed a batch of prompts."""
        ...

    def null(self, batch: int) -> TextEmbedding:
        """The empty-prompt embedding repeated `batch` times (unconditional branch of CFG)."""
        ...
