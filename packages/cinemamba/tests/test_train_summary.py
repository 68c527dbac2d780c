"""Every training command ends with one summary line (issue 18): how it ended, the final losses
(those of the last step in log.jsonl), the last evaluation, the wall time, the saved model."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cinemamba.train.trainer import TrainResult

pytestmark = pytest.mark.distributed
TOY = Path(__file__).parents[3] / "configs" / "experiment" / "toy.yaml"


def last_records(run_dir: Path) -> tuple[dict, dict]:
    """The last train and the last eval record of a run's log.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return (
        [r for r in rows if r["kind"] == "train"][-1],
        [r for r in rows if r["kind"] == "eval"][-1],
    )


def shown(line: str, key: str) -> float:
    """The number printed after `key` in a summary line."""
    return float(re.search(rf"\b{re.escape(key)} ([-\d.e+]+)", line).group(1))


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> tuple[Path, str]:
    """The toy entry point run as a user runs it (its own process: the entry point tears the
    process group down at its end, which an in-process caller could not start again)."""
    run = tmp_path_factory.mktemp("toy") / "run"
    done = subprocess.run(
        [sys.executable, "-m", "cinemamba.train.toy", "--config", str(TOY),
         f"train.run_dir={run}", "train.steps=4", "train.log_every=1", "train.eval_every=2",
         "train.progress=false"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return run, done.stdout


def test_toy_trainer_ends_with_a_summary(toy_run):
    run, stdout = toy_run
    line = stdout.strip().splitlines()[-1]
    train, evaluation = last_records(run)
    assert line.startswith("python -m cinemamba.train.toy: done at step 4/4 in ")
    for key in ("regressor/loss", "critic/loss"):
        assert shown(line, key) == pytest.approx(train[key], rel=1e-3)  # printed to 4 digits
    assert shown(line, "mse") == pytest.approx(evaluation["mse"], rel=1e-3)
    assert line.endswith(f"checkpoint {run / 'checkpoints' / 'step_00000004'}")
    assert (run / "checkpoints" / "step_00000004").is_dir()


@pytest.mark.parametrize(
    ("seconds", "text"), [(3.04, "3.0s"), (59.6, "1m00s"), (125, "2m05s"), (7325, "2h02m")]
)
def test_wall_time_reads_like_a_clock(seconds, text):
    result = TrainResult(5, "done", None, {"m/loss": 0.5}, steps=5, seconds=seconds)
    assert result.summary("x") == f"x: done at step 5/5 in {text}; m/loss 0.5"


def test_a_stopped_run_says_how_to_resume():
    result = TrainResult(3, "signal", Path("r/c"), steps=9, seconds=1)
    assert result.summary("x") == (
        "x: stopped by a signal (resume: same command) at step 3/9 in 1.0s; checkpoint r/c"
    )


def test_tensorboard_tags_are_the_documented_ones(toy_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = toy_run
    tags = set(EventAccumulator(str(run / "tensorboard")).Reload().Tags()["scalars"])
    train, evaluation = last_records(run)
    # Every log.jsonl name appears in TensorBoard under its record's kind, as docs/training.md says.
    names = {k for k in train if k not in ("kind", "step", "time")}
    assert {f"train/{k}" for k in names} | {f"eval/{k}" for k in evaluation if k == "mse"} <= tags
    assert {"train/regressor/loss", "train/regressor/lr", "train/perf/samples_per_s"} <= tags
    doc = (TOY.parents[2] / "docs" / "training.md").read_text()
    for tag in ("`train/<phase>/loss`", "`train/perf/samples_per_s`", "`eval/<metric>`"):
        assert tag in doc
