"""Profile one VideoDiTBlock forward+backward per temporal mixer (issue 20, item 3).

Prints, per mixer and length, the block's time split into op groups (torch.profiler, CPU
self time) and the parameters of the block. ``bimamba-unfused`` is the two-call bimamba
(``BiMamba.fused = False``) for a before/after comparison in one run.

    python scripts/profile_block.py --frames 64 256 --tokens 64 --dim 128

``--ratio N`` instead times N interleaved fwd+bwd repeats (process CPU time, so all variants
see the same load) of the bimamba block in its four CPU forms: two scan calls
(``BiMamba.fused = False``), one call over the time-flipped input (``stacked = False``),
flip-free with stacked conv/projections on the row kernels (``channels_last = False``) and
the channels-last core (the default), and of an equal-parameter temporal-attention block,
and prints the medians and the ratios to attention:

    python scripts/profile_block.py --ratio 7 --frames 256 --tokens 64 --dim 128
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from cinemamba_backbone.mixers import MixerOptions, build_mixer
from cinemamba_backbone.model import VideoDiTBlock

# Op name fragments -> group (first match wins); what is left is "other".
GROUPS = (
    ("scan", ("SelectiveScan", "cm_scan", "_SelectiveScanFn")),
    ("attention kernels", ("scaled_dot_product", "flash_attention", "_efficient_attention")),
    ("matmul (projections, MLP)", ("addmm", "mm", "matmul", "linear", "bmm")),
    ("conv1d", ("conv", "convolution")),
    ("layout copies (flip/cat/contiguous)", ("flip", "copy_", "cat", "stack", "clone",
                                            "contiguous", "_to_copy")),
    ("softplus/silu/gelu", ("softplus", "silu", "gelu")),
    ("norms", ("layer_norm", "rms")),
    ("elementwise", ("mul", "add", "sub", "div", "exp", "sum", "pow", "rsqrt", "mean")),
)  # fmt: skip


def group_of(name: str) -> str:
    """The op group of a profiler event name."""
    low = name.lower()
    for group, keys in GROUPS:
        if any(k.lower() in low for k in keys):
            return group
    return "other"


def make_block(mixer: str, dim: int) -> VideoDiTBlock:
    """One block of width ``dim`` with the named mixer (``bimamba-unfused``: two scan calls)."""
    name = "bimamba" if mixer == "bimamba-unfused" else mixer
    block = VideoDiTBlock(dim, max(1, dim // 64), 4.0, build_mixer(name, dim, MixerOptions()))
    if mixer == "bimamba-unfused":
        block.temporal.fused = False
    return block


def profile_block(mixer: str, frames: int, tokens: int, dim: int) -> tuple[float, dict]:
    """Forward+backward of one block: (total self CPU ms, {group: self CPU ms})."""
    torch.manual_seed(0)
    block = make_block(mixer, dim)
    x = torch.randn(1, frames, tokens, dim, requires_grad=True)
    c, text, mask = torch.randn(1, frames, dim), torch.randn(1, 8, dim), torch.ones(1, 8).bool()

    def step() -> None:
        block(x, c, text, mask)[0].square().mean().backward()

    step()  # warm-up (compiles the C scan on first use)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    groups: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        groups[group_of(ev.key)] += ev.self_cpu_time_total / 1e3
    return sum(groups.values()), dict(groups)


def ratio(frames: int, tokens: int, dim: int, repeats: int) -> None:
    """Print interleaved fwd+bwd medians of bimamba (before/after fusion) and attention."""

    def params(blk: VideoDiTBlock) -> int:
        return sum(p.numel() for p in blk.parameters())

    bim = make_block("bimamba", dim)
    target = params(bim)
    # Attention width (a multiple of 4 with whole 64-wide heads) closest in parameters.
    width = min(range(dim // 2, 2 * dim + 1, 4),
                key=lambda w: abs(params(make_block("attention", w)) - target))  # fmt: skip
    att = make_block("attention", width)

    def step_of(blk: VideoDiTBlock, w: int):
        x = torch.randn(1, frames, tokens, w, requires_grad=True)
        c, text, mask = torch.randn(1, frames, w), torch.randn(1, 8, w), torch.ones(1, 8).bool()
        return lambda: blk(x, c, text, mask)[0].square().mean().backward()

    # (fused, stacked, channels_last) of each bimamba form; attention ignores them.
    forms = {"bimamba two calls": (False, True, False), "bimamba flipped": (True, False, False),
             "bimamba stacked": (True, True, False), "bimamba chan-last": (True, True, True),
             "attention": (True, True, True)}  # fmt: skip
    steps = {name: step_of(att, width) if name == "attention" else step_of(bim, dim)
             for name in forms}  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(repeats + 1):  # the first round is a warm-up
        for name, step in steps.items():
            bim.temporal.fused, bim.temporal.stacked, bim.temporal.channels_last = forms[name]
            start = time.process_time()
            step()
            if r:
                times[name].append(time.process_time() - start)
    bim.temporal.fused, bim.temporal.stacked, bim.temporal.channels_last = True, True, True
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"T={frames} tokens={tokens}: bimamba width {dim} ({target} params), attention "
          f"width {width} ({params(att)} params), {repeats} interleaved repeats")  # fmt: skip
    for name, m in med.items():
        print(f"  {name:18s} {1e3 * m:9.1f} ms  ratio to attention {m / med['attention']:.2f}")


def main() -> None:
    """Print the table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--mixers", nargs="+", default=["bimamba-unfused", "bimamba", "attention"])
    ap.add_argument("--ratio", type=int, default=0, help="interleaved repeats (see above)")
    args = ap.parse_args()
    if args.ratio:
        for frames in args.frames:
            ratio(frames, args.tokens, args.dim, args.ratio)
        return
    for frames in args.frames:
        for mixer in args.mixers:
            params = sum(p.numel() for p in make_block(mixer, args.dim).parameters())
            total, groups = profile_block(mixer, frames, args.tokens, args.dim)
            print(f"\n{mixer} T={frames} tokens={args.tokens} dim={args.dim} "
                  f"params={params} fwd+bwd {total:.1f} ms")  # fmt: skip
            for g, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
                print(f"  {g:40s} {ms:9.1f} ms {100 * ms / total:5.1f} %")


if __name__ == "__main__":
    main()
