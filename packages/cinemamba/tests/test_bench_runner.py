"""`cinemamba bench`: the runner regenerates the markdown with every section and finite ratios;
the figure arithmetic and the phase clock against hand-made numbers."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pytest
import torch

from cinemamba.apps.bench import BENCHMARKS, Figure, slope
from cinemamba.apps.bench.runner import BEGIN, END, merge, merge_sections, render
from cinemamba.apps.bench.training import PhaseClock
from cinemamba.cli import main

pytestmark = pytest.mark.distributed  # the train benchmark starts a (one-rank) gloo group

TITLES = {
    "data": "## Data: VideoLoader vs raw PyAV decode",
    "vae": "## Video VAE (tiny preset)",
    "scan": "## Selective scan (CPU fast path)",
    "backbone": "## VideoDiT vs frame count",
    "backbones": "## Backbone crossover (VideoDiTs of matched parameters)",
    "train": "## Training step breakdown (DeepSpeed engine, one process)",
    "sampling": "## Sampling: seconds per generated frame by long-video mode",
    "growth": "## Cost growth with frame count (whole pipeline)",
    "fvd": "## FVD: I3D feature throughput (CPU)",
}


def test_figure_ratio_is_median_of_per_repeat_ratios_and_target_checks_it() -> None:
    """Ratios pair each measurement with the reference of its own repeat."""
    f = Figure("s", "x", "s", [2, 4, 9, 1, 3], [1, 1, 3, 1, 1], "ref", target=2.5)
    assert f.ratios == [2, 4, 3, 1, 3]
    assert f.ratio == 3 and f.spread == (1, 4) and f.repeats == 5
    assert f.passed is False
    assert Figure("s", "x", "s", [1.0] * 5, [2.0] * 5, "r", target=0.5).passed is True
    up = Figure("s", "x", "s", [3.0] * 5, [1.0] * 5, "r", target=2, higher_is_better=True)
    assert up.passed is True
    with pytest.raises(ValueError, match="same non-zero count"):
        Figure("s", "x", "s", [1.0, 2.0], [1.0], "r")


def test_slope_recovers_power_laws() -> None:
    """log-log slope of y = c x^k is k, exactly."""
    xs = [16.0, 64.0, 256.0, 1024.0]
    assert slope(xs, [3 * x**2 for x in xs]) == pytest.approx(2.0)
    assert slope(xs, [0.5 * x for x in xs]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=">= 2 paired points"):
        slope([1.0], [1.0])


def test_phase_clock_keeps_exclusive_time() -> None:
    """Time inside a nested phase is taken out of its parent; the parts add up."""
    clock = PhaseClock()

    def spin(seconds: float) -> None:
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass

    start = time.process_time()
    with clock.phase("outer"):
        spin(0.05)
        with clock.phase("inner"):
            spin(0.1)
    total = time.process_time() - start
    assert clock.totals["inner"] == pytest.approx(0.1, abs=0.02)
    assert clock.totals["outer"] == pytest.approx(0.05, abs=0.02)
    assert clock.totals["inner"] + clock.totals["outer"] == pytest.approx(total, abs=1e-3)


def test_render_marks_targets_and_keeps_every_section() -> None:
    """The summary has one row per figure with pass/FAIL; each section gets its heading."""
    from cinemamba.apps.bench import Section

    sections = [
        Section("a", "A", [Figure("a", "fast", "s", [1.0] * 5, [2.0] * 5, "r", target=1)]),
        Section("b", "B", [Figure("b", "slow", "s", [3.0] * 5, [1.0] * 5, "r", target=1)], ["x"]),
    ]
    text = render(sections, {"CPU": "test"}, "quick", 10.0)
    assert "| a | fast | 1 s | 2 (r) | 0.5 | 0.5–0.5 | 5 | ≤ 1: pass |" in text
    assert "≤ 1: FAIL" in text and "## A" in text and "## B" in text
    assert "target < 180 s: pass" in text and "| CPU | test |" in text


def test_merge_replaces_only_the_generated_block() -> None:
    """Hand-written text before and after the markers survives any number of regenerations."""
    first = render([], {"CPU": "one"}, "full", 1.0)
    page = merge("# Benchmarks\n\nintro\n\n## VAE\n\nzebra\n", first)
    assert page.startswith("# Benchmarks\n\n" + BEGIN) and page.endswith("## VAE\n\nzebra\n")
    edited = page.replace("# Benchmarks\n", "# Benchmarks\n\naardvark\n")
    again = merge(edited, render([], {"CPU": "two"}, "full", 2.0))
    assert "| CPU | two |" in again and "| CPU | one |" not in again
    assert again.count(BEGIN) == again.count(END) == 1
    assert again.count("intro") == again.count("zebra") == again.count("aardvark") == 1
    assert merge(None, first) == first


def test_merge_sections_replaces_only_the_rerun_benchmarks() -> None:
    """`--only scan --out page`: the scan rows and section change, the rest of the block and
    the hand-written text stay, and a dated note says what was rerun (once per rerun set)."""
    from cinemamba.apps.bench import Section

    def sections(scan_time: float) -> list[Section]:
        return [
            Section("vae", "VAE", [Figure("vae", "enc", "s", [2.0] * 5, [1.0] * 5, "r")], ["v"]),
            Section(
                "scan", "Scan", [Figure("scan", "fwd", "s", [scan_time] * 5, [1.0] * 5, "r")],
                [f"scan table {scan_time}"],
            ),
        ]  # fmt: skip

    page = merge("# Benchmarks\n\nintro\n", render(sections(3.0), {"CPU": "one"}, "full", 1.0))
    rerun = sections(0.5)[1:]
    for _ in range(2):
        page = merge_sections(page, render(rerun, {"CPU": "two"}, "full", 1.0), rerun, "_Up x_")
    assert "| scan | fwd | 0.5 s |" in page and "| scan | fwd | 3 s |" not in page
    assert "scan table 0.5" in page and "scan table 3.0" not in page
    assert page.index("| vae | enc |") < page.index("| scan | fwd |")  # canonical order
    assert "\nv\n" in page and "| CPU | one |" in page and "| CPU | two |" not in page
    assert page.count("_Up x_") == page.count("intro") == page.count("## Scan") == 1
    # a benchmark the page has never had is added once, inside the generated block
    new = [Section("fvd", "FVD", [Figure("fvd", "clip", "s", [1.0] * 5, [1.0] * 5, "r")], ["f"])]
    for _ in range(2):
        page = merge_sections(page, render(new, {}, "full", 1.0), new, "_Up y_")
    assert page.count("## FVD") == 1 and page.count("| fvd | clip |") == 1
    assert page.index("## Scan") < page.index("## FVD") < page.index(END)
    assert "scan table 0.5" in page and "\nv\n" in page


def test_cli_micro_run_regenerates_every_section(tmp_path: Path) -> None:
    """`cinemamba bench --micro --out FILE` writes all sections, finite ratios, >= 5 repeats."""
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n## Backbone\n\nhand-written note\n")
    threads = torch.get_num_threads()
    assert main(["bench", "--micro", "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads  # the runner restores the thread count
    text = out.read_text()
    assert text.count("hand-written note") == 1 and not list(tmp_path.glob("*.partial"))
    assert text.index(END) < text.index("hand-written note")
    for name in BENCHMARKS:
        assert TITLES[name] in text, name
    assert "(failed)" not in text
    for key in ("| CPU |", "| cores (os.cpu_count) |", "| RAM |", "| torch |", "| torch threads |"):
        assert key in text
    summary = text.split("## Summary")[1].split("\n## ")[0]
    rows = [r for r in summary.splitlines() if r.startswith("| ") and not r.startswith("| bench")]
    assert {r.split(" | ")[0][2:] for r in rows} == set(BENCHMARKS)
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        ratio, spread, repeats = float(cells[4]), cells[5], cells[6]
        lo, hi = (float(x) for x in re.split(r"–", spread))
        assert math.isfinite(ratio) and lo <= ratio <= hi, row
        if "memory" in cells[1]:  # peak tensor bytes: deterministic, one measurement
            assert repeats == "1 (exact)" and lo == hi == ratio, row
        else:
            assert int(repeats) >= 5, row
    growth = text.split(TITLES["growth"])[1]
    for stage in ("encode", "train step", "sample", "decode"):
        assert f"| {stage} |" in growth
    assert "slope time" in growth
    # `--only scan` on that page: the scan section is redone, the other sections stay.
    assert main(["bench", "--micro", "--only", "scan", "--out", str(out)]) == 0
    again = out.read_text()
    assert again.count("--only scan` on") == 1 and again.count(TITLES["scan"]) == 1
    machine = again.split("## Machine")[1].split("## Summary")[0]
    assert machine == text.split("## Machine")[1].split("## Summary")[0]  # from the full run
    assert again.split(TITLES["growth"])[1] == growth  # other sections untouched
