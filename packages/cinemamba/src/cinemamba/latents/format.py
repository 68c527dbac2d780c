"""The latent shard format: samples, the manifest of a shard set, and encoder identities.

A latent shard set is a directory holding

- `latents-000000.tar, ...`: WebDataset shards, one per source video shard. A sample is
  `KEY.latent.npy` (normalised latents `(C, t, h, w)`), `KEY.text.npy` (token embeddings
  `(L, D)`), `KEY.text_mask.npy` (`(L,)` bool), `KEY.text_pooled.npy` (`(P,)`), `KEY.txt` (the
  caption) and `KEY.json` (source key and shard, clip selection, the source's metadata);
- `latents-000000.tar.stats.json` per shard: written just before the shard is renamed into
  place; holds its sample count, skipped inputs by reason and latent moment sums;
- `latents.json`, the manifest, written once every shard is complete: VAE and text encoder
  identity and config hash, clip settings, per-shard counts, latent statistics;
- `null_text.safetensors`: the text encoder's empty-prompt embedding, so training with
  caption dropout needs no text encoder at all.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

# One identity for a saved VAE everywhere (manifests here, saved pipelines in cinemamba_sampling).
from cinemamba_vae.identity import config_hash, file_sha256, vae_identity  # noqa: F401

FORMAT = "cinemamba-latents/1"
MANIFEST_NAME = "latents.json"
NULL_TEXT_NAME = "null_text.safetensors"
SHARD_PREFIX = "latents"
STATS_SUFFIX = ".stats.json"


class LatentFormatError(ValueError):
    """A latent shard set that is incomplete, malformed or made by other encoders."""


def npy_bytes(array: np.ndarray) -> bytes:
    """`np.save` into bytes (the WebDataset `.npy` convention)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes, name: str) -> np.ndarray:
    """`np.load` from bytes; an unreadable array raises LatentFormatError naming the field."""
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise LatentFormatError(f"field {name!r} is not a valid .npy array: {err}") from None


def sample_entries(
    key: str,
    latents: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    pooled: torch.Tensor,
    caption: str,
    meta: Mapping[str, Any],
) -> dict[str, Any]:
    """The tar entries of one latent sample (latents `(C, t, h, w)`, tokens `(L, D)`)."""
    return {
        "__key__": key,
        "latent.npy": npy_bytes(latents.detach().cpu().float().numpy()),
        "text.npy": npy_bytes(tokens.detach().cpu().float().numpy()),
        "text_mask.npy": npy_bytes(mask.detach().cpu().bool().numpy()),
        "text_pooled.npy": npy_bytes(pooled.detach().cpu().float().numpy()),
        "txt": caption.encode("utf-8"),
        "json": json.dumps(dict(meta), separators=(",", ":")).encode("utf-8"),
    }


