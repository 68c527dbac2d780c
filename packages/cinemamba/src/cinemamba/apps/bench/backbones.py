"""Backbone crossover benchmark (issue 20, item 4): VideoDiTs of matched parameters per mixer.

For every mixer (temporal mixers and block kinds alike: whatever ``BackboneConfig.mixer``
accepts) it measures forward+backward CPU time and peak tensor memory against the latent
length, per tokens-per-frame, fits log-log slopes, and interpolates where two mixers' time
curves cross. A mixer this install does not know is skipped with a printed note (``full3d``
lands on another branch). A mixer's series stops at the first point over the time cap, or
before a point whose time, extrapolated from the last two, would exceed three caps.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cinemamba.apps.bench.measure import Figure, Section, cpu_timed, repeat_times, slope
from cinemamba_backbone import BackboneConfig, VideoDiT
from cinemamba_sampling import peak_memory

PLOT = Path(__file__).parents[6] / "docs" / "backbones_crossover.png"


@dataclass(frozen=True)
class BackbonesScale:
    """Grid of the crossover benchmark."""

    mixers: tuple[str, ...] = ("bimamba", "bimamba2", "attention", "full3d")
    frames: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512)
    tokens: tuple[int, ...] = (64, 256)  # tokens per latent frame after patching
    reference: str = "bimamba"  # the mixer whose parameter count the others match
    preset: str = "tiny"
    depth: int = 2
    repeats: int = 3  # per point; points over `one_repeat_s` are measured once
    one_repeat_s: float = 2.0
    cap_s: float = 20.0  # per-point time cap (CPU seconds of one forward+backward)
    # Per-point peak-memory cap: the longest lengths at 256 tokens a frame would otherwise take
    # most of a shared machine's free memory.
    cap_mb: float = 6144.0
    ratio_frames: int = 256  # block ratio before/after the fused bidirectional scan
    ratio_repeats: int = 5
    # Block against block (issue 20's target): bimamba vs an equal-parameter full-3D block.
    full3d_frames: tuple[int, ...] = (8, 16, 32)
    plot: Path | None = PLOT


@dataclass
class Series:
    """One mixer at one tokens-per-frame: measured lengths, times, peaks, and why it stopped."""

    mixer: str
    tokens: int
    params: int
    frames: list[int]
    seconds: list[float]
    peak_mb: list[float]
    stopped: str = ""


def config_for(mixer: str, preset: str, depth: int, hidden: int | None = None) -> BackboneConfig:
    """The benchmark's VideoDiT config for ``mixer`` (ValueError if this install lacks it)."""
    extra = {"hidden_size": hidden} if hidden else {}
    # Mamba-2 heads of 16 channels keep bimamba2's valid widths fine-grained for matching.
    return BackboneConfig.from_preset(
        preset, depth=depth, mixer=mixer, in_channels=4, text_dim=32, ssd_headdim=16, **extra
    )


def registered(mixers: Sequence[str], preset: str = "tiny") -> tuple[list[str], list[str]]:
    """Split ``mixers`` into (known to this install, notes for those that are skipped)."""
    known, notes = [], []
    for name in mixers:
        try:
            config_for(name, preset, 1)
        except ValueError as err:
            notes.append(f"mixer {name!r} skipped: not registered in this install ({err})")
            continue
        known.append(name)
    return known, notes


def param_count(config: BackboneConfig) -> int:
    """Parameters of a VideoDiT built from ``config``."""
    return sum(p.numel() for p in VideoDiT(config).parameters())


