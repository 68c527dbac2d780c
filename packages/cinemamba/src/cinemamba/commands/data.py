"""`cinemamba data inspect SHARDS`: counts, histograms, bad samples and a contact sheet."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cinemamba.data.inspection import contact_sheet, format_report, inspect_shards

NAME = "data"
HELP = "inspect WebDataset video shards (statistics, bad samples, contact sheet)"
EXAMPLES = """
    cinemamba data inspect data/synth/train --contact sheet.png --clips 6 --frames 8
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `inspect` action and its options."""
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser(
        "inspect",
        help="statistics, bad-sample counts and a PNG contact sheet",
        # the command's own help style (defaults shown) and example, one level down
        formatter_class=parser.formatter_class,
        epilog=parser.epilog,
    )
    p.add_argument("shards", help="shard folder, brace pattern, comma list or pipe: command")
    p.add_argument("--contact", default="contact_sheet.png", help="PNG path (default: %(default)s)")
    p.add_argument("--clips", type=int, default=6, help="clips on the contact sheet")
    p.add_argument("--frames", type=int, default=8, help="frames per clip on the sheet")
    p.add_argument("--json", help="also write the summary as JSON here")


def run(args: argparse.Namespace) -> int:
    """Inspect, print the report, write the sheet (and JSON)."""
    stats, rows = inspect_shards(args.shards, contact_clips=args.clips, contact_frames=args.frames)
    summary = stats.summary()
    print(format_report(summary))
    if rows:
        print(f"contact sheet: {contact_sheet(rows, args.contact)}")
    if args.json:
        path = Path(args.json)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(summary, indent=1))
        tmp.replace(path)
    return 0 if stats.samples else 1
