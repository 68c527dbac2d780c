"""The `cinemamba` command's help as a new user meets it (issue 18): version, "did you mean",
no false "required" arguments, defaults shown, an example in every subcommand's help."""

from __future__ import annotations

import shlex

import pytest

import cinemamba
from cinemamba.cli import _command_modules, build_parser, main

COMMANDS = [mod.NAME for mod in _command_modules()]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"cinemamba {cinemamba.__version__}"


@pytest.mark.parametrize(("typo", "meant"), [("trian", "train"), ("train-vea", "train-vae")])
def test_misspelled_command_suggests_the_right_one(typo, meant, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([typo])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"invalid choice: {typo!r}; did you mean {meant!r}" in err


def test_unrelated_word_gets_no_suggestion_but_the_list(capsys):
    with pytest.raises(SystemExit):
        main(["xyzzy"])
    err = capsys.readouterr().err
    assert "did you mean" not in err and "train-vae" in err


@pytest.mark.parametrize("command", ["train-vae", "train", "synth", "ablate"])
def test_no_arguments_names_only_what_is_required(command, capsys):
    with pytest.raises(SystemExit):
        main([command])
    required = capsys.readouterr().err.split("the following arguments are required: ")[1]
    assert "overrides" not in required  # key=value overrides are optional


def test_flag_defaults_are_shown_and_empty_ones_are_not(capsys):
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at any width
    assert "--seed SEED (default: 0)" in out
    assert "--samples-per-shard SAMPLES_PER_SHARD (default: 256)" in out
    assert "(default: None)" not in out and "(default: False)" not in out
    assert out.count("(default: 1024)") == 1  # a help that already says it is not repeated


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_ends_with_a_parseable_example(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "example:\n" in out
    example = out.split("example:\n", 1)[1]
    # The example is a shell line that this parser accepts (continuations joined, comment cut).
    argv = shlex.split(example.replace("\\\n", " "), comments=True)
    assert argv[:2] == ["cinemamba", *command.split()[:1]]
    args, extra = build_parser().parse_known_args(argv[1:])
    assert args.command == command
    assert all("=" in a and not a.startswith("-") for a in extra)


def test_nested_action_help_shows_defaults_and_the_example(capsys):
    with pytest.raises(SystemExit):
        main(["data", "inspect", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--clips CLIPS clips on the contact sheet (default: 6)" in out
    assert "example: cinemamba data inspect" in out
