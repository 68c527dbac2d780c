"""`cinemamba bench`: run the benchmarks as functions and regenerate docs/benchmarks.md."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from cinemamba.apps.bench import backbones, fvd, generation, scripts, training
from cinemamba.apps.bench.backbones import BackbonesScale
from cinemamba.apps.bench.fvd import FVDScale
from cinemamba.apps.bench.generation import GenerationScale
from cinemamba.apps.bench.measure import MIN_REPEATS, Section, cpu_model, machine_description
from cinemamba.apps.bench.scripts import KernelScale
from cinemamba.apps.bench.training import TrainScale

log = logging.getLogger(__name__)

BENCHMARKS = (
    "data", "vae", "scan", "backbone", "backbones", "train", "sampling", "growth", "fvd",
)  # fmt: skip
QUICK_TARGET_S = 180.0  # the issue: quick mode < 3 min


@dataclass(frozen=True)
class Scale:
    """Sizes of every benchmark for one mode."""

    data: str = "full"  # scripts/bench_data.py: "full", "quick", or "micro" (tiny, for tests)
    kernels: KernelScale = field(default_factory=KernelScale)
    train: TrainScale = field(default_factory=TrainScale)
    generation: GenerationScale = field(default_factory=GenerationScale)
    notes: tuple[str, ...] = ()  # what this mode leaves out, printed in the report
    fvd: FVDScale = field(default_factory=FVDScale)
    backbones: BackbonesScale = field(default_factory=BackbonesScale)


CPU_ONLY = (
    "CUDA is not measured: no GPU was available; the CUDA kernels (mamba_ssm selective scan, "
    "causal_conv1d, xformers) and GPU peak memory need a run on a GPU machine."
)
BEGIN = "<!-- cinemamba bench: generated from here (text outside the markers is kept) -->"
END = "<!-- cinemamba bench: generated to here -->"
CLOSING = "The sections after this block are the packages' own notes"


SCALES: dict[str, Scale] = {
    # What docs/benchmarks.md is made from. The scan stops at T = 256 and VideoDiT at T = 256
    # without the hybrid: a T = 1024 case is too slow to repeat 5 times here (run
    # scripts/bench_backbone.py for it).
    "full": Scale(
        "full",
        KernelScale(scan_t=(64, 256), model_t=(16, 64, 128, 256), mixers=("bimamba", "attention"),
                    vae_frames=129, vae_script_memory=(65, 257)),
        TrainScale(),
        GenerationScale(steps=2),
        (
            "Scan and VideoDiT stop at T = 256 (VideoDiT without the hybrid mixer): a T = 1024 "
            "case is too slow to repeat for every case here; run `scripts/bench_backbone.py all` "
            "for the longer lengths.",
            CPU_ONLY,
        ),
        FVDScale(clip_frames=(16, 128)),
    ),
    # Routine use, aimed at QUICK_TARGET_S on quiet cores: fewer, shorter lengths, narrower VideoDiT,
    # cases in this process.
    "quick": Scale(
        "quick",
        KernelScale(spawn=False, scan_t=(64, 256), scan_dims=(64, 64, 16), model_t=(8, 16, 32, 64),
                    model_dims=(64, 2), mixers=("bimamba", "attention"), vae_frames=33,
                    export_frames=257),
        TrainScale(videos=4, video_frames=20, size=32, clip_frames=9, batch_size=1,
                   warmup_steps=1, zero_stages=(0, 2)),
        GenerationScale(size=32, steps=2, sample_frames=(64, 256), growth_frames=(33, 65, 129)),
        ("Quick sizes: shorter lengths, a narrower VideoDiT, no 1,024-frame sampling.", CPU_ONLY),
        backbones=BackbonesScale(frames=(8, 16, 32, 64), tokens=(64,), repeats=1, cap_s=5.0,
                                 ratio_frames=64, plot=None),
    ),
    # Seconds, for the test of the runner itself; the numbers mean little.
    "micro": Scale(
        "micro",
        KernelScale(spawn=False, scan_t=(8,), scan_dims=(4, 8, 4), model_t=(2, 4, 6, 8),
                    model_dims=(16, 1), mixers=("bimamba", "attention"), vae_size=16,
                    vae_frames=5, export_frames=17),
        TrainScale(videos=2, video_frames=6, size=16, clip_frames=5, batch_size=1,
                   warmup_steps=1, zero_stages=(0,)),
        GenerationScale(size=16, steps=1, guidance=1.0, sample_frames=(9,),
                        growth_frames=(5, 9, 13), window=2, context=1, chunk=1),
        fvd=FVDScale(clip_frames=(9,), source_size=16),  # 9: the shortest clip I3D takes
        backbones=BackbonesScale(frames=(2, 4, 8), tokens=(4,), repeats=1, ratio_frames=8,
                                 plot=None),
    ),
}  # fmt: skip


def run_benchmarks(scale: Scale, only: Sequence[str] = BENCHMARKS) -> list[Section]:
    """Run the chosen benchmarks in the canonical order; a failing one is reported, not fatal."""
    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; valid: {', '.join(BENCHMARKS)}")
    calls = {
        "data": lambda: [scripts.data(scale.data)],
        "train": lambda: [training.training(scale.train)],
        "vae": lambda: [scripts.vae(scale.kernels)],
        "scan": lambda: [scripts.scan(scale.kernels)],
        "backbone": lambda: [scripts.backbone(scale.kernels)],
        "backbones": lambda: [backbones.backbones(scale.backbones, print)],
        "sampling": lambda: [generation.sampling(scale.generation)],
        "growth": lambda: [generation.growth(scale.generation)],
        "fvd": lambda: [fvd.i3d_throughput(scale.fvd)],
    }
    sections: list[Section] = []
    # Data runs last: scripts/bench_data.py sets glibc mallopt for its "heap kept" rows, which
    # lasts for the rest of the process; the report keeps the canonical order.
    wanted = sorted((b for b in BENCHMARKS if b in only), key=lambda b: b == "data")
    for name in wanted:
        log.info("benchmark %s ...", name)
        start, cpu = time.perf_counter(), time.process_time()
        try:
            done = calls[name]()
        except Exception as err:  # one broken benchmark must not hide the others' numbers
            log.exception("benchmark %s failed", name)
            done = [Section(name, f"{name} (failed)", lines=[f"Failed: `{err!r}`"])]
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        for section in done:
            section.seconds, section.cpu_seconds = elapsed, cpu
        sections += done
    return sorted(sections, key=lambda s: BENCHMARKS.index(s.key) if s.key in BENCHMARKS else 99)


def _num(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)


def render(
    sections: Sequence[Section],
    machine: dict[str, str],
    mode: str,
    wall_s: float,
    notes: Sequence[str] = (),
) -> str:
    """docs/benchmarks.md: machine, summary of every figure, then each section's tables,
    between the BEGIN / END markers."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    quick = ""
    if mode == "quick":
        verdict = "pass" if wall_s < QUICK_TARGET_S else "FAIL"
        quick = f" (target < {QUICK_TARGET_S:.0f} s: {verdict})"
    out = [
        "# Benchmarks",
        "",
        BEGIN,
        "",
        f"Generated by `cinemamba bench --{mode}` on {stamp}; wall time {wall_s:.0f} s{quick}. "
        "Do not edit this block by hand: rerun `cinemamba bench --full --out "
        "docs/benchmarks.md` (this page) or `cinemamba bench --quick` (routine check).",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in machine.items()),
        "",
        "## How to read the figures",
        "",
        "Every figure is a ratio measured in the same run as its reference: a floor from "
        "measured machine rates (exp throughput and copy bandwidth for the scan; counted "
        "matmul/conv FLOPs ÷ measured GEMM rate elsewhere, a lower bound since elementwise "
        "work is not counted), the straightforward implementation (reference scan, unchunked "
        "VAE call, plain PyAV decode, oneshot sampling), or the temporal-attention baseline. "
        "Ratio = measured ÷ reference, the median over the repeats of the per-repeat ratios; "
        "spread = their min–max. Times are process CPU seconds with the torch thread count "
        "above unless a section says wall time; CPU time is robust to other jobs on a shared "
        "machine. Peak tensor memory (the profiler's allocation record) is deterministic, so "
        "those figures are one measurement, marked `1 (exact)`.",
        "",
        *(line for note in notes for line in (note, "")),
        "## Summary",
        "",
        "| benchmark | figure | measured | reference | ratio | spread | repeats | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for section in sections:
        for f in section.figures:
            lo, hi = f.spread
            target = "—"
            if f.target is not None:
                sign = "≥" if f.higher_is_better else "≤"
                target = f"{sign} {f.target:g}: {'pass' if f.passed else 'FAIL'}"
            med = sorted(f.measured)[len(f.measured) // 2]
            ref = sorted(f.reference)[len(f.reference) // 2]
            out.append(
                f"| {f.section} | {f.name} | {_num(med)} {f.unit} | {_num(ref)} "
                f"({f.reference_name}) | {_num(f.ratio)} | {_num(lo)}–{_num(hi)} | "
                f"{'1 (exact)' if f.exact else f.repeats} | {target} |"
            )
    for section in sections:
        out += [
            "",
            f"## {section.title}",
            "",
            f"_{section.seconds:.0f} s wall, {section.cpu_seconds:.0f} s CPU of this process "
            "(children not counted) in this run._",
            "",
        ]
        out += section.lines
        notes = [f"- {f.name}: {f.note}" for f in section.figures if f.note]
        out += ["", *notes] if notes else []
    out += [
        "",
        f"{CLOSING}: each says which script or command measures what it describes; figures "
        "appear only inside generated blocks.",
        "",
        END,
    ]
    return "\n".join(out) + "\n"


def merge(existing: str | None, report: str) -> str:
    """`report` in place of the generated block of `existing`; all other text is kept (a page
    without markers keeps everything after its title, below the new block)."""
    if existing is None:
        return report
    if BEGIN in existing and END in existing:
        block = report[report.index(BEGIN) : report.index(END) + len(END)]
        return (
            existing[: existing.index(BEGIN)] + block + existing[existing.index(END) + len(END) :]
        )
    kept = existing.split("\n", 1)[1] if existing.startswith("# ") else existing
    return report + "\n" + kept.lstrip("\n")


def _summary_rows(block: str) -> tuple[int, int]:
    """Span of the summary table's rows (below its header and separator) in a block."""
    start = block.index("| benchmark | figure |")
    start = block.index("\n", block.index("\n", start) + 1) + 1
    end = block.find("\n\n", start - 1)
    return start, max(start, end)


def _section_span(block: str, title: str) -> tuple[int, int]:
    """Span of the section headed `## title` in a block, up to the next heading."""
    start = block.index(f"\n## {title}\n")
    ends = [block.find("\n## ", start + 1), block.find(f"\n{CLOSING}", start)]
    return start, min(i for i in ends if i >= 0)


def merge_sections(existing: str, report: str, sections: Sequence[Section], note: str) -> str:
    """`existing` with the summary rows and sections of `sections` taken from `report` (a
    run of only those benchmarks) and `note` below the block's first line; the rest of the
    generated block (machine, other benchmarks) is kept; a section the page does not have yet
    is added after the others. ValueError when `existing` has no generated block."""
    if BEGIN not in existing or END not in existing:
        raise ValueError("no generated block to update; run every benchmark once")
    head, block = existing[: existing.index(BEGIN)], existing[existing.index(BEGIN) :]
    block, tail = block[: block.index(END)], block[block.index(END) :]
    new = report[report.index(BEGIN) : report.index(END)]
    keys = {s.key for s in sections}
    a, b = _summary_rows(block)
    na, nb = _summary_rows(new)

    def key(row: str) -> str:
        return row.split("|")[1].strip()

    rows = [r for r in block[a:b].split("\n") if r and key(r) not in keys]
    rows += [r for r in new[na:nb].split("\n") if r]
    rows.sort(key=lambda r: BENCHMARKS.index(key(r)) if key(r) in BENCHMARKS else len(BENCHMARKS))
    block = block[:a] + "\n".join(rows) + "\n\n" + block[b:].lstrip("\n")
    for section in sections:
        na, nb = _section_span(new, section.title)
        if f"\n## {section.title}\n" in block:
            a, b = _section_span(block, section.title)
        else:  # a benchmark the page has never had (a new one): goes after the others
            a = b = block.find(f"\n{CLOSING}") if CLOSING in block else len(block.rstrip("\n"))
        block = block[:a] + new[na:nb] + block[b:]
    # The note goes after the "Generated by ..." line, replacing an older note of these keys.
    lines = [line for line in block.split("\n") if not line.startswith(note.split(" on ")[0])]
    first = next(i for i, line in enumerate(lines) if line.startswith("Generated by"))
    lines[first + 1 : first + 1] = ["", note]
    return head + "\n".join(lines) + tail


def write_atomic(path: Path, text: str) -> None:
    """Write under a temporary name, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def bench(
    mode: str = "quick",
    only: Sequence[str] = BENCHMARKS,
    out: Path | None = None,
    threads: int = 1,
) -> tuple[str, list[Section]]:
    """Run the benchmarks at `mode` scale; return (markdown, sections), written to `out`.

    With a subset in `only` and an `out` page already generated at the same mode, only those
    benchmarks' rows and sections of its generated block are replaced (with a dated note);
    otherwise the whole block is."""
    if mode not in SCALES:
        raise ValueError(f"unknown bench mode {mode!r}; valid: {', '.join(SCALES)}")
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        machine = machine_description()
        start = time.perf_counter()
        sections = run_benchmarks(SCALES[mode], only)
        wall = time.perf_counter() - start
        load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
        machine["load average at end (1/5/15 min)"] = load
    finally:
        torch.set_num_threads(old_threads)
    for section in sections:
        for f in section.figures:
            if f.repeats < MIN_REPEATS and not f.exact:
                raise RuntimeError(f"figure {f.name!r} has {f.repeats} repeats (< 5)")
    text = render(sections, machine, mode, wall, SCALES[mode].notes)
    existing = out.read_text() if out is not None and out.is_file() else None
    generated = f"Generated by `cinemamba bench --{mode}`"
    if set(only) < set(BENCHMARKS) and existing and generated in existing:
        failed = [s.key for s in sections if s.title.endswith("(failed)")]
        if failed:
            raise RuntimeError(f"benchmark(s) {failed} failed; {out} left unchanged")
        names = ",".join(s.key for s in sections)
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        note = (
            f"_Updated by `cinemamba bench --{mode} --only {names}` on {stamp}: those "
            f"sections and their summary rows, measured on {cpu_model()} (wall time {wall:.0f} "
            f"s, load average at end {load}); the rest of this block is from the run above, on "
            "the machine its table names. Compare figures of different machines as ratios only._"
        )
        write_atomic(out, merge_sections(existing, text, sections, note))
    elif out is not None:
        write_atomic(out, merge(existing, text))
    return text, sections