def decode_sample(sample: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Tensors of one latent sample read from a shard; LatentFormatError when a field is bad."""
    missing = [
        f for f in ("latent.npy", "text.npy", "text_mask.npy", "text_pooled.npy") if f not in sample
    ]
    if missing:
        raise LatentFormatError(f"sample {sample.get('__key__')!r} lacks {missing}")
    latents = load_npy(sample["latent.npy"], "latent.npy")
    tokens = load_npy(sample["text.npy"], "text.npy")
    mask = load_npy(sample["text_mask.npy"], "text_mask.npy")
    pooled = load_npy(sample["text_pooled.npy"], "text_pooled.npy")
    if latents.ndim != 4 or tokens.ndim != 2 or mask.shape != tokens.shape[:1] or pooled.ndim != 1:
        raise LatentFormatError(
            f"sample {sample.get('__key__')!r} has shapes latent {latents.shape}, text "
            f"{tokens.shape}, mask {mask.shape}, pooled {pooled.shape}"
        )
    if not np.isfinite(latents).all():
        raise LatentFormatError(f"sample {sample.get('__key__')!r} has non-finite latents")
    return {
        "latents": torch.from_numpy(latents.astype(np.float32, copy=False)),
        "text": torch.from_numpy(tokens.astype(np.float32, copy=False)),
        "text_mask": torch.from_numpy(mask.astype(bool, copy=False)),
        "pooled": torch.from_numpy(pooled.astype(np.float32, copy=False)),
    }


def shard_name(index: int) -> str:
    """File name of latent shard `index`."""
    return f"{SHARD_PREFIX}-{index:06d}.tar"


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a complete latent shard set; a clear error if there is none."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        partial = sorted(Path(directory).glob(f"{SHARD_PREFIX}-*.tar"))
        hint = (
            f" ({len(partial)} shards exist: the export is unfinished; re-run export-latents)"
            if partial
            else " (not a latent shard set: run `cinemamba export-latents` first)"
        )
        raise LatentFormatError(f"{path} does not exist{hint}")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise LatentFormatError(
            f"{path} has format {manifest.get('format')!r}; this version reads {FORMAT!r}"
        )
    return manifest


def text_encoder_mismatch(recorded: Mapping[str, Any], cfg: Any) -> str | None:
    """How a `TextEncoderConfig` differs from the encoder a shard set records (None: same).

    Checked without building the encoder: the architecture fields must be equal, and a weights
    file must hash to the digest inside the recorded identity (its path may differ).
    """
    have = recorded["config"]
    want = asdict(cfg)
    diffs = [
        f"{k}={want[k]!r} (latents: {have.get(k)!r})"
        for k in ("model", "random_init_seed", "precision", "context_length")
        if want.get(k) != have.get(k)
    ]
    if want.get("weights") and not diffs:
        digest = f"sha256-{file_sha256(want['weights'])[:16]}"
        if digest not in recorded["identity"]:
            diffs.append(f"weights {want['weights']!r} ({digest}) are not the weights used")
    elif bool(want.get("weights")) != bool(have.get("weights")):
        diffs.append(f"weights={want.get('weights')!r} (latents: {have.get('weights')!r})")
    return "; ".join(diffs) or None


def check_identity(
    manifest: Mapping[str, Any],
    directory: str | Path,
    *,
    vae: str | None = None,
    text_encoder: Any = None,
) -> None:
    """Refuse latents made by another VAE or text encoder than the ones named.

    `vae` is a VAE identity (`vae_identity(dir)`); `text_encoder` a text encoder identity string
    or a `TextEncoderConfig`; None skips that check.
    """
    if vae is not None and manifest["vae"]["identity"] != vae:
        raise LatentFormatError(
            f"latent shards in {str(directory)!r} were made by VAE "
            f"{manifest['vae']['identity']!r}, but the config names VAE {vae!r} (task.vae); "
            "re-export the latents with this VAE or point task.vae at the one they were made with"
        )
    if text_encoder is None:
        return
    recorded = manifest["text_encoder"]
    if isinstance(text_encoder, str):
        problem = None if recorded["identity"] == text_encoder else f"identity {text_encoder!r}"
    else:
        problem = text_encoder_mismatch(recorded, text_encoder)
    if problem:
        raise LatentFormatError(
            f"latent shards in {str(directory)!r} were made by text encoder "
            f"{recorded['identity']!r}, but the config names another text encoder "
            f"(task.text_encoder: {problem}); re-export the latents with this text encoder or "
            "configure the one they were made with"
        )


def load_null_text(directory: str | Path) -> dict[str, torch.Tensor]:
    """The empty-prompt embedding stored with a shard set: tokens `(L, D)`, mask, pooled."""
    from safetensors.torch import load_file

    path = Path(directory) / NULL_TEXT_NAME
    if not path.is_file():
        raise LatentFormatError(f"{path} does not exist: the latent export is incomplete")
    blob = load_file(str(path))
    return {"text": blob["text"], "text_mask": blob["text_mask"].bool(), "pooled": blob["pooled"]}
