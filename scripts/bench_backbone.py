"""Benchmarks of the backbone on this CPU: the selective scan and VideoDiT vs frame count.

    .venv/bin/python scripts/bench_backbone.py scan     # scan vs its floor and the reference
    .venv/bin/python scripts/bench_backbone.py model    # bimamba vs attention vs hybrid in T
    .venv/bin/python scripts/bench_backbone.py all --markdown docs/benchmarks.md
    .venv/bin/python scripts/bench_backbone.py model --kernels torch   # PyTorch scan in VideoDiT

The scan rows time both CPU paths of the fast scan: the C kernel (ops/cpu_native.py) and
the pure-PyTorch path (native=False). Every case runs in a fresh process. Peak memory is the rise of the peak resident set
(VmHWM, reset through /proc/self/clear_refs) over the resident set just before the call,
with inputs already allocated. Times are medians of process CPU time with one torch thread
(robust to other jobs on a shared machine); the floor is measured in the same process.
`--markdown PAGE` replaces each section's block between its markers (below) in PAGE and keeps
the rest of the page; a page without them gets the blocks at its end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from cinemamba_backbone import BackboneConfig, VideoDiT
from cinemamba_backbone.ops import cpu_native, selective_scan_ref, selective_scan_torch

# One generated block per section in the page given to --markdown (docs/benchmarks.md).
MARKERS = {
    which: (
        f"<!-- scripts/bench_backbone.py {which}: generated from here -->",
        f"<!-- scripts/bench_backbone.py {which}: generated to here -->",
    )
    for which in ("scan", "model")
}

SCAN_M, SCAN_D, SCAN_N = 256, 128, 16
SCAN_T = (64, 256, 1024)
REF_MAX_T = 256  # the reference materialises 2·M·D·T·N floats: 4.3 GB at T = 1024
MODEL_T = (16, 64, 256, 1024, 2048)
MODEL_WIDTH, MODEL_DEPTH, MODEL_LATENT = 128, 4, (4, 8, 8)  # (C, h, w), patch 2 -> 16 tokens
MIXERS = {
    "bimamba": {"mixer": "bimamba"},
    "attention": {"mixer": "attention"},
    "hybrid 3:1": {"mixer_pattern": ["bimamba", "bimamba", "bimamba", "attention"]},
}


# ---- measurement helpers ------------------------------------------------------------------
def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _peak_rise_bytes(fn) -> int:
    """Run fn once; return the rise of peak RSS above the RSS just before it."""
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) * 1024


def _median_time(fn, repeats: int) -> float:
    """Median CPU time of the process: with one thread this is the compute time, robust to
    other processes taking the cores (wall time on a shared machine is not)."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def _exp_rate() -> float:
    """Measured exp throughput (elements/s) of torch.exp on this machine and thread count."""
    x = torch.rand(8 * 2**20) * -1
    out = torch.empty_like(x)
    seconds = _median_time(lambda: torch.exp(x, out=out), 7)
    return x.numel() / seconds


def _bandwidth() -> float:
    """Measured copy bandwidth (bytes read + written per second) on a 256 MB buffer."""
    src = torch.rand(32 * 2**20)
    dst = torch.empty_like(src)
    seconds = _median_time(lambda: dst.copy_(src), 7)
    return 2 * src.numel() * 4 / seconds


def _scan_inputs(length: int, grad: bool) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    m, d, n = SCAN_M, SCAN_D, SCAN_N
    tensors = [
        torch.randn(m, d, length, generator=g),
        torch.rand(m, d, length, generator=g) * 0.1,
        -torch.rand(d, n, generator=g) - 0.1,
        torch.randn(m, n, length, generator=g),
        torch.randn(m, n, length, generator=g),
    ]
    return [t.requires_grad_(grad) for t in tensors]


