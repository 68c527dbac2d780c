"""Generated blocks in hand-written pages: the text between two marker lines is replaced,
everything else is kept (used by scripts/fvd_docs.py and scripts/ablation_docs.py)."""

from __future__ import annotations


def splice_block(existing: str, block: str, begin: str, end: str, after: str = "") -> str:
    """`existing` with the span `begin`…`end` replaced by `block` (which carries both markers);
    a page without them gets `block` below the line holding `after`, else at its end."""
    if begin in existing and end in existing:
        return (
            existing[: existing.index(begin)] + block + existing[existing.index(end) + len(end) :]
        )
    if after and after in existing:
        cut = existing.find("\n", existing.index(after)) + 1 or len(existing)
        return existing[:cut] + "\n" + block + "\n" + existing[cut:]
    return existing.rstrip("\n") + "\n\n" + block + "\n"
