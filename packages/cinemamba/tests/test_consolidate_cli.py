"""`python -m cinemamba.train.consolidate` on the toy run, as docs/training.md shows it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cinemamba.train.consolidate import main as consolidate

pytestmark = pytest.mark.distributed
TOY = Path(__file__).parents[3] / "configs" / "experiment" / "toy.yaml"


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    # Its own process, as a user runs it (the entry point tears its process group down).
    run = tmp_path_factory.mktemp("toy") / "run"
    done = subprocess.run(
        [sys.executable, "-m", "cinemamba.train.toy", "--config", str(TOY),
         f"train.run_dir={run}", "train.steps=2", "train.progress=false"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return run


def test_exports_the_named_model(toy_run, tmp_path, capsys):
    out = tmp_path / "regressor.safetensors"
    assert consolidate([str(toy_run), str(out), "--model", "regressor"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    ema = load_file(
        str(toy_run / "checkpoints" / "step_00000002" / "ema" / "regressor.safetensors")
    )
    exported = load_file(str(out))
    assert exported.keys() == ema.keys()
    assert all(torch.equal(exported[k], ema[k]) for k in ema)


def test_a_model_the_run_lacks_is_one_line_naming_the_ones_it_has(toy_run, tmp_path, capsys):
    assert consolidate([str(toy_run), str(tmp_path / "g.safetensors"), "--model", "generator"]) == 2
    err = capsys.readouterr().err
    assert "has no model 'generator'; it has ['regressor', 'critic']" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "g.safetensors").exists()