def match_width(
    params_at: Callable[[int], int | None], target: int, start: int, step: int = 4
) -> tuple[int, int]:
    """Width in [start/2, 2·start] (multiples of ``step``) whose parameter count is closest
    to ``target``; ``params_at`` returns None for an invalid width. Returns (width, params)."""
    best: tuple[int, int] | None = None
    for width in range(max(step, (start // 2) // step * step), 2 * start + 1, step):
        params = params_at(width)
        if params is not None and (best is None or abs(params - target) < abs(best[1] - target)):
            best = (width, params)
    if best is None:
        raise ValueError(f"no valid width in [{start // 2}, {2 * start}] to match {target}")
    return best


def matched_widths(scale: BackbonesScale, mixers: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Per mixer: (hidden size, params) matching the reference mixer's parameter count."""
    ref_cfg = config_for(scale.reference, scale.preset, scale.depth)
    target = param_count(ref_cfg)

    def params_at(mixer: str, width: int) -> int | None:
        try:
            return param_count(config_for(mixer, scale.preset, scale.depth, width))
        except ValueError:
            return None

    out = {}
    for m in mixers:
        if m == scale.reference:
            out[m] = (ref_cfg.hidden_size, target)
        else:
            out[m] = match_width(lambda w, m=m: params_at(m, w), target, ref_cfg.hidden_size)
    return out


def crossover(xs: Sequence[float], ya: Sequence[float], yb: Sequence[float]) -> float | None:
    """First length where curve a crosses curve b, interpolated linearly in log-log between
    the bracketing points; None if they do not cross over the common points."""
    d = [math.log(a) - math.log(b) for a, b in zip(ya, yb, strict=True)]
    for i in range(len(d) - 1):
        if d[i] == 0:
            return float(xs[i])
        if d[i] * d[i + 1] < 0:
            f = d[i] / (d[i] - d[i + 1])
            return math.exp(math.log(xs[i]) + f * (math.log(xs[i + 1]) - math.log(xs[i])))
    return float(xs[-1]) if d and d[-1] == 0 else None


def _inputs(frames: int, tokens: int, cfg: BackboneConfig) -> tuple[torch.Tensor, ...]:
    side = math.isqrt(tokens) * cfg.patch_size  # latent h = w so that (h/p)(w/p) = tokens
    if (side // cfg.patch_size) ** 2 != tokens:
        raise ValueError(f"tokens per frame {tokens} is not a square number")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg.in_channels, frames, side, side, generator=g)
    return x, torch.rand(1, generator=g), torch.randn(1, 8, cfg.text_dim, generator=g)


def _step(model: VideoDiT, inputs: tuple[torch.Tensor, ...]) -> Callable[[], None]:
    x, t, text = inputs

    def run() -> None:
        model.zero_grad(set_to_none=True)
        model(x, t, text).square().mean().backward()

    return run


def stop_before(series: Series, frames: int, scale: BackbonesScale) -> str:
    """Why the next point (``frames``) is not measured, or "": its time or peak extrapolated
    in log-log from the last two points exceeds 3 time caps or the memory cap."""
    if len(series.seconds) < 2:
        return ""
    span = math.log(frames / series.frames[-1]) / math.log(series.frames[-1] / series.frames[-2])
    guess = series.seconds[-1] * (series.seconds[-1] / series.seconds[-2]) ** span
    guess_mb = series.peak_mb[-1] * (series.peak_mb[-1] / series.peak_mb[-2]) ** span
    if guess > 3 * scale.cap_s:
        return f"stopped before T={frames}: extrapolated {guess:.0f} s"
    if guess_mb > scale.cap_mb:
        return f"stopped before T={frames}: extrapolated peak {guess_mb:.0f} MB > cap"
    return ""


def measure_series(
    mixer: str, hidden: int, params: int, tokens: int, scale: BackbonesScale, log=print
) -> Series:
    """Time and peak memory of one mixer over the lengths, under the time cap."""
    cfg = config_for(mixer, scale.preset, scale.depth, hidden)
    torch.manual_seed(0)
    model = VideoDiT(cfg)
    series = Series(mixer, tokens, params, [], [], [])
    for frames in scale.frames:
        series.stopped = stop_before(series, frames, scale)
        if series.stopped:
            break
        step = _step(model, _inputs(frames, tokens, cfg))
        first = cpu_timed(step)  # also the warm-up (first-use allocations, kernel build)
        times = [first] if first > scale.one_repeat_s else repeat_times(step, scale.repeats, 0)
        _, peak = peak_memory(step)
        series.frames.append(frames)
        series.seconds.append(statistics.median(times))
        series.peak_mb.append(peak / 2**20)
        log(f"  backbones {mixer} tokens={tokens} T={frames}: {series.seconds[-1]:.3f} s, "
            f"{series.peak_mb[-1]:.0f} MB")  # fmt: skip
        if series.seconds[-1] > scale.cap_s:
            series.stopped = f"stopped after T={frames}: {series.seconds[-1]:.0f} s > cap"
            break
    return series


def _block(mixer: str, width: int, heads: int = 2) -> torch.nn.Module:
    """One block of ``mixer`` (a temporal mixer, or ``full3d``) at ``width``."""
    from cinemamba_backbone.full3d import Full3DBlock
    from cinemamba_backbone.mixers import MixerOptions, build_mixer
    from cinemamba_backbone.model import VideoDiTBlock

    torch.manual_seed(0)
    if mixer == "full3d":
        return Full3DBlock(width, heads, 4.0)
    return VideoDiTBlock(width, heads, 4.0, build_mixer(mixer, width, MixerOptions()))


def _block_step(block: torch.nn.Module, frames: int, tokens: int, width: int) -> Callable[[], None]:
    """Forward+backward of ``block`` on one random clip of ``frames`` × ``tokens``."""
    side = math.isqrt(tokens)
    x = torch.randn(1, frames, tokens, width, requires_grad=True)
    c, text = torch.randn(1, frames, width), torch.randn(1, 8, width)
    mask = torch.ones(1, 8, dtype=torch.bool)
    return lambda: block(x, c, text, mask, size=(side, side))[0].square().mean().backward()


def _params(block: torch.nn.Module) -> int:
    return sum(p.numel() for p in block.parameters())


def block_ratio(scale: BackbonesScale, tokens: int) -> list[Figure]:
    """One VideoDiTBlock of bimamba (each CPU form, see ``BiMamba``) vs an equal-parameter
    temporal attention block at ``ratio_frames``: interleaved repeats, so all see the same
    load."""
    dim = BackboneConfig.from_preset(scale.preset).hidden_size
    target = _params(_block("bimamba", dim))
    width, _ = match_width(lambda w: _params(_block("attention", w)), target, dim)
    blocks = {"bimamba": _block("bimamba", dim), "attention": _block("attention", width)}
    steps = {
        name: _block_step(blk, scale.ratio_frames, tokens, dim if name == "bimamba" else width)
        for name, blk in blocks.items()
    }
    # BiMamba's CPU forms as (fused, stacked, channels_last): two scan calls (before issue
    # 20), one call over the time-flipped input (its first round), flip-free with stacked
    # convs on the row kernels (its second), the channels-last core (now).
    forms = {"two-call": (False, True, False), "flipped": (True, False, False),
             "stacked": (True, True, False), "channels-last": (True, True, True)}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in [*forms, "attention"]}
    bim = blocks["bimamba"].temporal

    def run(name: str) -> float:
        bim.fused, bim.stacked, bim.channels_last = forms.get(name, (True, True, True))
        return cpu_timed(steps["attention" if name == "attention" else "bimamba"])

    for name in times:  # warm-up
        run(name)
    for _ in range(scale.ratio_repeats):
        for name in times:
            times[name].append(run(name))
    bim.fused, bim.stacked, bim.channels_last = True, True, True
    ref = f"attention block (width {width}, params matched to bimamba's at width {dim})"
    labels = {"two-call": "before (two scan calls)", "flipped": "one flipped scan call",
              "stacked": "flip-free, stacked convs (row kernels)",
              "channels-last": "after (channels-last core)"}  # fmt: skip
    return [
        Figure("backbones", f"bimamba block {label} fwd+bwd T={scale.ratio_frames} "
               f"tokens={tokens}", "s", times[key], times["attention"], ref,
               target=1.2 if key == "channels-last" else None)
        for key, label in labels.items()
    ]  # fmt: skip


def full3d_block_ratios(scale: BackbonesScale, tokens: int) -> list[Figure]:
    """A bimamba block vs a full-3D block of equal parameters at the short lengths, block
    against block (issue 20's target: bimamba faster from the smallest length on), with
    interleaved repeats; a ratio below 1 means bimamba is faster."""
    dim = BackboneConfig.from_preset(scale.preset).hidden_size
    target = _params(_block("bimamba", dim))
    # full3d has no temporal mixer's parameters, so at equal parameters it is wider.
    width, _ = match_width(lambda w: _params(_block("full3d", w)), target, dim)
    blocks = {"bimamba": (_block("bimamba", dim), dim), "full3d": (_block("full3d", width), width)}
    ref = f"full3d block (width {width}, params matched to bimamba's at width {dim})"
    figures = []
    for frames in scale.full3d_frames:
        steps = {k: _block_step(b, frames, tokens, w) for k, (b, w) in blocks.items()}
        times: dict[str, list[float]] = {k: [] for k in steps}
        for step in steps.values():  # warm-up
            cpu_timed(step)
        for _ in range(scale.ratio_repeats):
            for k, step in steps.items():
                times[k].append(cpu_timed(step))
        figures.append(Figure("backbones", f"bimamba block vs full3d block fwd+bwd T={frames} "
                              f"tokens={tokens}", "s", times["bimamba"], times["full3d"], ref,
                              target=1.0))  # fmt: skip
    return figures


def series_table(all_series: Sequence[Series]) -> list[str]:
    """Markdown: per mixer and tokens, time and peak per length, slope, and where it stopped."""
    frames = sorted({f for s in all_series for f in s.frames})
    head = "| mixer | tokens/frame | params | " + " | ".join(f"T={f}" for f in frames)
    lines = [head + " | slope (time) | slope (memory) | note |"]
    lines.append("|" + "---|" * (len(frames) + 6))
    for s in all_series:
        cells = []
        for f in frames:
            if f in s.frames:
                i = s.frames.index(f)
                cells.append(f"{s.seconds[i]:.3g} s / {s.peak_mb[i]:.0f} MB")
            else:
                cells.append("—")
        fit = len(s.frames) >= 2
        st = f"{slope(s.frames, s.seconds):.2f}" if fit else "—"
        sm = f"{slope(s.frames, s.peak_mb):.2f}" if fit else "—"
        lines.append(f"| {s.mixer} | {s.tokens} | {s.params:,} | " + " | ".join(cells)
                     + f" | {st} | {sm} | {s.stopped} |")  # fmt: skip
    return lines


def crossover_lines(all_series: Sequence[Series], pairs: Sequence[tuple[str, str]]) -> list[str]:
    """Markdown bullets: the measured crossover length of each pair per tokens-per-frame."""
    out = []
    by_key = {(s.mixer, s.tokens): s for s in all_series}
    for tokens in sorted({s.tokens for s in all_series}):
        for a, b in pairs:
            sa, sb = by_key.get((a, tokens)), by_key.get((b, tokens))
            if sa is None or sb is None:
                continue
            common = [f for f in sa.frames if f in sb.frames]
            if len(common) < 2:
                out.append(f"- {a} vs {b}, {tokens} tokens/frame: too few common lengths")
                continue
            ya = [sa.seconds[sa.frames.index(f)] for f in common]
            yb = [sb.seconds[sb.frames.index(f)] for f in common]
            x = crossover(common, ya, yb)
            if x is None:
                faster = a if ya[-1] < yb[-1] else b
                out.append(f"- {a} vs {b}, {tokens} tokens/frame: no crossing in "
                           f"T={common[0]}…{common[-1]}; {faster} is faster throughout")  # fmt: skip
            else:
                after = a if ya[-1] < yb[-1] else b
                out.append(f"- {a} vs {b}, {tokens} tokens/frame: curves cross at T ≈ {x:.0f}; "
                           f"{after} is faster beyond")  # fmt: skip
    return out


def plot(all_series: Sequence[Series], path: Path) -> None:
    """Log-log time vs latent length, one panel per tokens-per-frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = sorted({s.tokens for s in all_series})
    fig, axes = plt.subplots(1, len(tokens), figsize=(5 * len(tokens), 4), squeeze=False)
    for ax, tok in zip(axes[0], tokens, strict=True):
        for s in (s for s in all_series if s.tokens == tok):
            ax.loglog(s.frames, s.seconds, "o-", label=f"{s.mixer} ({s.params / 1e3:.0f}k params)")
        ax.set(title=f"{tok} tokens/frame", xlabel="latent frames T", ylabel="fwd+bwd CPU s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)  # never a half-written plot under the final name


def backbones(scale: BackbonesScale, log=print) -> Section:
    """The `backbones` section: series table, slopes, crossovers, plot, block ratio."""
    mixers, notes = registered(scale.mixers, scale.preset)
    for note in notes:
        log(note)
    section = Section("backbones", "Backbone crossover (VideoDiTs of matched parameters)")
    widths = matched_widths(scale, mixers)
    all_series = []
    for tokens in scale.tokens:
        for m in mixers:
            hidden, params = widths[m]
            all_series.append(measure_series(m, hidden, params, tokens, scale, log))
    section.lines += [
        f"VideoDiT preset {scale.preset!r}, depth {scale.depth}, batch 1; widths matched to "
        f"{scale.reference}'s parameters: "
        + ", ".join(f"{m} {w} ({p:,})" for m, (w, p) in widths.items())
        + f". Forward+backward CPU seconds (median of {scale.repeats}, one run above "
        f"{scale.one_repeat_s:g} s) / peak tensor MB; caps per point: {scale.cap_s:g} s "
        f"(measured, or 3× that extrapolated) and {scale.cap_mb:.0f} MB (extrapolated).",
        "",
        *series_table(all_series),
        "",
        *crossover_lines(all_series, [("bimamba", "attention"), ("bimamba", "full3d"),
                                      ("bimamba2", "attention")]),
    ]  # fmt: skip
    if notes:
        section.lines += ["", *(f"- {n}" for n in notes)]
    if scale.plot is not None:
        plot(all_series, scale.plot)
        section.lines += ["", f"![crossover]({scale.plot.name})"]
    for tokens in scale.tokens[:1]:
        section.figures += block_ratio(scale, tokens)
        if "full3d" in mixers:
            section.figures += full3d_block_ratios(scale, tokens)
    return section
