"""`cinemamba bench [--quick|--full] [--only data,vae,...] [--out docs/benchmarks.md]`.

Runs the data, VAE, scan, backbone, training-step, sampling and cost-growth benchmarks on
this machine and writes the markdown report (machine description, every figure as a ratio
to a reference measured in the same run, median of >= 5 repeats and the spread).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cinemamba.bench import BENCHMARKS, bench

NAME = "bench"
HELP = "benchmark data, VAE, scan, backbone, training step, sampling and cost growth"


def _only(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown benchmark(s) {unknown or text!r}; valid: {','.join(BENCHMARKS)}"
        )
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--quick (default, < 3 min) / --full (the docs), --only, --out, --threads."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="routine check, under 3 minutes (default)")  # fmt: skip
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="the sizes docs/benchmarks.md is made from")  # fmt: skip
    mode.add_argument(
        "--micro", dest="mode", action="store_const", const="micro", help=argparse.SUPPRESS
    )  # seconds; for the runner's own test
    parser.set_defaults(mode="quick")
    parser.add_argument("--only", type=_only, default=list(BENCHMARKS),
                        help=f"comma-separated subset of {','.join(BENCHMARKS)}")  # fmt: skip
    parser.add_argument(
        "--out", type=Path, help="write the markdown here (e.g. docs/benchmarks.md)"
    )
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 keeps ratios stable on a shared machine)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run the benchmarks; print the markdown (and write it with --out)."""
    text, sections = bench(args.mode, args.only, args.out, args.threads)
    print(text)
    failed = [s.key for s in sections if s.title.endswith("(failed)")]
    return 1 if failed else 0
