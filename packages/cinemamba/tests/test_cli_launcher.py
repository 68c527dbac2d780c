"""`deepspeed --module cinemamba.cli train ...` runs `python -m cinemamba.cli --local_rank=N
train ...` on every rank (deepspeed/launcher/launch.py puts the flag right after the module)."""

from __future__ import annotations

import os

import pytest

from cinemamba.cli import main


@pytest.mark.parametrize("command", ["train", "train-vae"])
@pytest.mark.parametrize("flag", ["--local_rank=1", "--local-rank=1"])
def test_launcher_local_rank_is_accepted(command, flag, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    # The run goes past argument parsing and stops at the missing config file: one clear line.
    assert main([flag, command, str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" not in err and "missing.yaml" in err
    assert os.environ["LOCAL_RANK"] == "1"  # the flag stands in when the env lacks it


def test_launcher_local_rank_never_overrides_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert main(["--local_rank=5", "train", str(tmp_path / "x.yaml")]) == 2
    assert os.environ["LOCAL_RANK"] == "0"
