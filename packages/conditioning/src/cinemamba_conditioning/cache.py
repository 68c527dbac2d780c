"""An embedding cache keyed by (encoder identity, text): each distinct caption is encoded once."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor

from cinemamba_conditioning.embedding import TextEmbedding, TextEncoder

_Entry = tuple[Tensor, Tensor, Tensor]  # tokens (L, D), mask (L,), pooled (P,)


class EmbeddingCache:
    """Least-recently-used store of per-prompt embeddings keyed by `(identity, text)`.

    Several encoders may share one cache: the identity keeps their entries apart.
    """

    def __init__(self, max_entries: int = 65536) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._store: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def get(self, identity: str, text: str) -> _Entry | None:
        """The stored entry, or None (counted as a miss)."""
        entry = self._store.get((identity, text))
        if entry is None:
            self.misses += 1
            return None
        self._store.move_to_end((identity, text))
        self.hits += 1
        return entry

    def put(self, identity: str, text: str, entry: _Entry) -> None:
        """Store one prompt's embedding, evicting the least recently used beyond `max_entries`."""
        self._store[(identity, text)] = entry
        self._store.move_to_end((identity, text))
        while len(self._store) > self.max_entries:
            self._store.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        self._store.clear()
        self.hits = self.misses = 0


class CachedTextEncoder:
    """A `TextEncoder` that answers repeated prompts from an `EmbeddingCache`."""

    def __init__(self, encoder: TextEncoder, cache: EmbeddingCache | None = None) -> None:
        self.encoder = encoder
        self.cache = cache if cache is not None else EmbeddingCache()
        self.dim = encoder.dim
        self.pooled_dim = encoder.pooled_dim
        self.identity = encoder.identity

    def encode(self, prompts: list[str]) -> TextEmbedding:
        """Embed `prompts`, running the encoder once on the distinct prompts not yet cached."""
        found: dict[str, _Entry] = {}
        for text in dict.fromkeys(prompts):  # distinct, in order
            entry = self.cache.get(self.identity, text)
            if entry is not None:
                found[text] = entry
        todo = [text for text in dict.fromkeys(prompts) if text not in found]
        if todo:
            fresh = self.encoder.encode(todo)
            for i, text in enumerate(todo):
                # clone: a view would keep the whole batch tensor alive in the cache
                entry = (fresh.tokens[i].clone(), fresh.mask[i].clone(), fresh.pooled[i].clone())
                self.cache.put(self.identity, text, entry)
                found[text] = entry
        return TextEmbedding(
            tokens=torch.stack([found[p][0] for p in prompts]),
            mask=torch.stack([found[p][1] for p in prompts]),
            pooled=torch.stack([found[p][2] for p in prompts]),
        )

    def null(self, batch: int) -> TextEmbedding:
        """The empty prompt's embedding, `batch` times (cached like any prompt)."""
        return self.encode([""] * batch)
