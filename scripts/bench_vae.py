"""Benchmarks of the video VAE (tiny preset): memory vs length, speed, reconstruction PSNR.

    .venv/bin/python scripts/bench_vae.py memory            # chunked vs full, 64/256/1024 frames
    .venv/bin/python scripts/bench_vae.py speed             # encode/decode frames/s on this CPU
    .venv/bin/python scripts/bench_vae.py psnr --checkpoint DIR --shards 'data/val/*.tar'
    .venv/bin/python scripts/bench_vae.py tiling --checkpoint DIR --shards 'data/val/*.tar'

Memory is measured per case in a fresh process as the rise of peak resident memory (VmHWM,
reset through /proc/self/clear_refs) over the resident memory just before the call, with
the input video already allocated. "working" subtracts the bytes of the returned tensors,
which any method must hold; that is the part that should not grow with length.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from cinemamba_vae import VideoAutoencoder, vae_preset

SIZE = 64


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1))


def _child_memory(mode: str, frames: int, chunk: int) -> dict:
    """One measurement: encode then decode `frames` frames, chunked or full."""
    torch.manual_seed(0)
    vae = VideoAutoencoder(vae_preset("tiny")).eval()
    video = torch.rand(1, 3, frames, SIZE, SIZE) * 2 - 1
    enc_k = chunk if mode == "chunked" else None
    dec_k = max(1, chunk // vae.config.temporal_compression) if mode == "chunked" else None
    result = {"mode": mode, "frames": frames}
    with torch.no_grad():
        # Warm-up on a short clip: one-time allocations (oneDNN primitives, thread pools)
        # must not count as the call's memory.
        vae.decode(
            vae.encode(video[:, :, :17], sample=False, chunk_frames=enc_k), chunk_frames=dec_k
        )
        for stage in ("encode", "decode"):
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current RSS
            before = _status_kib("VmRSS")
            if stage == "encode":
                out = latents = vae.encode(video, sample=False, chunk_frames=enc_k)
            else:
                out = vae.decode(latents, chunk_frames=dec_k)
            peak = _status_kib("VmHWM") - before
            out_kib = out.numel() * out.element_size() / 1024
            result[f"{stage}_peak_mib"] = peak / 1024
            result[f"{stage}_working_mib"] = (peak - out_kib) / 1024
            del out
    return result


def memory(args: argparse.Namespace) -> list[dict]:
    """Peak memory of chunked and full encode+decode for each length, one process each."""
    rows = []
    for mode in ("chunked", "full"):
        for frames in args.frames:
            cmd = [sys.executable, __file__, "_child", mode, str(frames), str(args.chunk)]
            # A fixed mmap threshold makes glibc hand every large tensor back to the OS when
            # freed, so resident memory tracks live tensors (otherwise the threshold adapts).
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def speed(args: argparse.Namespace) -> dict:
    """Encode and decode throughput (frames/s, chunked, best of `repeats`)."""
    torch.manual_seed(0)
    vae = VideoAutoencoder(vae_preset("tiny")).eval()
    video = torch.rand(1, 3, args.speed_frames, SIZE, SIZE) * 2 - 1
    best = {"encode": float("inf"), "decode": float("inf")}
    with torch.no_grad():
        latents = vae.encode(video, sample=False, chunk_frames=args.chunk)  # warm-up
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            latents = vae.encode(video, sample=False, chunk_frames=args.chunk)
            t1 = time.perf_counter()
            vae.decode(latents, chunk_frames=args.chunk // 4)
            t2 = time.perf_counter()
            best["encode"] = min(best["encode"], t1 - t0)
            best["decode"] = min(best["decode"], t2 - t1)
    n = args.speed_frames
    return {
        "frames": n,
        "size": SIZE,
        "threads": torch.get_num_threads(),
        "encode_fps": n / best["encode"],
        "decode_fps": n / best["decode"],
    }


def psnr(args: argparse.Namespace) -> dict:
    """Reconstruction metrics of a trained checkpoint over a shard set (as eval-vae)."""
    from cinemamba.eval.reconstruction import evaluate_reconstruction

    vae = VideoAutoencoder.from_pretrained(args.checkpoint).eval()
    report = evaluate_reconstruction(
        vae, args.shards, clip_frames=args.eval_frames, size=args.eval_size,
        max_videos=args.max_clips,
    )  # fmt: skip
    return {k: report[k] for k in ("psnr", "ssim", "clips", "frames", "per_frame")}


def tiling(args: argparse.Namespace) -> dict:
    """Error of spatial tiling against the untiled pass, on clips of a shard set."""
    from cinemamba.eval.reconstruction import load_clips
    from cinemamba.latents.clips import ClipConfig, to_pixels
    from cinemamba_vae.metrics import frames_psnr

    vae = VideoAutoencoder.from_pretrained(args.checkpoint).eval()
    clip = ClipConfig(frames=args.eval_frames, height=args.eval_size, width=args.eval_size,
                      start="first")  # fmt: skip
    video = to_pixels(load_clips(args.shards, clip, args.max_clips))
    s, size = vae.config.spatial_compression, video.shape[-1]
    tile, overlap = size // 2 + size // 4, size // 4  # 2x2 tiles sharing a quarter of the frame
    with torch.no_grad():
        z = vae.encode(video, sample=False)
        z_tiled = vae.encode(video, sample=False, tile_size=tile, tile_overlap=overlap)
        x = vae.decode(z)
        x_tiled = vae.decode(z, tile_size=tile // s, tile_overlap=overlap // s)
    scale = z.abs().mean().item()
    return {
        "size": size, "tile": tile, "overlap": overlap, "clips": video.shape[0],
        "encode_max_abs": (z_tiled - z).abs().max().item(),
        "encode_mean_abs_relative": (z_tiled - z).abs().mean().item() / scale,
        "decode_max_abs": (x_tiled - x).abs().max().item(),
        "decode_psnr_vs_untiled_db": frames_psnr(x, x_tiled).mean().item(),
        "reconstruction_psnr_untiled_db": frames_psnr(video, x).mean().item(),
        "reconstruction_psnr_tiled_db": frames_psnr(video, x_tiled).mean().item(),
    }  # fmt: skip


def main() -> None:
    """Parse the subcommand and print its results as JSON and a markdown table."""
    if len(sys.argv) == 5 and sys.argv[1] == "_child":
        print(json.dumps(_child_memory(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["memory", "speed", "psnr", "tiling"])
    p.add_argument("--frames", type=int, nargs="+", default=[65, 257, 1025])
    p.add_argument("--chunk", type=int, default=16, help="pixel frames per encode chunk")
    p.add_argument("--speed-frames", type=int, default=129)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--shards", type=str)
    p.add_argument("--eval-frames", type=int, default=17)
    p.add_argument("--eval-size", type=int, default=64)
    p.add_argument("--max-clips", type=int, default=64)
    args = p.parse_args()
    if args.what == "memory":
        rows = memory(args)
        print("| path | frames | encode peak / working MiB | decode peak / working MiB |")
        print("|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['mode']} | {r['frames']} | {r['encode_peak_mib']:.0f} / "
                f"{r['encode_working_mib']:.0f} | {r['decode_peak_mib']:.0f} / "
                f"{r['decode_working_mib']:.0f} |"
            )
    elif args.what == "speed":
        print(json.dumps(speed(args), indent=1))
    elif args.what == "psnr":
        print(json.dumps(psnr(args), indent=1))
    else:
        print(json.dumps(tiling(args), indent=1))


if __name__ == "__main__":
    main()
