"""`python -m cinemamba.train.consolidate` on the toy run, as docs/training.md shows it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cinemamba.train.consolidate import main as consolidate
from cinemamba.train.toy import main as toy_main

pytestmark = pytest.mark.distributed
TOY = Path(__file__).parents[3] / "configs" / "experiment" / "toy.yaml"


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("toy") / "run"
    assert toy_main(["--config", str(TOY), f"train.run_dir={run}", "train.steps=2",
                     "train.progress=false"]) == 0  # fmt: skip
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
