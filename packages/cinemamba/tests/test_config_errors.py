"""One error behaviour for every cinemamba config loader (`load_config`, `load_experiment`
with its DeepSpeed file, the demo's and the ablation's): a missing file, a YAML syntax error,
an unknown key and a value of the wrong type each give one ConfigError naming the file (and
the key, with close matches for a typo)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cinemamba.apps.demo.config import load_demo_config
from cinemamba.config import ConfigError, load_config
from cinemamba.train import load_experiment
from cinemamba.train.toy import ToyExperiment

DEMO = Path(__file__).parents[3] / "configs" / "experiment" / "demo.yaml"

# Each loader with a valid file's text and the dotted path of an int field inside it.
LOADERS: dict[str, tuple[Callable[[Path], object], str, str]] = {
    "load_config": (lambda p: load_config(ToyExperiment, p), "train:\n  steps: 3\n", "train.steps"),
    "load_experiment": (
        lambda p: load_experiment(ToyExperiment, p),
        "train:\n  steps: 3\n",
        "train.steps",
    ),
    # the demo's own file is the valid one: its checks need the whole config
    "demo": (load_demo_config, DEMO.read_text(), "threads"),
}


def _nest(dotted: str, value: str) -> str:
    """YAML text setting a dotted key (`a.b: v` -> `a:\\n  b: v`)."""
    *parents, leaf = dotted.split(".")
    lines = [f"{'  ' * i}{p}:" for i, p in enumerate(parents)]
    return "\n".join([*lines, f"{'  ' * len(parents)}{leaf}: {value}"]) + "\n"


@pytest.fixture(params=sorted(LOADERS))
def loader(request):
    return LOADERS[request.param]


def test_valid_file_loads(tmp_path: Path, loader) -> None:
    load, text, _ = loader
    path = tmp_path / "ok.yaml"
    path.write_text(text)
    load(path)


def test_missing_file_is_named(tmp_path: Path, loader) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=rf"config file '{re.escape(str(path))}' does not exist"):
        loader[0](path)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path, loader) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("seed: 1\nlist: [1, 2\nother: 3\n")  # unclosed bracket
    with pytest.raises(ConfigError, match=rf"cannot parse config file '{re.escape(str(path))}'"):
        loader[0](path)
    with pytest.raises(ConfigError, match=r"line \d+"):
        loader[0](path)


def test_unknown_key_names_file_key_and_suggestion(tmp_path: Path, loader) -> None:
    load, _, key = loader
    *parents, leaf = key.split(".")
    typo = ".".join([*parents, leaf[:-1] + leaf[-1] * 2])  # steps -> stepss, threads -> threadss
    path = tmp_path / "typo.yaml"
    path.write_text(_nest(typo, "3"))
    with pytest.raises(ConfigError) as err:
        load(path)
    message = str(err.value)
    assert f"unknown config key {typo!r}" in message
    assert f"file {str(path)!r}" in message
    assert f"Did you mean {leaf!r}" in message


def test_wrong_type_names_file_and_key(tmp_path: Path, loader) -> None:
    load, _, key = loader
    path = tmp_path / "type.yaml"
    path.write_text(_nest(key, "many"))
    with pytest.raises(ConfigError) as err:
        load(path)
    message = str(err.value)
    assert f"bad value for {key!r}" in message and f"file {str(path)!r}" in message


def test_not_a_mapping_is_named(tmp_path: Path, loader) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=rf"'{re.escape(str(path))}' must hold a mapping"):
        loader[0](path)


def test_deepspeed_file_errors_are_named(tmp_path: Path) -> None:
    """The DeepSpeed file an experiment names goes through the same reader."""
    ds = tmp_path / "ds.yaml"
    ds.write_text("zero_optimization: {stage: 2\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"train:\n  deepspeed_config: {ds}\n")
    with pytest.raises(ConfigError, match=rf"cannot parse DeepSpeed config '{re.escape(str(ds))}'"):
        load_experiment(ToyExperiment, exp)


def test_valid_configs_mean_the_same(tmp_path: Path) -> None:
    """The shared reader changes no valid config: the experiment equals OmegaConf's own merge."""
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  steps: 7\n")
    cfg = load_experiment(ToyExperiment, path)
    assert cfg.train.steps == OmegaConf.load(path).train.steps == 7
