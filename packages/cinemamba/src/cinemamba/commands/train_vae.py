"""`cinemamba train-vae CONFIG [key=value ...]`: train the video VAE with the engine.

CONFIG is an experiment YAML (configs/vae/tiny.yaml) with `train:` (the engine, see
docs/training.md) and `task:` (VAETaskConfig: model, loss, data; see docs/vae.md). Run it as is
on one process, or under torchrun / the deepspeed launcher / SLURM for several.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cinemamba.tasks.vae import load_vae_experiment, train_vae
from cinemamba.train.runner import print_summary

NAME = "train-vae"
HELP = "train the causal video VAE (reconstruction + LPIPS + KL, optional 3D patch GAN)"
EXAMPLES = """
    cinemamba train-vae configs/vae/tiny.yaml task.data.path=data/synth/train
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CONFIG, `--resume` and `key=value` overrides."""
    parser.add_argument("config", help="experiment YAML (configs/vae/...)")
    parser.add_argument(
        "--resume", help="auto | never | a checkpoint path (same as train.resume=...)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        default=[],
        help="key=value, e.g. train.steps=500 task.data.path=data/train",
    )


def run(args: argparse.Namespace) -> int:
    """Train; exit 0 when done or cleanly stopped by a signal (resume with the same command)."""
    overrides = list(args.overrides)
    if args.resume:
        overrides.append(f"train.resume={args.resume}")
    experiment = load_vae_experiment(args.config, overrides)
    result = train_vae(experiment)
    print_summary(result, "cinemamba train-vae", Path(experiment.train.run_dir) / "vae")
    return 0 if result.reason in ("done", "signal") else 1
