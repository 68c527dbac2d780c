"""`cinemamba synth OUT`: the embedded synthetic data set (moving coloured shapes) as shards.

Writes `OUT/train/train-*.tar` and `OUT/val/val-*.tar` (held-out colour x shape pairs appear
only in val) through the same shard writer as `cinemamba shards`; see docs/data.md.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from cinemamba.config import load_config, to_object
from cinemamba.data.synth import SceneConfig
from cinemamba.data.synth_video import write_synth

NAME = "synth"
HELP = "write the synthetic moving-shapes data set (train + val shards with ground truth)"
EXAMPLES = """
    cinemamba synth data/synth --train 64 --val 16 frames=33
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Output folder, sample counts, seed and SceneConfig overrides."""
    parser.add_argument("out", help="output folder (train/ and val/ are made inside)")
    parser.add_argument(
        "--train", type=int, default=1024, help="train videos (default: %(default)s)"
    )
    parser.add_argument(
        "--val", type=int, default=128, help="validation videos (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples-per-shard", type=int, default=256)
    parser.add_argument("--workers", type=int, default=1, help="processes writing shards")
    parser.add_argument("--config", help="YAML of SceneConfig fields (the key=value names below)")
    fields = ", ".join(f.name for f in dataclasses.fields(SceneConfig))
    parser.add_argument(
        "overrides", nargs="*", default=[], help=f"key=value scene settings: {fields}"
    )


def run(args: argparse.Namespace) -> int:
    """Write both splits and print where they are."""
    cfg = to_object(load_config(SceneConfig, args.config, args.overrides))
    out = Path(args.out)
    for split, count in (("train", args.train), ("val", args.val)):
        if count > 0:
            paths = write_synth(
                out / split, split, count, cfg, seed=args.seed,
                samples_per_shard=args.samples_per_shard, workers=args.workers,
            )  # fmt: skip
            print(
                f"{split}: {count} videos of {cfg.frames}x{cfg.height}x{cfg.width} in {len(paths)} shards under {out / split}"
            )
    return 0
