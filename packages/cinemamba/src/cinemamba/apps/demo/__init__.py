"""The end-to-end demo (`cinemamba demo`) and the resumable stage runner it is built on.

`run_demo(cfg)` makes the synthetic set, trains the VAE, computes latent statistics, exports
latents, trains the backbone, generates long videos, scores them, computes FVD and drift (`fvd`
stage) and writes `report.md` and
`metrics.json` into `cfg.out`; see docs/demo.md.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cinemamba.apps.demo.config import DemoConfig, load_demo_config
from cinemamba.apps.demo.runner import Stage, StageRecord, StageRunner

__all__ = ["DemoConfig", "DemoResult", "demo_stages", "load_demo_config", "run_demo"]


@dataclass
class DemoResult:
    """Where the outputs are and how each stage ended."""

    out: Path
    report: Path
    metrics: Path
    records: list[StageRecord]
    seconds: float


def demo_stages(cfg: DemoConfig, scorer=None) -> list[Stage]:
    """The demo's stages in order (`scorer` replaces the ground-truth detector, for tests)."""
    from cinemamba.apps.demo.evaluate import evaluate_stage
    from cinemamba.apps.demo.fvd import fvd_stage
    from cinemamba.apps.demo.stages import (
        backbone_stage,
        export_stage,
        generate_stage,
        synth_stage,
        vae_stage,
        vae_stats_stage,
    )

    return [
        synth_stage(cfg),
        vae_stage(cfg),
        vae_stats_stage(cfg),
        export_stage(cfg),
        backbone_stage(cfg),
        generate_stage(cfg),
        evaluate_stage(cfg, scorer),
        fvd_stage(cfg),
    ]


def run_demo(cfg: DemoConfig, *, fresh: bool | Sequence[str] = False, scorer=None) -> DemoResult:
    """Run (or reuse) every stage, then write report.md and metrics.json into `cfg.out`.

    `fresh=True` redoes every stage; a list of stage names redoes those and what reads them.
    """
    from cinemamba.apps.demo.report import write_report
    from cinemamba.apps.demo.stages import torch_threads

    torch_threads(cfg.threads)
    started = time.perf_counter()
    out = Path(cfg.out)
    stages = demo_stages(cfg, scorer)
    records = StageRunner(out, stages, fresh=fresh, total=len(stages) + 1).run()
    seconds = time.perf_counter() - started
    metrics, report = write_report(out, cfg, records, seconds)
    total = len(stages) + 1
    print(f"[demo {total}/{total}] report: {report} and {metrics}", file=sys.stderr, flush=True)
    return DemoResult(out, report, metrics, records, seconds)
