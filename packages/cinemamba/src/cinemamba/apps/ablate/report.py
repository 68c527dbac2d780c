"""The `cinemamba ablate` report: `ablation.md` (tables) and `ablation.png` (plots) from the
results dict of `cinemamba.apps.ablate.run_ablation`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cinemamba.apps.ablate.memory import memory_markdown, plot_memory, save_figure
from cinemamba.apps.demo.runner import write_json
from cinemamba.eval.tables import flat_scores, markdown_table


def _score(scores: Mapping[str, Any], key: str) -> float | None:
    """A score by its `a/b` path in a nested score dict (None when absent)."""
    node: Any = scores
    for part in key.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, int | float) else None


def _fvd(length: Mapping[str, Any]) -> Mapping[str, Any]:
    """A length's FVD record (`{}` in results written before FVD existed)."""
    return length.get("fvd") or {}


def fvd_markdown(results: Mapping[str, Any]) -> list[str]:
    """The FVD_16 table (one row per mixer, a column per length, videos per side) and the drift
    table at the longest length (one FVD and flicker column per mixer, the real flicker)."""
    ceiling = results["ceiling"]
    mixers = {n: results["mixers"][n] for n in results["config"]["mixers"]}
    tags = list(ceiling)
    lines = ["## FVD_16 by generated length (I3D features vs real videos of that length)", ""]
    records = [_fvd(m["lengths"][t]) for m in mixers.values() for t in tags]
    skipped = next((r["skipped"] for r in records if "skipped" in r), None)
    if skipped or not records or not any("fvd" in r for r in records):
        return [*lines, f"FVD_16 was skipped: {skipped or 'not computed in these results'}.", ""]

    def videos(t: str) -> str:
        counts = {(_fvd(m["lengths"][t]).get("generated_videos"),
                   _fvd(m["lengths"][t]).get("real_videos")) for m in mixers.values()}  # fmt: skip
        return ", ".join(f"{g} / {r}" for g, r in sorted(counts, key=str))

    lines.append(markdown_table(
        ["mixer", *[f"FVD_16 {t} ({ceiling[t]['frames']} f)" for t in tags]],
        [[n, *[_fvd(m["lengths"][t]).get("fvd") for t in tags]] for n, m in mixers.items()]
        + [["real, other seeds (bias floor)", *[_fvd(ceiling[t]).get("fvd") for t in tags]]],
    ))  # fmt: skip
    lines += [
        "",
        "Videos per figure (generated / real): "
        + "; ".join(f"{t}: {videos(t)}" for t in tags)
        + ". One 16-frame clip per video (generated from frame 0, real at a seeded random "
        "offset); the real videos are the same prompts rendered at that length, featurized once "
        "for all mixers. Small sets carry a large bias (docs/evaluation.md): compare mixers at "
        "equal counts only; the bias-floor row is as many real videos of other seeds as a mixer "
        "generates, against the same real set: what a perfect model would score.",
        "",
    ]
    drifts = {n: m["lengths"][tags[-1]].get("drift") for n, m in mixers.items()}
    drifts = {n: d for n, d in drifts.items() if d and d.get("rows")}
    if drifts:
        first = next(iter(drifts.values()))
        seg = first["seg_frames"]
        k = max(len(d["rows"]) for d in drifts.values())
        rows = []
        for i in range(k):
            row: list[Any] = [f"{i * seg}–{(i + 1) * seg}"]
            for d in drifts.values():
                r = d["rows"][i] if i < len(d["rows"]) else {}
                row += [r.get("fvd"), r.get("flicker")]
            rows.append(row)
        head = ["frames", *[f"{n} {what}" for n in drifts for what in ("FVD", "flicker")]]
        lines += [
            f"## Drift over time at {tags[-1]} ({ceiling[tags[-1]]['frames']} frames)",
            "",
            markdown_table(head, rows),
            "",
            f"FVD_{seg} of each successive segment against all {first['real']['segments']} "
            f"segments of {first['real']['videos']} real videos; flicker = mean |Δframe| on [0, 1] "
            f"(real videos: {first['real']['flicker']:.4g}). Plot: `ablation_drift.png`.",
            "",
        ]
    return lines


def cost_cells(m: Mapping[str, Any]) -> list[Any]:
    """Width, MLP hidden, GFLOPs/step, step ms and tokens/s of a mixer (None in results
    written before these were measured)."""
    flops, step = m.get("flops_per_step"), m.get("step_seconds")
    return [m.get("hidden_size"), m.get("mlp_hidden"), None if flops is None else flops / 1e9,
            None if step is None else 1000 * step, m.get("tokens_per_second")]  # fmt: skip


def match_note(cfg: Mapping[str, Any], mixers: Mapping[str, Any]) -> list[str]:
    """The sentence saying how each mixer's size was set, with its difference to the
    reference in the matched quantity."""
    mode = cfg.get("match", "none")
    if mode == "none":
        return ["Every mixer at the experiment's width (`match: none`).", ""]
    key = {"params": "params", "flops": "flops_per_step"}[mode]
    ref_name, ref = next(iter(mixers.items()))
    diffs = ", ".join(f"{n} {100 * (m[key] / ref[key] - 1):+.2f} %"
                      for n, m in mixers.items() if n != ref_name and m.get(key))  # fmt: skip
    return [f"`match: {mode}`: every mixer's width and MLP hidden size set so that its "
            f"{'parameters' if mode == 'params' else 'counted training FLOPs per step'} are "
            f"within 2 % of the reference {ref_name}'s: {diffs}.", ""]  # fmt: skip


