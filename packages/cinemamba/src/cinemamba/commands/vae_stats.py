"""`cinemamba vae-stats VAE_DIR SHARDS`: per-channel latent mean / std, written into the VAE.

The statistics are those of raw posterior samples (what the diffusion model will see) over the
first clip of each video, accumulated in float64; they replace the checkpoint's `latent_mean` /
`latent_std` buffers, so `encode` returns zero-mean, unit-std latents from then on.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from cinemamba.eval.reconstruction import iter_clips
from cinemamba.latents.clips import ClipConfig
from cinemamba.latents.stats import latent_stats
from cinemamba_vae import load_vae

NAME = "vae-stats"
HELP = "compute per-channel latent statistics over shards and store them in a saved VAE"
EXAMPLES = """
    cinemamba vae-stats runs/vae/vae data/synth/train --clip-frames 17
"""

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """VAE directory, shard set and clip options."""
    parser.add_argument(
        "vae", help="a saved VideoAutoencoder or diffusers VAE directory (updated in place)"
    )
    parser.add_argument("shards", help="raw shard set: a directory, a .tar, a glob or {a..b}")
    parser.add_argument("--max-videos", type=int, default=64, help="0 = all")
    parser.add_argument("--clip-frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=0, help="resize frames (0 = stored size)")
    parser.add_argument("--chunk-frames", type=int, default=None, help="stream K frames at a time")
    parser.add_argument("--out", help="write the updated VAE here instead of in place")


def run(args: argparse.Namespace) -> int:
    """Compute the statistics and save the VAE with them."""
    vae = load_vae(args.vae).eval()
    s = vae.config.spatial_compression
    vae.latent_shape(args.clip_frames, s, s)  # fail early, naming the rule, on a bad length
    clip = ClipConfig(frames=args.clip_frames, height=args.size, width=args.size, start="first")
    skipped: Counter = Counter()

    def clips():
        for i, (_, frames) in enumerate(iter_clips(args.shards, clip, skipped)):
            if args.max_videos and i >= args.max_videos:
                return
            yield frames

    total = args.max_videos or None
    mean, std, n = latent_stats(
        vae, tqdm(clips(), desc="vae-stats", total=total), chunk_frames=args.chunk_frames
    )
    vae.set_latent_stats(mean, std)
    out = Path(args.out or args.vae)
    vae.save_pretrained(out)
    summary = {"clips": n, "skipped": dict(skipped), "mean": mean.tolist(), "std": std.tolist()}
    print(json.dumps(summary, indent=1))
    log.info("latent statistics of %d clips written to %s", n, out)
    return 0
