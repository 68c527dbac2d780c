"""`cinemamba export-latents [--config FILE] key=value ...`: raw video shards -> latent shards.

Run one process per share: `--rank/--world-size`, or under torchrun / SLURM (RANK, WORLD_SIZE
or SLURM_PROCID, SLURM_NTASKS). Re-running resumes: finished shards are skipped. A second
export into a folder another export is writing to stops at once, naming the other process.
"""

from __future__ import annotations

import argparse
import logging
import sys

from cinemamba.config import load_config, to_object
from cinemamba.latents.export import ExportConfig, export_latents
from cinemamba.latents.lock import ExportLockedError

NAME = "export-latents"
HELP = "encode video shards into latent shards (VAE latents + text embeddings) for fast training"
EXAMPLES = """
    cinemamba export-latents input=data/synth/train output=data/latents vae=runs/vae/vae \\
        text_encoder.random_init_seed=0 clip.frames=17
"""
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config`, `--rank`, `--world-size` and `key=value` overrides of ExportConfig."""
    parser.add_argument("--config", help="YAML with ExportConfig fields (optional)")
    parser.add_argument("--rank", type=int, help="this process's share (default: $RANK or 0)")
    parser.add_argument(
        "--world-size", type=int, help="number of shares (default: $WORLD_SIZE or 1)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        default=[],
        help="key=value, e.g. input=data/raw output=data/latents vae=runs/vae/vae "
        "text_encoder.random_init_seed=0 clip.frames=17",
    )


def run(args: argparse.Namespace) -> int:
    """Export this process's shards; print what was done."""
    cfg: ExportConfig = to_object(load_config(ExportConfig, args.config, args.overrides))
    try:
        report = export_latents(cfg, rank=args.rank, world_size=args.world_size)
    except ExportLockedError as err:  # another export holds the folder: one line, no trace
        print(f"cinemamba {NAME}: error: {err}", file=sys.stderr)
        return 2
    log.info(
        "wrote %d shards (%d samples) in %.1f s; %d shards were already complete; skipped %s",
        len(report.written), report.samples, report.seconds, report.already_done,
        dict(report.skipped) or "nothing",
    )  # fmt: skip
    if report.manifest is not None:
        log.info("shard set complete: %s", report.manifest)
    else:
        log.info("other ranks' shards are still missing; the last one writes the manifest")
    return 0
