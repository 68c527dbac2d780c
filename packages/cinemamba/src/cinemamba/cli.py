"""The `cinemamba` command: one entry point, one module per subcommand.

Each module in `cinemamba.commands` defines `NAME`, `HELP`, `EXAMPLES` (shown at the end of
its `--help`), `add_arguments(parser)` and `run(args) -> int`; they are found by listing the
package, so adding a subcommand never touches this file.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence

from cinemamba import __version__, commands
from cinemamba.logs import quiet_expected_warnings


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default (when it has a meaningful one) and keeps example lines as written."""

    @staticmethod
    def _has_default(action: argparse.Action) -> bool:
        # "(default: None)", a switch's "(default: False)" or a list's repr tell a reader
        # nothing; `0` does (hence no `in (None, False)`: 0 == False).
        default = action.default
        if action.nargs == 0 or default is None or default is argparse.SUPPRESS:
            return False
        return not isinstance(default, bool | list | tuple)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if not self._has_default(action):
            return action.help
        return super()._get_help_string(action)

    def _format_action(self, action: argparse.Action) -> str:
        # argparse prints nothing after a flag without help text, not even its default.
        if action.help is None and action.option_strings and self._has_default(action):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with "did you mean" for a misspelled subcommand (Python < 3.14 has none)."""

    def _check_value(self, action: argparse.Action, value: object) -> None:
        if (
            isinstance(action, argparse._SubParsersAction)
            and action.choices is not None
            and value not in action.choices
        ):
            close = difflib.get_close_matches(str(value), list(action.choices), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise argparse.ArgumentError(
                action,
                f"invalid choice: {value!r}{hint} (choose from {', '.join(action.choices)})",
            )
        super()._check_value(action, value)


def _command_modules() -> list:
    mods = [
        importlib.import_module(f"{commands.__name__}.{info.name}")
        for info in pkgutil.iter_modules(commands.__path__)
        if not info.name.startswith("_")
    ]
    return sorted(mods, key=lambda m: m.NAME)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = ArgumentParser(
        prog="cinemamba",
        description="Text-to-long-video latent diffusion with Mamba along time.",
        epilog="Run `cinemamba COMMAND --help` for a command's options and an example.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # `deepspeed --module cinemamba.cli ...` puts --local_rank=N before the subcommand.
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in _command_modules():
        p = sub.add_parser(
            mod.NAME,
            help=mod.HELP,
            description=mod.HELP,
            epilog=f"example:\n{mod.EXAMPLES.strip(chr(10))}",
            formatter_class=HelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run one subcommand; returns the process exit code."""
    quiet_expected_warnings()  # before the command modules import DeepSpeed (and torch's warning)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse fills a `nargs="*"` positional from the first run of positionals only, so a
    # `key=value` after an option (`--out y pipeline.window=3`) is left over: it belongs to
    # the subcommand's overrides wherever it stands.
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if args.local_rank is not None:
        # The launcher also sets LOCAL_RANK; without it (a hand-made launch) the flag stands in.
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as err:
        # User-facing problems (bad config, missing files) end with one clear line, no trace.
        if args.verbose:
            raise
        print(f"cinemamba {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        # A checkpoint that could not be written (a full disk) is one line too, exit 1.
        from cinemamba.train.checkpoint import CheckpointSaveError

        if args.verbose or not isinstance(err, CheckpointSaveError):
            raise
        print(f"cinemamba {args.command}: error: {err.strerror}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
