"""`cinemamba ablate CONFIG [key=value ...]`: train and evaluate one backbone per temporal mixer.

See `cinemamba.apps.ablate` and docs/ablations.md. Writes `ablation.json`, `ablation.md` and
`ablation.png` under the config's `out`; finished mixers are reused on a re-run.
"""

from __future__ import annotations

import argparse
import logging

from cinemamba.apps.ablate import AblationConfig, run_ablation
from cinemamba.config import load_config, to_object

NAME = "ablate"
HELP = "train the same small experiment once per temporal mixer and compare them along length"
EXAMPLES = """
    cinemamba ablate configs/ablation/tiny.yaml steps=300 'mixers=[bimamba,attention]'
"""
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CONFIG, `--fresh` and `key=value` overrides."""
    parser.add_argument("config", help="ablation YAML (configs/ablation/...)")
    parser.add_argument("--fresh", action="store_true", help="redo every stage, reuse nothing")
    parser.add_argument(
        "overrides",
        nargs="*",
        default=[],
        help="key=value overrides, e.g. steps=200 'mixers=[mamba,attention]'",
    )


def run(args: argparse.Namespace) -> int:
    """Run the ablation and print where the report is."""
    cfg: AblationConfig = to_object(load_config(AblationConfig, args.config, args.overrides))
    run_ablation(cfg, fresh=args.fresh)
    print(f"wrote {cfg.out}/ablation.md, ablation.png and ablation.json")
    return 0
