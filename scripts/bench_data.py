"""Loader throughput against plain PyAV decoding of the same clips, in the same run.

For each resolution (64x64 and 256x256 synthetic videos) one repeat times:
- the reference: `decode_video` of every sample's clip straight from the mp4 bytes (the raw
  cost of getting the frames out of the files), and
- the loader: a finite `VideoLoader` pass over the same shards producing the same clips as
  float batches in [-1, 1] (tar reading, metadata, decoding, conversion, batching).
Times are process CPU seconds with one torch thread and no DataLoader workers, so the ratio
is the pipeline's own overhead, not parallelism. Target: loader / raw decode <= 1.5.

Usage: python scripts/bench_data.py [--quick] [--markdown PATH]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from cinemamba.apps.bench.measure import Figure, Section
from cinemamba.data.loader import LoaderConfig, VideoLoader
from cinemamba.data.synth import SceneConfig
from cinemamba.data.synth_video import write_synth
from cinemamba.data.video import decode_video
from cinemamba.latents.clips import ClipConfig

TARGET = 1.5
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def keep_heap(limit: int = 1 << 30) -> bool:
    """Make glibc keep freed blocks up to `limit` bytes for reuse (mallopt), as
    `MALLOC_MMAP_THRESHOLD_=<limit> MALLOC_TRIM_THRESHOLD_=<limit>` would; False if not glibc.

    By default a block over the dynamic mmap threshold goes back to the OS when freed, so
    every new float batch is page-faulted in again (at 256x256 that is most of the loader's
    overhead over raw decoding)."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    libc = ctypes.CDLL(name)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, limit)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, limit)
    )


def _mp4s(shard_dir: Path) -> list[bytes]:
    out = []
    for shard in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(shard) as tar:
            out += [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".mp4")]
    return out


def measure(
    size: int, videos: int, frames: int, clip_frames: int, repeats: int, label: str
) -> Figure:
    """Loader vs raw decode CPU seconds per repeat at one resolution."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SceneConfig(frames=frames, height=size, width=size)
        write_synth(tmp, "train", videos, cfg, seed=0, samples_per_shard=max(1, videos // 4))
        mp4s = _mp4s(Path(tmp))
        clip = ClipConfig(frames=clip_frames, start="first")
        loader_cfg = LoaderConfig(tmp, clip, batch_size=4, resampled=False)

        def raw() -> int:
            return sum(len(decode_video(m, 0, clip_frames)) for m in mp4s)

        def loader() -> int:
            return sum(b["video"].shape[0] * b["video"].shape[2] for b in VideoLoader(loader_cfg))

        assert raw() == loader() == videos * clip_frames  # same frames on both sides (warm-up)
        measured, reference = [], []
        for _ in range(repeats):
            for fn, sink in ((raw, reference), (loader, measured)):
                start = time.process_time()
                fn()
                sink.append(time.process_time() - start)
    total = videos * clip_frames
    return Figure(
        "data",
        f"loader {size}x{size}, {clip_frames}-frame clips, {label}",
        "CPU s / pass",
        measured,
        reference,
        "PyAV decode_video of the same clips",
        target=TARGET,
        note=(
            f"loader {total / statistics.median(measured):.0f} frames/s, raw decode "
            f"{total / statistics.median(reference):.0f} frames/s"
        ),
    )


def section(quick: bool = True) -> Section:
    """The data benchmark as a report section (quick: fewer videos, same repeats)."""
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        n = 8 if quick else 32
        figures = []
        for label in ("default allocator", "heap kept (mallopt)"):
            if label != "default allocator" and not keep_heap():
                break
            figures += [
                measure(64, n, 64, 32, repeats=5, label=label),
                measure(256, max(4, n // 4), 64, 32, repeats=5, label=label),
            ]
    finally:
        torch.set_num_threads(threads)
    sec = Section("data", "Data: VideoLoader vs raw PyAV decode", figures)
    sec.lines = [
        f"Synthetic 64-frame videos (crf 18, keyframe every 32 frames), 32-frame clips from frame "
        f"0, batch 4, finite pass, 0 workers, 1 torch thread, 5 repeats per row. Ratio = loader "
        f"CPU time / raw decode CPU time for the same frames (target <= {TARGET}). The loader "
        "returns float32 (4 bytes per value against the decoder's 1): with glibc's default "
        "allocator each new batch buffer is page-faulted in again; the 'heap kept' rows set "
        "`mallopt(M_MMAP_THRESHOLD / M_TRIM_THRESHOLD, 1 GiB)` (the same as the environment "
        "variables `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_`, recommended for "
        "training processes) so the buffers are reused."
    ]
    sec.seconds = time.perf_counter() - start
    return sec


def main() -> None:
    """Run and print (and optionally write) the section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer videos")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    sec = section(quick=args.quick)
    lines = [f"## {sec.title}", "", *sec.lines, ""]
    lines += ["| case | ratio (median) | spread | target | detail |", "|---|---|---|---|---|"]
    for f in sec.figures:
        lo, hi = f.spread
        ok = "pass" if f.passed else "FAIL"
        lines.append(
            f"| {f.name} | {f.ratio:.2f} | {lo:.2f}–{hi:.2f} | ≤ {f.target} ({ok}) | {f.note} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
