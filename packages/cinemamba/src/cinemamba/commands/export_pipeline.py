"""`cinemamba export-pipeline SOURCE --out DIR [--no-ema]`: a checkpoint -> a saved pipeline.

SOURCE is a backbone run directory (its latest checkpoint) or one checkpoint; the VAE, text
encoder, process and sampling defaults come from the experiment config saved in it. The
result samples with `cinemamba sample DIR --prompt ...` and loads with
`VideoPipeline.from_pretrained(DIR)`.
"""

from __future__ import annotations

import argparse
import logging

from cinemamba.tasks.backbone import export_pipeline

NAME = "export-pipeline"
HELP = "make a saved pipeline directory from a backbone checkpoint (EMA or trained weights)"
EXAMPLES = """
    cinemamba export-pipeline runs/backbone_tiny --out models/tiny
"""
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """SOURCE, `--out`, `--no-ema`, `--data-path`."""
    parser.add_argument("source", help="a backbone run directory (latest checkpoint) or checkpoint")
    parser.add_argument("--out", required=True, help="the pipeline directory to write")
    parser.add_argument("--no-ema", action="store_true", help="the trained weights, not the EMA")
    parser.add_argument(
        "--data-path", help="the training data's directory, if it moved since training"
    )


def run(args: argparse.Namespace) -> int:
    """Write the pipeline directory."""
    out = export_pipeline(args.source, args.out, ema=not args.no_ema, data_path=args.data_path)
    log.info("wrote pipeline %s", out)
    return 0
