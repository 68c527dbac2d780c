"""A command-line front end for any task: `--config`, `--resume` and `key=value` overrides."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cinemamba.logs import quiet_expected_warnings
from cinemamba.train import distributed
from cinemamba.train.config import load_experiment
from cinemamba.train.task import Task
from cinemamba.train.trainer import TrainResult, train


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every training command shares."""
    parser.add_argument("--config", help="experiment YAML (configs/experiment/...)")
    parser.add_argument(
        "--resume", help="auto | never | a checkpoint path (same as train.resume=...)"
    )
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    # The deepspeed launcher appends --local_rank=N; the engine reads LOCAL_RANK instead.
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)


def run_experiment(
    schema: Any, make_task: Callable[[Any], Task], args: argparse.Namespace
) -> TrainResult:
    """Load the experiment config (schema must have a `train: TrainConfig` field) and train."""
    overrides = list(args.overrides)
    if args.resume:
        overrides.append(f"train.resume={args.resume}")
    cfg = load_experiment(schema, args.config, overrides)
    experiment = OmegaConf.to_object(cfg)
    return train(experiment.train, make_task(experiment), full_config=cfg)


def print_summary(result: TrainResult, prog: str, model: Path | None = None) -> None:
    """Rank 0 prints the run's last line: how it ended, final loss / metrics, wall time, model."""
    if int(os.environ.get("RANK", "0")) == 0:
        shown = model if model is not None and model.exists() else None
        print(result.summary(prog, shown), flush=True)


def main(
    schema: Any, make_task: Callable[[Any], Task], argv: Sequence[str] | None, prog: str
) -> int:
    """Parse `argv`, train, and return an exit code (0 also after a clean preemption stop)."""
    quiet_expected_warnings()
    parser = argparse.ArgumentParser(prog=prog, description="Train with the cinemamba engine.")
    add_train_arguments(parser)
    result = run_experiment(schema, make_task, parser.parse_args(argv))
    print_summary(result, prog)
    distributed.shutdown()  # now, not at interpreter exit, where ZeRO-3 ranks can abort
    return 0 if result.reason in ("done", "signal") else 1