# ---- child processes ----------------------------------------------------------------------
def _scan_path(native: bool, length: int, repeats: int) -> dict:
    """One path of the fast scan: forward ms/frame, forward+backward ms/frame and peak bytes
    per state element."""
    m, d, n = SCAN_M, SCAN_D, SCAN_N
    args = _scan_inputs(length, grad=False)
    with torch.no_grad():
        fwd = _median_time(lambda: selective_scan_torch(*args, native=native), repeats)
    grad_args = _scan_inputs(length, grad=True)

    def fwd_bwd() -> None:
        selective_scan_torch(*grad_args, native=native).sum().backward()

    for _ in range(2):  # a warm-up (one-time allocations must not count), then the peak
        for t in grad_args:
            t.grad = None
        peak = _peak_rise_bytes(fwd_bwd)
    return {
        "ms": fwd / length * 1e3,
        "fwd_bwd_ms": _median_time(fwd_bwd, 3) / length * 1e3,
        "bytes": peak / (m * length * d * n),
    }


def child_scan(length: int) -> dict:
    """Both CPU paths of the fast scan vs the floor and the reference (forward), and their
    forward+backward time and peak memory. The C kernel's entries are None when it cannot
    be built here."""
    exp_rate, bandwidth = _exp_rate(), _bandwidth()
    m, d, n = SCAN_M, SCAN_D, SCAN_N
    exp_floor = m * d * n / exp_rate  # one exp per state element per frame
    io_bytes = (3 * m * d + 2 * m * n) * 4  # u, Δ, y and B, C per frame (fp32)
    io_floor = io_bytes / bandwidth
    floor = max(exp_floor, io_floor)
    repeats = 5 if length <= 256 else 3
    result = {"T": length}
    have_native = cpu_native.usable(torch.empty(0), n)  # builds it before anything is timed
    for name, native in (("native", True), ("torch", False)):
        timed = _scan_path(native, length, repeats) if have_native or not native else {}
        for key in ("ms", "fwd_bwd_ms", "bytes"):
            result[f"{name}_{key}"] = timed.get(key)
    ref = None
    if length <= REF_MAX_T:
        args = _scan_inputs(length, grad=False)
        with torch.no_grad():
            ref = _median_time(lambda: selective_scan_ref(*args), 3) / length
    return {
        **result,
        "floor_ms": floor * 1e3,
        "exp_floor_ms": exp_floor * 1e3,
        "io_floor_ms": io_floor * 1e3,
        "ref_ms": None if ref is None else ref * 1e3,
        "exp_rate": exp_rate,
        "bandwidth": bandwidth,
    }


def child_model(mixer: str, frames: int) -> dict:
    """VideoDiT forward and forward+backward at `frames` latent frames."""
    torch.manual_seed(0)
    c, h, w = MODEL_LATENT
    cfg = BackboneConfig(
        in_channels=c,
        hidden_size=MODEL_WIDTH,
        depth=MODEL_DEPTH,
        num_heads=4,
        text_dim=64,
        sample_size=h,
        **MIXERS[mixer],
    )
    model = VideoDiT(cfg, kernels=KERNELS)
    x = torch.randn(1, c, frames, h, w)
    t, text = torch.rand(1), torch.randn(1, 8, 64)
    repeats = 3 if frames <= 256 else 1
    with torch.no_grad():
        model(x[:, :, :16], t, text)  # warm-up
        fwd = _median_time(lambda: model(x, t, text), repeats)
        fwd_peak = _peak_rise_bytes(lambda: model(x, t, text))

    def fwd_bwd() -> None:
        model(x, t, text).square().mean().backward()

    fwd_bwd_peak = _peak_rise_bytes(fwd_bwd)
    fb = _median_time(fwd_bwd, repeats)
    return {
        "mixer": mixer,
        "T": frames,
        "fwd_s": fwd,
        "fwd_bwd_s": fb,
        "fwd_peak_mb": fwd_peak / 2**20,
        "fwd_bwd_peak_mb": fwd_bwd_peak / 2**20,
    }


THREADS = 1  # set from --threads; one thread keeps ratios stable on a shared machine
KERNELS = "auto"  # set from --kernels: VideoDiT's kernel choice ("torch": PyTorch scan on CPU)


def _spawn(*args: str) -> dict:
    # A fixed mmap threshold makes glibc return big blocks to the OS when freed, so the
    # resident-set peak of each call is not hidden by memory cached from a previous call.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run(
        [sys.executable, __file__, "_child", str(THREADS), KERNELS, *args],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- reports ------------------------------------------------------------------------------
