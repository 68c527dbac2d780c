"""Whole-video latent export: throughput and peak memory against video length (issue 15).

    .venv/bin/python scripts/bench_export_memory.py                    # 257 and 1025 frames
    .venv/bin/python scripts/bench_export_memory.py --markdown docs/benchmarks.md
    .venv/bin/python scripts/bench_export_memory.py --frames 17 33 --size 32   # smoke run

For each VAE (our tiny preset, and a diffusers Wan VAE of the same geometry when diffusers is
installed; random weights, 4x4x4, 8 latent channels) and each length, a fresh process runs
`export_latents` with `clip.start=whole` (the default) on a shard set holding one video of that
many frames, after a warm-up export of a short video (one-time allocations: models, oneDNN
primitives, thread pools). Peak = rise of the process's peak resident memory (VmHWM, reset
through /proc/self/clear_refs) over its resident memory just before the call; the call builds
its own VAE and text encoder, a constant part. Latents = the bytes of the exported latents,
which grow with length by design (1/24 of the float pixels). Flat means the peak minus the
latents does not grow with the length.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEGIN = "<!-- scripts/bench_export_memory.py: generated from here -->"
END = "<!-- scripts/bench_export_memory.py: generated to here -->"
AFTER = "<!-- scripts/bench_contention.py: generated to here -->"
CHUNK = 16  # pixel frames decoded and encoded at a time


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1))


def _raw_set(directory: Path, frames: int, size: int) -> None:
    """A shard set of one textured video of `frames` frames that moves every frame."""
    import numpy as np

    from cinemamba.data.shards import sample_to_tar_entries, write_shards
    from cinemamba.data.video import encode_video

    rng = np.random.default_rng(frames)
    base = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
    video = encode_video(np.stack([np.roll(base, k, axis=1) for k in range(frames)]), 24.0)
    keys = [[f"v{frames}"]]

    def make(key: str) -> dict:
        return sample_to_tar_entries(key, video, "a textured square moves right", {})

    write_shards(directory, "train", keys, make, keys=keys)


def child(vae: str, raw: str, warm: str, out: str) -> dict:
    """One measurement in this (fresh) process: warm-up export, then the measured one."""
    import numpy as np
    import torch

    from cinemamba.latents import ExportConfig, export_latents
    from cinemamba_conditioning import TextEncoderConfig

    torch.set_num_threads(1)

    def export(src: str, dst: str):
        return export_latents(ExportConfig(
            input=src, output=dst, vae=vae, text_encoder=TextEncoderConfig(random_init_seed=0),
            chunk_frames=CHUNK, device="cpu", progress=False,
        ), rank=0, world_size=1)  # fmt: skip

    export(warm, out + "_warm")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current RSS
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    report = export(raw, out)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM") - before
    if report.samples != 1:
        raise RuntimeError(f"export of {raw} wrote {report.samples} samples: {report.skipped}")
    manifest = json.loads((Path(out) / "latents.json").read_text())
    latent_frames = manifest["latent_frames"]["total"]
    import io

    from cinemamba.latents.stream import read_tar

    sample = next(read_tar(str(Path(out) / "latents-000000.tar")))
    latents = np.load(io.BytesIO(sample["latent.npy"]))
    frames = json.loads(sample["json"])["clip"]["frames"]
    return {"frames": frames, "latent_frames": latent_frames, "seconds": seconds,
            "fps": frames / seconds, "peak_mib": peak / 1024,
            "latents_mib": latents.nbytes / 2**20}  # fmt: skip


def measure(args: argparse.Namespace) -> list[dict]:
    """Every (VAE, length) case in a fresh process; rows as dicts."""
    import torch

    from cinemamba_vae import VideoAutoencoder, vae_preset

    rows = []
    args.load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        VideoAutoencoder(vae_preset("tiny")).eval().save_pretrained(tmp / "own")
        vaes = {"own tiny VAE": tmp / "own"}
        try:
            from cinemamba.apps.bench.scripts import tiny_diffusers_wan

            tiny_diffusers_wan().save_pretrained(tmp / "wan")
            vaes["diffusers Wan (tiny)"] = tmp / "wan"
        except ImportError:
            print("diffusers is not installed: own VAE only", file=sys.stderr)
        _raw_set(tmp / "warm", 17, args.size)
        for n in args.frames:
            _raw_set(tmp / f"raw{n}", n, args.size)
        for name, vae in vaes.items():
            for n in args.frames:
                out = tmp / f"lat_{vae.name}_{n}"
                cmd = [sys.executable, __file__, "_child", str(vae), str(tmp / f"raw{n}"),
                       str(tmp / "warm"), str(out)]  # fmt: skip
                # A fixed mmap threshold returns every large freed tensor to the OS, so the
                # resident memory tracks live tensors (otherwise glibc's threshold adapts).
                env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
                res = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
                row = {"vae": name, **json.loads(res.stdout.strip().splitlines()[-1])}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    args.load_end = os.getloadavg()
    return rows


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    """The generated block: conditions, table, flatness per VAE."""
    start, end = (" / ".join(f"{x:.2f}" for x in load) for load in (args.load_start, args.load_end))
    busy = max(args.load_start[0], args.load_end[0]) > 0.5 * (os.cpu_count() or 1)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        BEGIN,
        "",
        "## Whole-video latent export: memory and throughput against length",
        "",
        f"_Generated by `scripts/bench_export_memory.py` on {when} ({os.cpu_count()} cores; "
        f"load average {start} at start, {end} at the end). Do not edit by hand; rerun with "
        "`--markdown docs/benchmarks.md`._",
        "",
        f"`export-latents` with `clip.start=whole` on one {args.size}×{args.size} video, "
        f"decoded and encoded {CHUNK} frames at a time, one torch thread, a fresh process per "
        "row after a warm-up export. Peak = rise of peak RSS during the call (it also builds "
        "the VAE and text encoder); latents = the exported latents' bytes, which any export "
        "must hold.",
        "",
        "| VAE | frames | latent frames | frames/s | peak MiB | latents MiB | peak − latents MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['vae']} | {r['frames']} | {r['latent_frames']} | {r['fps']:.1f} | "
            f"{r['peak_mib']:.1f} | {r['latents_mib']:.2f} | "
            f"{r['peak_mib'] - r['latents_mib']:.1f} |"
        )
    for name in dict.fromkeys(r["vae"] for r in rows):
        mine = [r for r in rows if r["vae"] == name]
        lo, hi = mine[0], mine[-1]
        grow = (hi["peak_mib"] - hi["latents_mib"]) - (lo["peak_mib"] - lo["latents_mib"])
        lines.append("")
        lines.append(
            f"{name}: from {lo['frames']} to {hi['frames']} frames the peak minus latents "
            f"changes by {grow:+.1f} MiB (the pixels of {hi['frames']} float frames would be "
            f"{hi['frames'] * 3 * args.size**2 * 4 / 2**20:.1f} MiB)."
        )
    if busy:
        lines += ["", "Other processes kept more than half the cores busy during this run: the "
                  "memory figures hold, the frames/s are lower bounds, not this machine's "
                  "throughput."]  # fmt: skip
    lines += ["", END]
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, measure, print the block (and splice it into --markdown)."""
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        print(json.dumps(child(*sys.argv[2:6])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[257, 1025],
                        help="video lengths (1 + 4k keeps every frame)")  # fmt: skip
    parser.add_argument("--size", type=int, default=64, help="frame height and width")
    parser.add_argument("--markdown", help="splice the block into this page between markers")
    args = parser.parse_args()
    block = markdown(measure(args), args)
    print(block)
    if args.markdown:
        from cinemamba.apps.bench.markers import splice_block

        page = Path(args.markdown)
        page.write_text(splice_block(page.read_text(), block, BEGIN, END, AFTER))


if __name__ == "__main__":
    main()
