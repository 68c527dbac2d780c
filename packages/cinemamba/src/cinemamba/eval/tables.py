"""Score dicts as tables: flatten nested per-video scores, average them, print markdown."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np


def mean_scores(rows: list[dict]) -> dict:
    """Mean of every numeric leaf over per-video score dicts (NaN / None leaves are left out),
    with the same nesting; `n` counts the videos that contributed to each leaf."""
    sums: dict[str, list[float]] = {}
    for row in rows:
        for key, value in flat_scores(row):
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                sums.setdefault(key, []).append(float(value))
    out: dict = {}
    for key, values in sums.items():
        node = out
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = float(np.mean(values))
    return out


def flat_scores(d: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(`a/b` path, value) of every scalar leaf of a nested score dict, in order."""
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from flat_scores(v, name + "/")
        elif isinstance(v, bool | int | float) or v is None:
            yield name, v


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table (first column left-aligned, the rest right-aligned)."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":--", *["--:"] * (len(header) - 1)]) + "|",
    ]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
