"""`cinemamba shards VIDEO_DIR CAPTIONS OUT`: a folder of videos + captions -> WebDataset shards.

Each shard is written under a temporary name and renamed when complete; re-running the same
command skips complete shards (see docs/data.md).
"""

from __future__ import annotations

import argparse

from cinemamba.data.shards import shards_from_folder

NAME = "shards"
HELP = (
    "build WebDataset tar shards from a folder of videos and captions (.jsonl/.csv, .txt sidecars)"
)
EXAMPLES = """
    cinemamba shards videos captions.jsonl shards --samples-per-shard 1000
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Inputs, output, shard size limits and transcoding."""
    parser.add_argument("videos", help="folder of videos (searched recursively)")
    parser.add_argument(
        "captions",
        help=".jsonl or .csv with a video name and a caption per row (it wins over .txt "
        "sidecars next to the videos, which fill the gaps), or SIDECAR for sidecars only",
    )
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
    parser.add_argument(
        "--shuffle-seed",
        type=int,
        default=0,
        help="seed of the video order across shards, recorded in the plan (default: %(default)s)",
    )
    parser.add_argument(
        "--no-shuffle",
        action="store_true",
        help="keep sorted path order (one class per shard with a folder-per-class layout)",
    )


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
        shuffle_seed=None if args.no_shuffle else args.shuffle_seed,
    )
    skipped = ", ".join(f"{k}={v}" for k, v in sorted(report.skipped.items())) or "none"
    conflicts = (
        f"; caption file over sidecar: {report.caption_conflicts}"
        if report.caption_conflicts
        else ""
    )
    print(
        f"{report.samples} samples in {len(report.shards)} shards under {args.out}; "
        f"skipped: {skipped}{conflicts}"
    )
    return 0
