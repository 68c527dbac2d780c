"""What an export writes beside its shards: the settings header (`export.json`, checked on
every re-run), the empty-prompt embedding, and the manifest (`latents.json`) once every shard
is complete, with the set's sample counts and latent statistics.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import save_file

from cinemamba.latents import format as fmt
from cinemamba.latents.encoders import _Encoders

if TYPE_CHECKING:
    from cinemamba.latents.export import ExportConfig

EXPORT_HEADER_NAME = "export.json"  # the settings of an export in progress


def _write_null_text(enc: _Encoders, out: Path) -> None:
    null = enc.text.null(1)
    tmp = out / (fmt.NULL_TEXT_NAME + ".tmp")
    save_file(
        {
            "text": null.tokens[0].cpu().contiguous(),
            "text_mask": null.mask[0].cpu().to(torch.uint8),
            "pooled": null.pooled[0].cpu().contiguous(),
        },  # fmt: skip
        str(tmp),
    )
    tmp.replace(out / fmt.NULL_TEXT_NAME)


def _finish(cfg: ExportConfig, out: Path, names: list[str], header: dict) -> Path | None:
    """Write the manifest if every shard is complete (any process may; the content is the same)."""
    shards, skipped, warnings, incomplete = [], Counter(), Counter(), []
    s1 = s2 = None
    count = 0
    lengths = []
    for name in names:
        side = out / (name + fmt.STATS_SUFFIX)
        if not (out / name).exists() or not side.exists():
            return None
        st = json.loads(side.read_text())
        shards.append({"name": name, "samples": st["samples"], "skipped": st["skipped"]})
        skipped.update(st["skipped"])
        warnings.update(st.get("warnings", {}))
        if st.get("incomplete"):
            incomplete.append(st["incomplete"])
        s1 = np.array(st["sum"]) if s1 is None else s1 + np.array(st["sum"])
        s2 = np.array(st["sumsq"]) if s2 is None else s2 + np.array(st["sumsq"])
        count += st["count"]
        if st.get("samples") and "latent_frames" in st:
            lengths.append(st["latent_frames"])
    if count == 0:
        raise ValueError(f"no usable samples in {cfg.input!r} (skipped: {dict(skipped)})")
    mean = s1 / count
    std = np.sqrt(np.maximum(s2 / count - mean**2, 0.0))
    manifest = {
        **header,
        "shards": shards,
        "samples": sum(s["samples"] for s in shards),
        "skipped": dict(skipped),
        "warnings": dict(warnings),  # exported samples whose KEY.json disagreed with the video
        "incomplete_sources": incomplete,  # source shards that ended early (truncated tars)
        # latent frames per sample over the set: the longest training window every sample
        # can give is `min` (longer windows skip the shorter samples)
        "latent_frames": {
            "min": min((x["min"] for x in lengths), default=0),
            "max": max((x["max"] for x in lengths), default=0),
            "total": sum(x["total"] for x in lengths),
        },
        # Statistics of the exported (already normalised) latents: ~0 / ~1 when the VAE's
        # latent_mean/latent_std fit this data; far off means the VAE stats need refitting.
        "latent_stats": {"mean": mean.tolist(), "std": std.tolist(), "count": count},
    }
    path = out / fmt.MANIFEST_NAME
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(path)
    return path


def _check_header(out: Path, header: dict) -> None:
    """Record the export settings once; a re-run with other encoders or clips is refused, so
    one directory never mixes shards made two ways."""
    path = out / EXPORT_HEADER_NAME
    if not path.exists():
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(header, indent=1))
        tmp.replace(path)
        return
    prev = json.loads(path.read_text())
    for part, what in (("vae", "identity"), ("text_encoder", "identity")):
        if prev[part][what] != header[part][what]:
            raise ValueError(
                f"{out} holds latents made with {part} {prev[part][what]!r}, not "
                f"{header[part][what]!r}; export to a new directory"
            )
    if prev["clip"] != header["clip"] or prev["source"]["input"] != header["source"]["input"]:
        raise ValueError(
            f"{out} holds latents of clips {prev['clip']} from {prev['source']['input']!r}; "
            f"this export asks for {header['clip']} from {header['source']['input']!r}; "
            "export to a new directory"
        )
