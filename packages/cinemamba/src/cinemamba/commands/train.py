"""`cinemamba train CONFIG [key=value ...]`: train the VideoDiT backbone with the engine.

CONFIG is an experiment YAML (configs/experiment/backbone_tiny.yaml) with `train:` (the engine,
see docs/training.md) and `task:` (BackboneTaskConfig). Run it as is on one process, or under
torchrun / the deepspeed launcher / SLURM for several.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cinemamba.tasks.backbone import load_backbone_experiment, train_backbone
from cinemamba.train.runner import print_summary

NAME = "train"
HELP = "train the video diffusion backbone (from latent shards or raw video shards)"
EXAMPLES = """
    cinemamba train configs/experiment/backbone_tiny.yaml task.vae=runs/vae/vae \\
        task.data.path=data/latents train.run_dir=runs/backbone_tiny
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CONFIG, `--resume` and `key=value` overrides."""
    parser.add_argument("config", help="experiment YAML (configs/experiment/...)")
    parser.add_argument(
        "--resume", help="auto | never | a checkpoint path (same as train.resume=...)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        default=[],
        help="key=value, e.g. train.steps=500 task.data.path=data/latents",
    )


def run(args: argparse.Namespace) -> int:
    """Train; exit 0 when done or cleanly stopped by a signal (resume with the same command)."""
    overrides = list(args.overrides)
    if args.resume:
        overrides.append(f"train.resume={args.resume}")
    experiment = load_backbone_experiment(args.config, overrides)
    result = train_backbone(experiment)
    run_dir = Path(experiment.train.run_dir)
    # A saved pipeline (samples with `cinemamba sample DIR`) when the run names its VAE.
    pipeline = run_dir / "pipeline"
    print_summary(
        result, "cinemamba train", pipeline if pipeline.exists() else run_dir / "backbone"
    )
    return 0 if result.reason in ("done", "signal") else 1
