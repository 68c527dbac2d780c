"""`cinemamba bench [--quick|--full] [--only data,vae,...] [--out docs/benchmarks.md]`.

Runs the data, VAE, scan, backbone, training-step, sampling and cost-growth benchmarks on
this machine and writes the markdown report (machine description, every figure as a ratio
to a reference measured in the same run, median of >= 5 repeats and the spread).

`cinemamba bench --gpu [--quick|--full] [--out docs/benchmarks.md] [--json R.json]` runs the
GPU benchmark instead (apps/bench/gpu.py) and writes its own generated block of the page.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from cinemamba.apps.bench import BENCHMARKS, bench
from cinemamba.apps.bench.gpu import GPU_SCALES, GPUUnavailableError, run_gpu_bench
from cinemamba.apps.bench.gpu_report import merge_gpu, render_gpu
from cinemamba.apps.bench.runner import write_atomic

NAME = "bench"
HELP = "benchmark data, VAE, scan, backbone, training step, sampling and cost growth"
EXAMPLES = """
    cinemamba bench --quick --only scan,backbone
"""


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
    parser.add_argument("--gpu", action="store_true",
                        help="the CUDA benchmark (scan GB/s, VideoDiT vs T, MFU) instead")  # fmt: skip
    parser.add_argument("--json", type=Path, help="--gpu: also write the results as JSON here")
    parser.add_argument("--markdown", type=Path, help="--gpu: also write the markdown block here")
    parser.add_argument("--from-json", type=Path, dest="from_json",
                        help="--gpu: render a saved --json result (no GPU needed), e.g. to "
                        "put a GPU machine's run into docs/benchmarks.md with --out")  # fmt: skip
    parser.add_argument("--budget", type=float,
                        help="--gpu: wall-clock seconds for the whole run (cases past it are "
                        "reported as skipped)")  # fmt: skip


def _run_gpu(args: argparse.Namespace) -> int:
    if args.only != list(BENCHMARKS):
        raise ValueError("--only does not apply to --gpu (it runs scan, VideoDiT and MFU)")
    if args.from_json is not None:
        result = json.loads(args.from_json.read_text())
    else:
        scale = GPU_SCALES["full" if args.mode == "full" else "quick"]
        if args.budget is not None:
            scale = replace(scale, budget_s=args.budget)
        try:
            result = run_gpu_bench(scale)
        except GPUUnavailableError as err:
            print(f"cinemamba bench: {err}", file=sys.stderr)
            return 2
    text = render_gpu(result)
    print(text)
    if args.json is not None:
        write_atomic(args.json, json.dumps(result, indent=1) + "\n")
    if args.markdown is not None:
        write_atomic(args.markdown, text)
    if args.out is not None:
        existing = args.out.read_text() if args.out.is_file() else None
        write_atomic(args.out, merge_gpu(existing, text))
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the benchmarks; print the markdown (and write it with --out)."""
    if args.gpu:
        return _run_gpu(args)
    text, sections = bench(args.mode, args.only, args.out, args.threads)
    print(text)
    failed = [s.key for s in sections if s.title.endswith("(failed)")]
    return 1 if failed else 0
