"""report.md and the top-level metrics.json of a demo run.

Everything in the report is read from the stage outputs and stamps of this output folder:
the scores from evaluate/metrics.json, the stage times from each stage's stamp (a reused
stage reports the time of the run that produced it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from cinemamba.apps.demo.config import SCORES, DemoConfig
from cinemamba.apps.demo.runner import StageRecord, write_json

LABELS = {
    "colour_accuracy": "colour accuracy",
    "shape_accuracy": "shape accuracy",
    "motion_accuracy": "motion-direction accuracy",
    "identity_persistence": "identity persistence",
    "drift": "long-range drift",
}


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_f(c) for c in row) + " |" for row in rows]
    return lines


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min ({seconds:.0f} s)"


# A generated score this far below the real-via-VAE score is limited by the backbone first.
BACKBONE_GAP = 0.1
# From half to full training, a mode whose score moved this much rose or fell on its own.
MODE_SPLIT = 0.05
# The advice extrapolates the measured gain over at most this many more doublings of the steps.
MAX_DOUBLINGS = 4


def _modes_diverge(groups: Mapping[str, Any], name: str) -> str:
    """A sentence when, from half to full training, one mode's score fell (by more than
    MODE_SPLIT) while another's held or rose: then the mean's trend is not about training time."""
    trend = {}
    for key, group in groups.items():
        kind, _, mode = key.partition("/")
        if kind == "final" and f"half/{mode}" in groups:
            before, after = groups[f"half/{mode}"]["scores"].get(name), group["scores"].get(name)
            if before is not None and after is not None:
                trend[mode] = (before, after)
    fell = [m for m, (b, a) in trend.items() if b - a > MODE_SPLIT]
    kept = [m for m, (b, a) in trend.items() if a >= b]
    if not (fell and kept):
        return ""
    each = ", ".join(f"`{m}` {b:.3f} -> {a:.3f}" for m, (b, a) in trend.items())
    return (
        f" The modes went different ways ({each}): more training kept or raised "
        f"{' and '.join(f'`{m}`' for m in kept)} and lowered "
        f"{' and '.join(f'`{m}`' for m in fell)}, so judge each mode on its own."
    )


def budget_advice(metrics: Mapping[str, Any], cfg: DemoConfig) -> list[str]:
    """For each missed target: what was reached, the measured trend from half to full training,
    and the budget the trend points to (never a claim beyond the measurements)."""
    summary = metrics["summary"]
    groups = summary["groups"]
    steps = cfg.backbone.train.steps
    lines = []
    for name in SCORES:
        if summary["reached"].get(name):
            continue
        target = metrics["targets"][name]
        final = summary["overall"].get(name)
        half_rows = [g["scores"].get(name) for k, g in groups.items() if k.startswith("half/")]
        half_rows = [v for v in half_rows if v is not None]
        half = sum(half_rows) / len(half_rows) if half_rows else None
        text = f"- **{LABELS[name]}**: target {target:.2f}, reached {_f(final)}"
        through_vae = metrics.get("reference_vae", {}).get("scores", {}).get(name)
        vae_bound = through_vae is not None and through_vae < target
        if vae_bound and final is not None and final < through_vae - BACKBONE_GAP:
            text += (
                f" ({_f(half)} after {steps // 2} backbone steps). The backbone limits it first: "
                f"real videos of the same prompts keep {through_vae:.3f} through the demo's VAE. "
                "That VAE is below the target too, so both must improve."
            )
        elif vae_bound:
            text += (
                f" ({_f(half)} after {steps // 2} backbone steps). Real videos of the same "
                f"prompts score only {through_vae:.3f} after an encode and decode by the demo's "
                "VAE, below the target: the VAE's budget or size limits this score before the "
                "backbone does, so it must improve first."
            )
        elif half is not None and final is not None:
            gain = final - half
            text += f" ({_f(half)} after {steps // 2} backbone steps, {_f(final)} after {steps})."
            split = _modes_diverge(groups, name)
            if split:
                text += split
            elif gain > 0.005:
                doublings = 0
                value = final
                while value < target and doublings < MAX_DOUBLINGS:
                    value += gain  # one more doubling at the last measured gain (optimistic)
                    doublings += 1
                if value >= target:
                    text += (
                        f" At the measured gain of {gain:+.3f} per doubling of the backbone "
                        f"steps, about {steps * 2**doublings} steps would reach it"
                        f" ({2**doublings}x the backbone stage's time)."
                    )
                else:
                    text += (
                        f" The measured gain ({gain:+.3f} per doubling) is too small to reach it "
                        f"by training longer alone within {2**MAX_DOUBLINGS}x the steps; the "
                        "data (examples of each colour x shape pair) or the model must change."
                    )
            else:
                text += (
                    " Doubling the steps did not improve it; the limit is elsewhere (the VAE's "
                    "reconstruction, the model's width, or the sampler), not training time."
                )
        else:
            text += "."
        lines.append(text)
    return lines


def fvd_section(fvd: Mapping[str, Any] | None) -> list[str]:
    """The report's FVD table (length, group, FVD_16, videos per side) and drift table + plot."""
    lines = ["## FVD and drift (I3D features vs real synthetic videos)", ""]
    if fvd is None:
        return [*lines, "FVD was not computed (no `fvd` stage output in this folder).", ""]
    if "skipped" in fvd:
        return [*lines, f"FVD was skipped: {fvd['skipped']}", ""]
    rows = [[r["length"], r["frames"], r["group"], r["fvd"], r["generated_videos"],
             r["real_videos"], r["too_short"]] for r in fvd["rows"]]  # fmt: skip
    lines += _table(["length", "frames", "model / mode", "FVD_16", "generated videos",
                     "real videos", "too short (< 16 f)"], rows)  # fmt: skip
    lines += [
        "",
        "FVD_16 (one 16-frame clip per video: generated from frame 0, real at a seeded random "
        "offset; I3D `" + str(fvd.get("i3d", "")) + "`) against real synthetic videos of the "
        "same prompts and length. With so few videos the figure carries a large small-sample "
        "bias (docs/evaluation.md): compare rows only at equal video counts. The `real, other "
        "seeds` rows are that bias floor: as many real videos (seeds no real set uses) as the "
        "generated rows have, against the same real set, i.e. what a perfect model would score.",
        "",
    ]
    drift = fvd.get("drift")
    if drift:
        from cinemamba.eval.drift import drift_markdown

        lines += [f"### Drift over time (`{drift['group']}`, {drift['seg_frames']}-frame "
                  "segments)", "", drift_markdown(drift), "", "![drift](fvd/drift.png)", ""]  # fmt: skip
    return lines


