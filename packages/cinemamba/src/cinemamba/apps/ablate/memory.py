"""The memory part of `cinemamba ablate` (issue 21): memory captions generated past their gaps,
scored per scene kind and gap length (`cinemamba.eval.memory`), with the real videos, the real
videos through the shared VAE (the ceiling) and shuffled real videos (chance) beside them.

Results: `memory.json` in the ceiling stage and in every mixer's eval stage, merged into
`ablation.json` (`memory_ceiling`, `mixers/<name>/memory`); `memory_markdown` and
`plot_memory` turn them into the report's "score vs gap length" table and `ablation_memory.png`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cinemamba.config import ConfigError
from cinemamba.data.synth import SceneConfig
from cinemamba.data.synth_memory import MEMORY_KINDS, memory_video, parse_memory_caption
from cinemamba.data.video import write_video
from cinemamba.eval.memory import memory_chance, memory_scores
from cinemamba.eval.tables import markdown_table

MEMORY_FILE = "memory.json"


@dataclass
class AblationMemory:
    """Memory-scene evaluation: `prompts` (memory captions, `data.synth_memory`) generated at
    `lengths` x the training clip in every mode of `modes`, `seeds` videos per prompt.

    Empty `prompts` (the default) leaves the ablation as it was. The demo's data must then be
    memory scenes (`demo_overrides: [data.kinds=...]`) for the backbones to know the captions.
    """

    prompts: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=lambda: [8])
    modes: list[str] = field(default_factory=lambda: ["oneshot", "rolling"])
    seeds: int = 2  # videos per prompt and mode (seeds eval.seed + 1000 k)
    chance_samples: int = 8  # shuffled real videos per prompt for the chance level
    save_videos: int = 3  # mp4 of the first N prompts per length and mode (seed 0)


def check_memory(memory: AblationMemory) -> None:
    """Every prompt a memory caption, modes known, lengths and counts positive."""
    from cinemamba_sampling import MODES

    bad = [p for p in memory.prompts if parse_memory_caption(p) is None]
    if bad:
        raise ConfigError(f"memory.prompts: not memory-scene captions (data.synth_memory): {bad}")
    wrong = [m for m in memory.modes if m not in MODES]
    if memory.prompts and (wrong or not memory.modes):
        raise ConfigError(f"memory.modes={memory.modes}: choose from {', '.join(MODES)}")
    if memory.prompts and (not memory.lengths or min(memory.lengths) < 1 or memory.seeds < 1):
        raise ConfigError(f"memory.lengths={memory.lengths} and memory.seeds={memory.seeds} "
                          "must be >= 1")  # fmt: skip


def memory_lengths(memory: AblationMemory, train_frames: int) -> dict[str, int]:
    """Pixel frames per length multiple (as `eval_lengths`)."""
    return {f"{m}x": 1 + m * (train_frames - 1) for m in memory.lengths}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Mean of every numeric score per scene kind and gap: `{kind: {gap: {score: mean}}}`."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for kind in MEMORY_KINDS:
        for gap in sorted({r["gap"] for r in rows if r["kind"] == kind}):
            sel = [r for r in rows if r["kind"] == kind and r["gap"] == gap]
            # Every score any row has (a None score, e.g. no return seen, is left out of its mean).
            keys = dict.fromkeys(k for r in sel for k, v in r.items() if k != "gap"
                                 and (v is None or _number(v)))  # fmt: skip
            cell: dict[str, float | None] = {"videos": float(len(sel))}
            for key in keys:
                vals = [r[key] for r in sel if _number(r.get(key))]
                cell[key] = float(np.mean(vals)) if vals else None
            out.setdefault(kind, {})[str(gap)] = cell
    return out


def evaluate_memory(memory: AblationMemory, scene: SceneConfig, pipe, frames0: int,
                    gen: Mapping[str, Any], seed: int, batch: int, work: Path,
                    fps: float) -> dict[str, Any]:  # fmt: skip
    """Generate every memory prompt at every length and mode with one backbone and score it.

    `pipe` is the `VideoPipeline` (its config sets rolling's window and context); `gen` holds
    height, width, steps and guidance.
    """
    from cinemamba_sampling import to_uint8

    out: dict[str, Any] = {}
    prompts = list(memory.prompts)
    for tag, frames in memory_lengths(memory, frames0).items():
        out[tag] = {}
        cfg = _scene_at(scene, frames)
        for mode in memory.modes:
            started = time.perf_counter()
            rows = []
            for k in range(memory.seeds):
                videos = []
                for b in range(0, len(prompts), batch):
                    part = prompts[b : b + batch]
                    videos += list(to_uint8(pipe.generate(
                        part, frames=frames, seed=seed + 1000 * k + b, mode=mode, **gen)))  # fmt: skip
                for i, (video, prompt) in enumerate(zip(videos, prompts, strict=True)):
                    rows.append({"prompt": prompt, "seed": k, **memory_scores(video, prompt, cfg)})
                    if k == 0 and i < memory.save_videos:
                        write_video(work / f"memory_{tag}_{mode}_{i}.mp4", video, fps=fps)
                        (work / f"memory_{tag}_{mode}_{i}.txt").write_text(prompt + "\n")
            seconds = (time.perf_counter() - started) / max(1, len(rows))
            out[tag][mode] = {"frames": frames, "videos": len(rows),
                              "seconds_per_video": seconds, "by_gap": summarise(rows),
                              "rows": rows}  # fmt: skip
    return out


def _scene_at(scene: SceneConfig, frames: int) -> SceneConfig:
    from dataclasses import replace

    return replace(scene, frames=frames)


def ceiling_rows(memory: AblationMemory, scene: SceneConfig, frames0: int, vae=None,
                   seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Per length: the memory prompts' real videos, the same through `vae` (the ceiling a
    generator reaches) and shuffled real videos (chance), each summarised per kind and gap."""
    from cinemamba.latents.clips import vae_roundtrip

    out: dict[str, Any] = {}
    for tag, frames in memory_lengths(memory, frames0).items():
        cfg = _scene_at(scene, frames)
        real, through, chance = [], [], []
        for k in range(memory.seeds):
            for prompt in memory.prompts:
                spec = parse_memory_caption(prompt)
                video, _ = memory_video(spec, cfg, seed + k)
                real.append({"prompt": prompt, **memory_scores(video, prompt, cfg)})
                if vae is not None:
                    rebuilt = vae_roundtrip(vae, video, 8)
                    through.append({"prompt": prompt, **memory_scores(rebuilt, prompt, cfg)})
        for prompt in memory.prompts:
            chance.append({"prompt": prompt,
                           **memory_chance(prompt, cfg, samples=memory.chance_samples)})  # fmt: skip
        out[tag] = {"frames": frames, "train_frames": frames0, "real": summarise(real),
                    "chance": summarise(chance)}  # fmt: skip
        if through:
            out[tag]["vae"] = summarise(through)
    return out


# ------------------------------------------------------------------------------------ report


def _gaps(results: Mapping[str, Any], tag: str) -> dict[str, list[str]]:
    real = results["memory_ceiling"][tag]["real"]
    return {kind: sorted(real[kind], key=int) for kind in MEMORY_KINDS if kind in real}


def _cell(by_gap: Mapping[str, Any] | None, kind: str, gap: str, key: str = "memory"):
    if not by_gap:
        return None
    return by_gap.get(kind, {}).get(gap, {}).get(key)


def memory_rows(results: Mapping[str, Any], tag: str) -> list[tuple[str, Mapping | None]]:
    """(row label, per-kind-and-gap summary) for every mixer x mode, then real / VAE / chance."""
    rows: list[tuple[str, Mapping | None]] = []
    for name in results["config"]["mixers"]:
        mem = results["mixers"][name].get("memory", {}).get(tag, {})
        rows += [(f"{name} ({mode})", r["by_gap"]) for mode, r in mem.items()]
    ceiling = results["memory_ceiling"][tag]
    rows.append(("real videos", ceiling["real"]))
    if "vae" in ceiling:
        rows.append(("real through the VAE (ceiling)", ceiling["vae"]))
    rows.append(("shuffled real videos (chance)", ceiling["chance"]))
    return rows


SCORE_NAMES = {"occlusion": "re-identification", "panorama": "revisit", "periodic": "event kept"}
DETAIL = {"occlusion": ["reid_colour", "reid_shape", "position_accuracy", "position_error"],
          "panorama": ["revisit_error", "revisit_spread"],
          "periodic": ["period_kept"]}  # fmt: skip


def memory_markdown(results: Mapping[str, Any]) -> list[str]:
    """The "score vs gap length" section: headline per kind and gap for every mixer and mode,
    with the real, VAE-ceiling and chance rows, then the detail scores."""
    cfg = results["config"]
    lines: list[str] = []
    for tag in results["memory_ceiling"]:
        frames = results["memory_ceiling"][tag]["frames"]
        gaps = _gaps(results, tag)
        cols = [(k, g) for k, gs in gaps.items() for g in gs]
        lines += [f"## Memory: score vs gap length at {tag} ({frames} frames)", ""]
        lines.append(markdown_table(
            ["", *[f"{SCORE_NAMES[k]} gap {g}" for k, g in cols]],
            [[label, *[_cell(s, k, g) for k, g in cols]] for label, s in memory_rows(results, tag)],
        ))  # fmt: skip
        m = cfg.get("memory", {})
        lines += [
            "",
            f"Means over {m.get('seeds')} videos per prompt and mode; the training clips are "
            f"{results['memory_ceiling'][tag]['train_frames']} frames long, so a gap longer than "
            "that was never seen whole in training. Chance: each segment between two "
            "sightings from another real video of the same caption (docs/evaluation.md). "
            "Plot: `ablation_memory.png`.",
            "",
            "Detail (same rows):",
            "",
        ]
        detail = [(k, g, d) for k, g in cols for d in DETAIL[k]]
        lines.append(markdown_table(
            ["", *[f"{d} {k[:5]} {g}" for k, g, d in detail]],
            [[label, *[_cell(s, k, g, d) for k, g, d in detail]]
             for label, s in memory_rows(results, tag)],
        ))  # fmt: skip
        lines.append("")
    return lines


def plot_memory(results: Mapping[str, Any], path: Path) -> Path | None:
    """`ablation_memory.png`: per scene kind, the headline score vs gap length, a line per
    mixer and mode, the VAE ceiling dashed and chance dotted (the longest length)."""
    if not results.get("memory_ceiling"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tag = list(results["memory_ceiling"])[-1]
    gaps = _gaps(results, tag)
    fig, axes = plt.subplots(1, len(gaps), figsize=(4.6 * len(gaps), 3.6), squeeze=False)
    rows = memory_rows(results, tag)
    for ax, (kind, gs) in zip(axes[0], gaps.items(), strict=True):
        x = [int(g) for g in gs]
        for label, summary in rows:
            y = [_cell(summary, kind, g) for g in gs]
            y = [math.nan if v is None else v for v in y]
            style = ("k--" if "ceiling" in label else "k:" if "chance" in label
                     else None if label == "real videos" else "o-")  # fmt: skip
            if style is None:
                continue  # real videos score 1 by construction (tested), the VAE row is the bar
            ax.plot(x, y, style, label=label)
        ax.set(xscale="log", xlabel="gap (frames)", ylabel=SCORE_NAMES[kind],
               title=f"{kind} at {tag}", ylim=(-0.02, 1.02))  # fmt: skip
        ax.minorticks_off()
        ax.set_xticks(x, [str(g) for g in x])
    axes[0][0].legend(fontsize=7)
    return save_figure(fig, path)


def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Lay out, write and close a matplotlib figure; atomic (a temporary file renamed into
    place), so a crash never leaves a half-written picture under `path`."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
    return path
