"""`python -m cinemamba.train.consolidate SOURCE OUT`: export weights for inference.

Consolidates a checkpoint from any ZeRO stage (or a run's latest) into one fp32 safetensors
file, EMA weights by default, in one process without DeepSpeed's process group.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cinemamba.train.export import export_weights


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and export; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m cinemamba.train.consolidate",
        description="Consolidate a checkpoint (any ZeRO stage) into one fp32 safetensors file.",
    )
    parser.add_argument("source", help="a run directory (its latest checkpoint) or a checkpoint")
    parser.add_argument("out", help="output .safetensors file")
    parser.add_argument("--model", help="which model, when the run trains several")
    parser.add_argument("--no-ema", action="store_true", help="the trained weights, not the EMA")
    args = parser.parse_args(argv)
    try:
        path = export_weights(args.source, args.out, ema=not args.no_ema, model=args.model)
    except (ValueError, FileNotFoundError) as err:
        # A wrong model name or path is the user's to fix: one line naming it, no traceback.
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
