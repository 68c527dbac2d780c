"""One latent shard of an export: every sample of a raw shard encoded and written to
`NAME.tar.tmp`, its statistics to the `NAME.tar.stats.json` sidecar, then renamed into place,
so a shard on disk under its final name is complete. Bad samples are skipped and counted.
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from cinemamba.latents import format as fmt
from cinemamba.latents.clips import ClipConfig, SampleError
from cinemamba.latents.encoders import _encode_sample, _Encoders
from cinemamba.latents.stream import read_tar

log = logging.getLogger(__name__)


def _export_shard(
    enc: _Encoders,
    src_url: str,
    src_name: str,
    dst: Path,
    clip: ClipConfig,
    bar,
    *,
    index: int = 0,
    expected: int | None = None,
    first_home: Mapping[str, int] | None = None,
) -> tuple[int, Counter]:
    """Write one latent shard (tmp name, stats sidecar, rename); returns (samples, skipped,
    warnings): counts by reason of samples left out, and of samples exported with a warning.

    `expected` is the source plan's sample count (samples it promised but the tar did not
    deliver are counted as "missing"); `first_home` maps each planned key to the first shard
    that holds it, so a key repeated later in the plan is exported once (issue 14).
    """
    skipped: Counter = Counter()
    warnings: Counter = Counter()
    seen_keys: set[str] = set()
    read = 0  # samples the source tar delivered (good or bad)
    error = ""
    channels = enc.vae.config.latent_channels
    s1 = np.zeros(channels)
    s2 = np.zeros(channels)
    count = 0  # latent positions per channel
    written = 0
    lengths = [2**62, 0, 0]  # latent frames per sample: min, max, total
    tmp = dst.with_name(dst.name + ".tmp")
    rng = np.random.default_rng(0)  # unused for start="first"; decode_clip takes one
    with open(tmp, "wb") as fh:
        writer = wds.TarWriter(fh, encoder=False, mtime=0.0)
        try:
            for sample in read_tar(src_url):
                key = sample.get("__key__")
                read += 1
                if key in seen_keys or (first_home or {}).get(key, index) < index:
                    skipped["duplicate_key"] += 1
                    log.warning("skipping %s in %s: duplicate_key (exported once)", key, src_name)
                    bar.update()
                    continue
                seen_keys.add(key)
                try:
                    latents, text, caption, meta = _encode_sample(enc, sample, clip, rng)
                except SampleError as err:
                    skipped[err.reason] += 1
                    log.warning("skipping %s: %s", key, err)
                    bar.update()
                    continue
                except ValueError as err:  # e.g. a frame size the VAE cannot take
                    skipped["unencodable"] += 1
                    log.warning("skipping %s: %s", key, err)
                    bar.update()
                    continue
                warnings.update(meta.pop("warnings", ()))  # the sample is still exported
                if not torch.isfinite(latents).all():
                    skipped["nonfinite_latents"] += 1
                    log.warning("skipping %s: the VAE produced non-finite latents", key)
                    bar.update()
                    continue
                z = latents.double().cpu()
                s1 += z.sum(dim=(1, 2, 3)).numpy()
                s2 += z.pow(2).sum(dim=(1, 2, 3)).numpy()
                count += z[0].numel()
                t = int(latents.shape[1])
                lengths = [min(lengths[0], t), max(lengths[1], t), lengths[2] + t]
                meta = {**meta, "key": key, "source_shard": src_name,
                        "latent_shape": list(latents.shape)}  # fmt: skip
                writer.write(
                    fmt.sample_entries(
                        key, latents, text.tokens[0], text.mask[0], text.pooled[0], caption, meta
                    )
                )
                written += 1
                bar.update()
        except (OSError, ValueError, EOFError, tarfile.TarError) as err:
            # A truncated or unreadable source shard: keep what was read, count the rest
            # below, and finish the shard, so a re-run does not crash at the same place.
            error = f"{type(err).__name__}: {err}"
            log.warning("source shard %s unreadable after %d samples: %s", src_url, read, error)
        finally:
            # Also on an interrupt: the .tmp stays unfinished, but no writer is left to flush
            # into a closed file at garbage collection.
            writer.close()
    incomplete = None
    if error or (expected is not None and read < expected):
        lost = max(0, (expected or 0) - read)
        if lost:
            skipped["missing"] += lost
            bar.update(lost)
        incomplete = {"source": src_name, "expected": expected, "read": read,
                      "error": error or "the tar ends before its planned samples"}  # fmt: skip
        log.warning("source shard %s is incomplete: %d of %s planned samples read (%s)",
                    src_name, read, expected, incomplete["error"])  # fmt: skip
    stats = {"samples": written, "skipped": dict(skipped), "warnings": dict(warnings),
             "count": count, "latent_frames": _lengths(lengths, written),
             "sum": s1.tolist(), "sumsq": s2.tolist(), "incomplete": incomplete}  # fmt: skip
    side = dst.with_name(dst.name + fmt.STATS_SUFFIX)
    side_tmp = side.with_name(side.name + ".tmp")
    side_tmp.write_text(json.dumps(stats))
    side_tmp.replace(side)
    tmp.replace(dst)  # last: the shard counts as done only once everything is in place
    return written, skipped, warnings


def _lengths(lengths: list[int], samples: int) -> dict[str, int]:
    """Per-sample latent frame counts of a shard: min, max, total (0s when empty)."""
    if not samples:
        return {"min": 0, "max": 0, "total": 0}
    return {"min": lengths[0], "max": lengths[1], "total": lengths[2]}