def to_markdown(results: Mapping[str, Any]) -> str:
    """`ablation.md`: setup, cost per mixer, scores per length, scores per quarter."""
    cfg, ceiling = results["config"], results["ceiling"]
    mixers = {n: results["mixers"][n] for n in cfg["mixers"]}  # config order (JSON sorts keys)
    tags = list(ceiling)
    frames = {t: ceiling[t]["frames"] for t in tags}
    first = next(iter(mixers.values()))
    rows_of = {**{n: m["lengths"] for n, m in mixers.items()}, "real videos (ceiling)": ceiling}
    found = [k for k, _ in flat_scores(ceiling[tags[0]]["scores"])
             if not k.startswith("quarters/")] if tags else []  # fmt: skip
    keys = [k for k in cfg["eval"]["headline"] if k in found] + [
        k for k in found if k not in cfg["eval"]["headline"]
    ]
    e = cfg["eval"]
    generated = (
        f"{first['lengths'][tags[0]]['videos']} prompts generated at "
        + ", ".join(f"{t} = {frames[t]} frames" for t in tags)
        + f" ({e['steps']} solver steps, guidance {e['guidance']}, mode `{e['mode']}`)."
        if tags
        else ""
    )
    mem = cfg.get("memory") or {}
    if mem.get("prompts"):
        generated += (
            f" {len(mem['prompts'])} memory prompts generated at "
            + ", ".join(f"{m}x" for m in mem["lengths"])
            + f" in modes {', '.join(mem['modes'])} ({e['steps']} solver steps, guidance "
            f"{e['guidance']})."
        )
    lines = [
        "# Temporal mixer ablation",
        "",
        f"Demo config `{cfg['demo']}` (overrides: {cfg['demo_overrides'] or 'none'}); every mixer "
        f"trains {cfg['steps']} steps of batch {first['batch_size']} on the same latents with seed "
        f"{cfg['seed']} (backbone overrides: {cfg['overrides'] or 'none'}). " + generated.strip(),
        "",
        "## Cost",
        "",
        *match_note(cfg, mixers),
        markdown_table(
            ["mixer", "blocks", "params", "width", "MLP hidden", "GFLOPs/step", "step ms",
             "tokens/s", "train s", "peak RSS MiB", "train-step peak MiB", "final loss",
             *[f"s/video {t}" for t in tags], *[f"sampling peak MiB {t}" for t in tags]],
            [[n, "+".join(m["pattern"]), m["params"], *cost_cells(m), m["train_seconds"],
              m["peak_rss_mib"], m["step_peak_mib"], m["final_loss"],
              *[m["lengths"][t]["seconds_per_video"] for t in tags],
              *[m["lengths"][t]["sample_peak_mib"] for t in tags]] for n, m in mixers.items()],
        ),
        "",
    ]  # fmt: skip
    if results.get("memory_ceiling"):
        lines += memory_markdown(results)
    if not tags:  # a memory-only ablation (eval.lengths empty)
        return "\n".join(lines) + "\n"
    lines += [
        "## Scores by generated length (whole video)",
        "",
        markdown_table(
            ["mixer", "length", *keys],
            [[n, f"{t} ({frames[t]} f)", *[_score(r[t]["scores"], k) for k in keys]]
             for n, r in rows_of.items() for t in tags],
        ),
        "",
        *fvd_markdown(results),
        f"## Along the video: per quarter at {tags[-1]} ({frames[tags[-1]]} frames)",
        "",
        markdown_table(
            ["mixer", "score", "q1", "q2", "q3", "q4"],
            [[n, k, *[_score(r[tags[-1]]["scores"], f"quarters/q{q}/{k}") for q in range(1, 5)]]
             for n, r in rows_of.items() for k in e["headline"]],
        ),
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


# One look per mixer: lines that coincide stay visible (hollow markers of different shapes and
# sizes, the first drawn largest, under the others; different dashes).
_MARKERS = ["o", "s", "^", "D", "v", "P", "X"]
_DASHES = ["-", "--", "-.", ":"]


def draw_scores(ax: Any, head: str, frames: list[int], series: Mapping[str, list[float | None]],
                ceiling: list[float | None]) -> None:  # fmt: skip
    """One headline score vs generated frames on `ax`, the y-axis fitted to the mixers' values;
    the real videos' ceiling is drawn where it fits that axis and otherwise named in the title
    (a ceiling near 1 would squash mixers that all score under 0.2 into a flat band)."""
    values = [v for vals in series.values() for v in vals if v is not None]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    pad = max(0.08 * (hi - lo), 0.02)
    ylim = (lo - pad, hi + pad)
    for k, (name, vals) in enumerate(series.items()):
        ax.plot(frames, [np.nan if v is None else v for v in vals], label=name,
                marker=_MARKERS[k % len(_MARKERS)], linestyle=_DASHES[k % len(_DASHES)],
                markersize=max(10 - 1.5 * k, 4), markerfacecolor="none", markeredgewidth=1.5,
                zorder=2 + k)  # fmt: skip
    real = [v for v in ceiling if v is not None]
    title = head
    if real and ylim[0] <= min(real) and max(real) <= ylim[1]:
        ax.plot(frames, [np.nan if v is None else v for v in ceiling], "k--", lw=1, label="real")
    elif real:
        title = f"{head}\n(real videos {min(real):.2f}–{max(real):.2f}, off this axis)"
    ax.set(xlabel="generated frames", ylabel=head, title=title, xscale="log", ylim=ylim)
    ax.title.set_fontsize(9)
    ax.minorticks_off()  # log axis: label only the generated lengths
    ax.set_xticks(frames, [str(f) for f in frames])


def plot(results: Mapping[str, Any], path: Path) -> Path:
    """`ablation.png`: each headline score vs generated frames per mixer (`draw_scores`), and
    train time and memory per mixer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ceiling = results["ceiling"]
    mixers = {n: results["mixers"][n] for n in results["config"]["mixers"]}  # config order
    tags = list(ceiling)
    heads = list(results["config"]["eval"]["headline"]) if tags else []
    frames = [ceiling[t]["frames"] for t in tags]
    cols = 3
    rows = -(-(len(heads) + 2) // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[len(heads) + 2 :]:
        ax.set_visible(False)
    for ax, head in zip(axes, heads, strict=False):
        series = {
            n: [_score(m["lengths"][t]["scores"], head) for t in tags] for n, m in mixers.items()
        }
        draw_scores(ax, head, frames, series, [_score(ceiling[t]["scores"], head) for t in tags])
    if heads:
        axes[0].legend(fontsize=8)
    names = list(mixers)
    x = np.arange(len(names))
    ax = axes[len(heads)]
    ax.bar(x, [mixers[n]["train_seconds"] for n in names], color="tab:blue")
    ax.set(title="train time", ylabel="seconds")
    ax.set_xticks(x, names, rotation=20, fontsize=8)
    ax = axes[len(heads) + 1]
    width = 0.8 / (1 + len(tags))
    ax.bar(
        x - 0.4 + width / 2, [mixers[n]["step_peak_mib"] for n in names], width, label="train step"
    )
    for k, t in enumerate(tags, 1):
        ax.bar(x - 0.4 + width * (k + 0.5), [mixers[n]["lengths"][t]["sample_peak_mib"] for n in names],
               width, label=f"sample {t}")  # fmt: skip
    ax.set(title="peak tensor memory", ylabel="MiB")
    ax.set_xticks(x, names, rotation=20, fontsize=8)
    ax.legend(fontsize=7)
    return save_figure(fig, path, dpi=110)


def plot_drift(results: Mapping[str, Any], path: Path) -> Path | None:
    """`ablation_drift.png`: segment FVD and flicker along the longest videos, one curve per
    mixer, the real videos' flicker dashed; None when no mixer has a drift table."""
    tags = list(results["ceiling"])
    if not tags:
        return None
    mixers = {n: results["mixers"][n] for n in results["config"]["mixers"]}
    drifts = {n: m["lengths"][tags[-1]].get("drift") for n, m in mixers.items()}
    drifts = {n: d for n, d in drifts.items() if d and d.get("rows")}
    if not drifts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_fvd, ax_flick) = plt.subplots(1, 2, figsize=(10, 3.6))
    for n, d in drifts.items():
        x = [r["start"] for r in d["rows"]]
        ax_fvd.plot(x, [np.nan if r["fvd"] is None else r["fvd"] for r in d["rows"]], "o-", label=n)
        ax_flick.plot(x, [r["flicker"] for r in d["rows"]], "o-", label=n)
    real = next(iter(drifts.values()))["real"]["flicker"]
    if real is not None:
        ax_flick.axhline(real, color="k", ls="--", lw=1, label="real videos")
    seg = next(iter(drifts.values()))["seg_frames"]
    ax_fvd.set(xlabel="segment start frame", ylabel=f"FVD_{seg}", title="segment FVD vs real")
    ax_flick.set(xlabel="segment start frame", ylabel="mean |Δframe| ([0, 1])", title="flicker")
    ax_fvd.legend(fontsize=8)
    ax_flick.legend(fontsize=8)
    return save_figure(fig, path, dpi=100)


def write_report(results: Mapping[str, Any], out: Path) -> tuple[Path, Path, Path]:
    """Write `ablation.json`, `ablation.md` and `ablation.png` under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "ablation.json", results)
    md = out / "ablation.md"
    tmp = md.with_name(".ablation.md.tmp")
    tmp.write_text(to_markdown(results))
    os.replace(tmp, md)
    plot_drift(results, out / "ablation_drift.png")
    plot_memory(results, out / "ablation_memory.png")
    return out / "ablation.json", md, plot(results, out / "ablation.png")
