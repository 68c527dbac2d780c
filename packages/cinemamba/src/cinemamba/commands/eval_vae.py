"""`cinemamba eval-vae VAE_DIR SHARDS`: PSNR / SSIM / LPIPS of reconstructions, per frame.

Writes OUT/reconstruction.json and OUT/reconstruction.md (means and one row per frame
position). LPIPS needs `--lpips` (a local torchvision backbone checkpoint); without it the
report says LPIPS was not computed (`--lpips-random` is for tests only).
"""

from __future__ import annotations

import argparse

from cinemamba.eval.reconstruction import (
    build_eval_lpips,
    evaluate_reconstruction,
    to_markdown,
    write_report,
)
from cinemamba_vae import load_vae

NAME = "eval-vae"
HELP = "reconstruction PSNR / SSIM / LPIPS of a saved VAE over a shard set, per frame position"
EXAMPLES = """
    cinemamba eval-vae runs/vae/vae data/synth/val --out runs/eval_vae --max-videos 4
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """VAE directory, shard set, clip and metric options."""
    parser.add_argument("vae", help="a saved VideoAutoencoder or diffusers VAE directory")
    parser.add_argument("shards", help="raw shard set: a directory, a .tar, a glob or {a..b}")
    parser.add_argument("--out", default="runs/eval_vae", help="report directory")
    parser.add_argument("--max-videos", type=int, default=16, help="0 = all")
    parser.add_argument("--clip-frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=0, help="resize frames (0 = stored size)")
    parser.add_argument("--chunk-frames", type=int, default=None, help="stream K frames at a time")
    parser.add_argument("--lpips", help="local torchvision AlexNet checkpoint for LPIPS")
    parser.add_argument(
        "--lpips-random", action="store_true", help="LPIPS with a random backbone (tests only)"
    )
    parser.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    """Evaluate and write the report."""
    vae = load_vae(args.vae)
    report = evaluate_reconstruction(
        vae,
        args.shards,
        clip_frames=args.clip_frames,
        size=args.size,
        max_videos=args.max_videos,
        lpips_model=build_eval_lpips(args.lpips, args.lpips_random),
        chunk_frames=args.chunk_frames,
        device=args.device,
    )
    if args.lpips_random:
        report["lpips_backbone"] = "random (not a perceptual metric)"
    json_path, _ = write_report(report, args.out)
    print(to_markdown(report))
    print(f"report: {json_path}")
    return 0
