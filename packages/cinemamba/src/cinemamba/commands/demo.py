"""`cinemamba demo [--config YAML] [--out DIR] [--fresh | --redo STAGE] [key=value ...]`.

The newcomer's first command (`scripts/demo.sh`): synthetic data -> VAE -> latent statistics
-> latent export -> backbone -> long videos (oneshot and rolling) -> scores -> FVD + drift -> report.md. A
second run reuses every finished stage whose settings did not change; see docs/demo.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cinemamba.train.config import REPO_ROOT

NAME = "demo"
HELP = "train tiny models on the synthetic set and generate scored long videos (see docs/demo.md)"
EXAMPLES = """
    cinemamba demo backbone.train.steps=3200   # more backbone training, runs/demo
"""
DEFAULT_CONFIG = REPO_ROOT / "configs" / "experiment" / "demo.yaml"
STAGES = ("synth", "vae", "vae-stats", "export", "backbone", "generate", "evaluate", "fvd")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--config, --out, --fresh / --redo and key=value overrides."""
    parser.add_argument(
        "--config", default=str(DEFAULT_CONFIG), help="demo YAML (default: %(default)s)"
    )
    parser.add_argument("--out", help="output folder (default: the config's `out`, runs/demo)")
    parser.add_argument("--fresh", action="store_true", help="redo every stage")
    parser.add_argument(
        "--redo",
        action="append",
        choices=STAGES,
        default=[],
        metavar="STAGE",
        help=f"redo this stage and those after it that read it ({', '.join(STAGES)})",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        default=[],
        help="key=value, e.g. backbone.train.steps=3200 generate.frames=513",
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo and print where the report is."""
    from cinemamba.apps.demo import load_demo_config, run_demo
    from cinemamba.apps.demo.runner import StageInterrupted

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out={args.out}")
    cfg = load_demo_config(Path(args.config), overrides)
    try:
        result = run_demo(cfg, fresh=True if args.fresh else list(args.redo))
    except StageInterrupted as err:
        print(f"demo stopped: {err}")
        return 143  # 128 + SIGTERM, as if the signal had ended the process
    print(f"demo finished: open {result.report}")
    return 0
