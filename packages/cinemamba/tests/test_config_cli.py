"""The config merger and the CLI shell: unknown keys are named, subcommands are found."""

from dataclasses import dataclass, field

import pytest

from cinemamba.cli import build_parser, main
from cinemamba.config import ConfigError, load_config, to_object


@dataclass
class Inner:
    lr: float = 1e-4
    steps: int = 10


@dataclass
class Outer:
    name: str = "x"
    optim: Inner = field(default_factory=Inner)


def test_yaml_and_overrides_merge(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: run1\noptim:\n  steps: 50\n")
    cfg = load_config(Outer, path, ["optim.lr=0.5"])
    obj = to_object(cfg)
    assert (obj.name, obj.optim.steps, obj.optim.lr) == ("run1", 50, 0.5)


def test_unknown_key_is_named_with_suggestion(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  step: 5\n")
    with pytest.raises(ConfigError, match=r"optim\.step.*Did you mean 'steps'"):
        load_config(Outer, path)
    with pytest.raises(ConfigError, match="nmae"):
        load_config(Outer, None, ["nmae=y"])


def test_bad_value_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="optim.steps"):
        load_config(Outer, None, ["optim.steps=many"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Outer, None, ["optim.steps"])


def test_cli_help_lists_and_rejects(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--help"])
    assert exc.value.code == 0
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