def write_report(
    out: Path, cfg: DemoConfig, records: Sequence[StageRecord], total_seconds: float
) -> tuple[Path, Path]:
    """Write `<out>/metrics.json` and `<out>/report.md`; returns their paths."""
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    stage_seconds = sum(r.seconds for r in records)
    stage_cpu = sum(r.cpu_seconds for r in records)
    metrics["stages"] = [r.as_dict() for r in records]
    metrics["seconds"] = {
        "this_run": round(total_seconds, 1),
        "all_stages": round(stage_seconds, 1),
        "all_stages_cpu": round(stage_cpu, 1),
        "threads": cfg.threads or torch.get_num_threads(),
        "budget": cfg.budget_minutes * 60,
    }
    metrics["config"] = {
        "data": {"videos": cfg.data.videos, "frames": cfg.data.frames, "size": cfg.data.size},
        "generate_frames": cfg.generate.frames,
        "length_ratio": cfg.generate.frames / cfg.data.frames,
        "vae_steps": cfg.vae.train.steps,
        "backbone_steps": cfg.backbone.train.steps,
    }
    fvd_path = out / "fvd" / "fvd.json"
    metrics["fvd"] = json.loads(fvd_path.read_text()) if fvd_path.is_file() else None
    metrics_path = out / "metrics.json"
    write_json(metrics_path, metrics)

    summary, targets = metrics["summary"], metrics["targets"]
    gen, data = cfg.generate, cfg.data
    lines = [
        "# cinemamba demo report",
        "",
        f"A tiny causal VAE and a tiny `{cfg.backbone.task.backbone.mixer}` VideoDiT were trained "
        f"on {data.videos} synthetic videos of {data.frames} frames at {data.size}x{data.size} "
        f"(train split), then generated **{gen.frames}-frame videos "
        f"({gen.frames / data.frames:.1f}x the training clip)** for {len(gen.prompts)} prompts "
        f"in the modes {', '.join(f'`{m}`' for m in gen.modes)} ({gen.steps} solver steps, "
        f"guidance {gen.guidance}). Scores come from the classical ground-truth detector "
        "(`cinemamba.eval.groundtruth`) over the whole generated length.",
        "",
        f"Wall time of all stages: **{_minutes(stage_seconds)}** (budget "
        f"{cfg.budget_minutes:.0f} min), process CPU time {_minutes(stage_cpu)} with "
        f"{metrics['seconds']['threads']} torch thread(s); this invocation took "
        f"{_minutes(total_seconds)} (reused stages cost nothing).",
        "",
        "## Targets",
        "",
    ]
    ref = metrics["reference"]["scores"]
    ref_vae = metrics.get("reference_vae", {}).get("scores", {})
    rows = [
        [
            LABELS[name],
            targets[name],
            summary["overall"][name],
            summary["worst"][name],
            ref.get(name),
            ref_vae.get(name),
            "met" if summary["reached"][name] else "**missed**",
        ]
        for name in SCORES
    ]
    rows.append(["long-range drift", None, summary["overall"].get("drift"), None,
                 ref.get("drift"), ref_vae.get("drift"), ""])  # fmt: skip
    lines += _table(
        ["score", "target", "reached (mean)", "worst video", "real videos", "real via VAE",
         "status"],
        rows,
    )  # fmt: skip
    lines += [
        "",
        "`reached` is the mean over all final videos (every prompt and mode); `real videos` are "
        "real synthetic videos of the same prompts and length scored by the same detector "
        "(its ceiling); `real via VAE` are those videos encoded and decoded by the demo's VAE: "
        "the most a perfect backbone could show through this VAE.",
        "",
    ]
    advice = budget_advice(metrics, cfg)
    if advice:
        lines += ["## Missed targets and the budget that would reach them", "", *advice, ""]
    lines += fvd_section(metrics["fvd"])
    lines += ["## By mode and quarter of the video", ""]
    header = ["model / mode", "score", "all", *[f"Q{q + 1}" for q in range(4)]]
    rows = []
    for key, group in summary["groups"].items():
        for name in SCORES:
            rows.append([key, LABELS[name], group["scores"][name],
                         *[q[name] for q in group["quarters"]]])  # fmt: skip
    lines += _table(header, rows)
    lines += [
        "",
        f"`final` is the backbone after {cfg.backbone.train.steps} steps, `half` its checkpoint "
        f"after {cfg.backbone.train.steps // 2} (measured evidence of what more training buys).",
        "",
        "## Videos",
        "",
    ]
    for video in metrics["videos"]:
        if video["variant"] != "final":
            continue
        held = " (held-out colour x shape pair)" if video["heldout"] else ""
        lines += [
            f'### `{video["mode"]}`: "{video["prompt"]}"{held}',
            "",
            f"{video['frames']} frames: [mp4](generate/{video['mp4']}) · contact sheet (32 "
            "frames evenly spaced over the whole video, first to last):",
            "",
            f"![{video['prompt']}](generate/{video['sheet']})",
            "",
        ]
        q_rows = [
            [LABELS[n], video["scores"][n], *[q[n] for q in video["quarters"]]]
            for n in (*SCORES, "drift")
        ]
        lines += _table(["score", "all", "Q1", "Q2", "Q3", "Q4"], q_rows) + [""]
    lines += ["## Stages", ""]
    lines += _table(
        ["stage", "status", "wall time (s)", "CPU time (s)", "summary"],
        [
            [r.name, r.status, round(r.seconds, 1), round(r.cpu_seconds, 1), _short(r.summary)]
            for r in records
        ],
    )
    lines += [
        "",
        "A reused stage shows the time of the run that made it. Rerun with `--fresh` to redo "
        "every stage.",
        "",
    ]
    report_path = out / "report.md"
    tmp = report_path.with_name(".report.md.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(report_path)
    return metrics_path, report_path


def _short(summary: Mapping[str, Any]) -> str:
    parts = []
    for key, value in summary.items():
        if isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
        elif isinstance(value, int | str):
            parts.append(f"{key} {value}")
    return ", ".join(parts)