def run_scan() -> list[str]:
    """Scan table in markdown."""
    rows = []
    for length in SCAN_T:
        r = _spawn("scan", str(length))
        print(json.dumps(r), file=sys.stderr)
        rows.append(r)
    r0 = rows[0]
    lines = [
        f"Selective scan forward, M={SCAN_M} sequences, D={SCAN_D}, N={SCAN_N}, fp32, "
        f"{THREADS} thread(s), two paths of the fast scan: the C kernel (`native`, "
        "ops/cpu_native.py) and pure PyTorch (`torch`, `native=False`). Floor = "
        "max(exp count / measured exp rate, I/O bytes / measured bandwidth); exp rate "
        f"{r0['exp_rate'] / 1e9:.2f} G/s, copy bandwidth {r0['bandwidth'] / 1e9:.1f} GB/s in "
        f"the T={r0['T']} process.",
        "",
        "| T | native ms/frame | native ÷ floor | torch ms/frame | torch ÷ floor "
        "| floor ms/frame (exp / io) | reference ms/frame | reference ÷ native "
        "| fwd+bwd ms/frame native / torch | fwd+bwd peak bytes per B·T·D·N native / torch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def num(x: float | None, fmt: str) -> str:
        return "unavailable" if x is None else format(x, fmt)

    for r in rows:
        fast = r["native_ms"] or r["torch_ms"]  # the reference speed-up of the path in use
        ref = "not run (> 4 GB)" if r["ref_ms"] is None else f"{r['ref_ms']:.2f}"
        speedup = "—" if r["ref_ms"] is None else f"{r['ref_ms'] / fast:.1f}×"
        native_ratio = None if r["native_ms"] is None else r["native_ms"] / r["floor_ms"]
        lines.append(
            f"| {r['T']} | {num(r['native_ms'], '.3f')} | {num(native_ratio, '.2f')} | "
            f"{r['torch_ms']:.3f} | {r['torch_ms'] / r['floor_ms']:.2f} | "
            f"{r['floor_ms']:.3f} ({r['exp_floor_ms']:.3f} / {r['io_floor_ms']:.3f}) | "
            f"{ref} | {speedup} | {num(r['native_fwd_bwd_ms'], '.2f')} / "
            f"{r['torch_fwd_bwd_ms']:.2f} | {num(r['native_bytes'], '.2f')} / "
            f"{r['torch_bytes']:.2f} |"
        )
    return lines


def _slope(xs: list[float], ys: list[float]) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum(
        (a - mx) ** 2 for a in lx
    )


def _crossover(ts: list[int], fast: list[float], slow: list[float]) -> str:
    """First T where fast < slow, log-log interpolated between grid points."""
    diffs = [math.log(f / s) for f, s in zip(fast, slow, strict=True)]
    if diffs[0] < 0:
        return f"≤ {ts[0]} (faster at every measured T)"
    for i in range(1, len(ts)):
        if diffs[i] < 0:
            a, b = diffs[i - 1], diffs[i]
            lt = math.log(ts[i - 1]) + (math.log(ts[i]) - math.log(ts[i - 1])) * a / (a - b)
            return f"≈ {math.exp(lt):.0f}"
    # Extrapolate: slow = a·T + b·T² through the last two points, fast = c·T at the last.
    (t1, t2), (s1, s2) = ts[-2:], slow[-2:]
    b = (s2 / t2 - s1 / t1) / (t2 - t1)
    a, c = s1 / t1 - b * t1, fast[-1] / ts[-1]
    if b <= 0 or c <= a:
        return f"> {ts[-1]} (not reached, no quadratic growth to extrapolate)"
    return f"> {ts[-1]} (not reached; ≈ {(c - a) / b:.0f} extrapolated from aT + bT² vs cT)"


def run_model() -> list[str]:
    """VideoDiT table, slopes and crossover in markdown."""
    results: dict[str, list[dict]] = {name: [] for name in MIXERS}
    for frames in MODEL_T:
        for name in MIXERS:
            r = _spawn("model", name, str(frames))
            print(json.dumps(r), file=sys.stderr)
            results[name].append(r)
    c, h, w = MODEL_LATENT
    lines = [
        f"VideoDiT, width {MODEL_WIDTH}, depth {MODEL_DEPTH}, 4 heads, batch 1, latents "
        f"C={c}, {h}×{w}, patch 2 (16 tokens per frame), fp32, "
        f"{THREADS} thread(s), kernels={KERNELS!r}. Times in seconds; peak = rise of "
        "resident memory.",
        "",
        "| mixer | T | forward s | fwd+bwd s | forward peak MB | fwd+bwd peak MB |",
        "|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        for r in rows:
            lines.append(
                f"| {name} | {r['T']} | {r['fwd_s']:.3f} | {r['fwd_bwd_s']:.3f} | "
                f"{r['fwd_peak_mb']:.0f} | {r['fwd_bwd_peak_mb']:.0f} |"
            )
    lines += [
        "",
        "| mixer | log-log slope, forward (T ≥ 256) | log-log slope, fwd+bwd (T ≥ 256) |",
        "|---|---|---|",
    ]
    ts = list(MODEL_T)
    for name, rows in results.items():
        fwd_slope = _slope(ts[2:], [r["fwd_s"] for r in rows[2:]])
        fb_slope = _slope(ts[2:], [r["fwd_bwd_s"] for r in rows[2:]])
        lines.append(f"| {name} | {fwd_slope:.2f} | {fb_slope:.2f} |")
    bi, att = results["bimamba"], results["attention"]
    lines += [
        "",
        "Crossover where `bimamba` becomes faster than temporal attention (SDPA flash kernel "
        f"on CPU): forward {_crossover(ts, [r['fwd_s'] for r in bi], [r['fwd_s'] for r in att])}"
        f" frames, forward+backward "
        f"{_crossover(ts, [r['fwd_bwd_s'] for r in bi], [r['fwd_bwd_s'] for r in att])} frames.",
    ]
    return lines


def main() -> int:
    """Parse arguments; run the chosen benchmark; print (and optionally write) markdown."""
    global THREADS, KERNELS
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        threads, KERNELS, kind, *rest = sys.argv[2:]
        torch.set_num_threads(int(threads))
        result = child_scan(int(rest[0])) if kind == "scan" else child_model(rest[0], int(rest[1]))
        print(json.dumps(result))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["scan", "model", "all"])
    parser.add_argument("--markdown", type=Path, help="also write the markdown here")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per case")
    parser.add_argument(
        "--kernels", choices=["auto", "torch"], default="auto", help="VideoDiT kernel choice"
    )
    args = parser.parse_args()
    THREADS, KERNELS = args.threads, args.kernels
    blocks: dict[str, str] = {}
    if args.which in ("scan", "all"):
        blocks["scan"] = _block("scan", "Selective scan (CPU fast path)", run_scan())
    if args.which in ("model", "all"):
        blocks["model"] = _block("model", "VideoDiT vs frame count", run_model())
    print("\n\n".join(blocks.values()))
    if args.markdown:
        from cinemamba.apps.bench.markers import splice_block

        page = args.markdown.read_text() if args.markdown.is_file() else ""
        for which, block in blocks.items():
            page = splice_block(page, block, *MARKERS[which])
        tmp = args.markdown.with_name(args.markdown.name + ".partial")
        tmp.write_text(page)
        tmp.replace(args.markdown)  # a reader never sees half a page
    return 0


def _block(which: str, title: str, lines: list[str]) -> str:
    """A section between its markers, headed by when, where and under what load it ran."""
    begin, end = MARKERS[which]
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    header = (
        f"_Generated by `scripts/bench_backbone.py {which}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} ({os.cpu_count()} cores; load "
        f"average {load} at the end). Do not edit by hand; rerun with "
        "`--markdown docs/benchmarks.md`._"
    )
    return "\n".join([begin, "", f"### {title}", "", header, "", *lines, "", end])


if __name__ == "__main__":
    raise SystemExit(main())
