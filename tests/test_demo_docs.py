"""scripts/demo_docs.py: docs/demo.md's measured block comes from one demo run (issue 18)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "demo_docs.py"
BEGIN = "<!-- scripts/demo_docs.py: generated from here -->"
END = "<!-- scripts/demo_docs.py: generated to here -->"

# A report as `cinemamba.apps.demo.report.write_report` lays it out: title, opening, sections.
REPORT = """# cinemamba demo report

Wall time of all stages: **1.5 min (90 s)** (budget 20 min).

## Targets

| score | target | reached (mean) |
|---|---|---|
| colour accuracy | 0.900 | 0.625 |

## Missed targets and the budget that would reach them

- a paragraph about other runs that the page must not copy

## Videos

![sheet](generate/final/oneshot/00.png)

## Stages

| stage | status | wall time (s) |
|---|---|---|
| vae | ran | 42.000 |

A reused stage shows the time of the run that made it.
"""


def _video(prompt: str, mode: str, scores: tuple[float, ...], heldout: bool) -> dict:
    names = ("colour_accuracy", "shape_accuracy", "motion_accuracy", "identity_persistence")
    return {"prompt": prompt, "mode": mode, "variant": "final", "heldout": heldout,
            "scores": dict(zip(names, scores, strict=True))}  # fmt: skip


def _run(tmp: Path, page: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(tmp / "run"), "--markdown", str(page)],
                          capture_output=True, text=True, cwd=REPO)  # fmt: skip


def test_block_holds_the_runs_report_sections_and_scores_and_keeps_the_page(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.md").write_text(REPORT)
    videos = [
        _video("a red circle", "oneshot", (1.0, 0.25, 0.5, 0.125), False),
        _video("a red circle", "rolling", (0.75, 0.5, 1.0, 0.5), False),
        _video("a yellow circle", "rolling", (1.0, 0.0, 0.25, 0.0), True),
        {**_video("a red circle", "oneshot", (0.0, 0.0, 0.0, 0.0), False), "variant": "half"},
    ]
    (run / "metrics.json").write_text(json.dumps({"videos": videos}))
    page = tmp_path / "demo.md"
    page.write_text(f"# Demo\n\n## Measured\n\nbefore\n\n{BEGIN}\nold 9.99\n{END}\n\nafter\n")

    done = _run(tmp_path, page)
    assert done.returncode == 0, done.stderr
    text = page.read_text()
    head, rest = text.split(BEGIN)
    block, tail = rest.split(END)
    assert head == "# Demo\n\n## Measured\n\nbefore\n\n" and tail == "\n\nafter\n"
    assert "old 9.99" not in block
    assert "**1.5 min (90 s)**" in block  # the opening paragraph
    assert "| colour accuracy | 0.900 | 0.625 |" in block and "| vae | ran | 42.000 |" in block
    assert "other runs" not in block and "generate/final" not in block  # sections not copied
    # rows per prompt, columns per mode; the `half` checkpoint's video is not a final one
    assert "| a red circle | 1.00 / 0.25 / 0.50 / 0.12 | 0.75 / 0.50 / 1.00 / 0.50 |" in block
    assert "| a yellow circle (held out) | – | 1.00 / 0.00 / 0.25 / 0.00 |" in block

    assert _run(tmp_path, page).returncode == 0
    again = page.read_text()
    assert again.count(BEGIN) == 1 and again.endswith("\n\nafter\n")


def test_a_run_without_a_report_is_refused_naming_it_and_the_page_is_untouched(tmp_path):
    (tmp_path / "run").mkdir()
    page = tmp_path / "demo.md"
    page.write_text("# Demo\n")
    done = _run(tmp_path, page)
    assert done.returncode != 0 and "report.md not found" in done.stderr
    assert page.read_text() == "# Demo\n"
