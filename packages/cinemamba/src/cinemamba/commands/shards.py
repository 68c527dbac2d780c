"""`cinemamba shards VIDEO_DIR CAPTIONS OUT`: a folder of videos + captions -> WebDataset shards.

Each shard is written under a temporary name and renamed when complete; re-running the same
command skips complete shards (see docs/data.md).
"""

from __future__ import annotations

import argparse

from cinemamba.data.shards import shards_from_folder

NAME = "shards"
HELP = "build WebDataset tar shards from a folder of videos and a .jsonl/.csv caption file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Inputs, output, shard size limits and transcoding."""
    parser.add_argument("videos", help="folder of videos (searched recursively)")
    parser.add_argument("captions", help=".jsonl or .csv with a video name and a caption per row")
    parser.add_argument("out", help="output folder for PREFIX-000000.tar, ... and PREFIX.plan.json")
    parser.add_argument(
        "--prefix", default="shard", help="shard name prefix (default: %(default)s)"
    )
    parser.add_argument(
        "--samples-per-shard", type=int, default=1000, help="(default: %(default)s)"
    )
    parser.add_argument(
        "--bytes-per-shard",
        type=int,
        default=None,
        help="also cap shard size in bytes (source sizes)",
    )
    parser.add_argument(
        "--transcode", action="store_true", help="re-encode mp4 files too (others always are)"
    )
    parser.add_argument("--crf", type=int, default=18, help="x264 quality when transcoding")
    parser.add_argument("--workers", type=int, default=1, help="processes writing shards")


def run(args: argparse.Namespace) -> int:
    """Write the shards and print what was written and skipped."""
    report = shards_from_folder(
        args.videos,
        args.captions,
        args.out,
        prefix=args.prefix,
        max_samples=args.samples_per_shard,
        max_bytes=args.bytes_per_shard,
        transcode=args.transcode,
        crf=args.crf,
        workers=args.workers,
    )
    skipped = ", ".join(f"{k}={v}" for k, v in sorted(report.skipped.items())) or "none"
    print(
        f"{report.samples} samples in {len(report.shards)} shards under {args.out}; skipped: {skipped}"
    )
    return 0
