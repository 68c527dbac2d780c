"""Slowdown of the demo's backbone training step when one other identical process shares the CPU.

    .venv/bin/python scripts/bench_contention.py                      # about 5-10 min on 2 cores
    .venv/bin/python scripts/bench_contention.py --markdown docs/benchmarks.md
    .venv/bin/python scripts/bench_contention.py --steps 4 --repeats 1   # smoke run

Each case runs the step of `cinemamba demo`'s backbone stage (the VideoDiT of
configs/experiment/demo.yaml at its batch size and latent clip, fp32 AdamW, torch's default
thread count) in fresh processes: once alone, then as two identical processes started together.
The figure is wall seconds per step with a competitor ÷ alone, measured in the same repeat;
fair sharing of the cores is 2x, issue 14 asks for <= 2.5x. Cases: libgomp's default with a
fixed thread count (idle threads spin 300,000 iterations), the trainer's default thread
governor (cinemamba.train.threads: every 2 s, threads = the cores other processes leave free),
idle threads asleep (OMP_WAIT_POLICY=PASSIVE), and one thread per process. The step is a plain
PyTorch loop, not the DeepSpeed engine (ZeRO-0 on one CPU process adds bookkeeping, not
parallel regions); the governor is polled before each step, as the trainer does, and the
median step is reported. A machine with other load skews both sides of a ratio;
the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEGIN = "<!-- scripts/bench_contention.py: generated from here -->"
END = "<!-- scripts/bench_contention.py: generated to here -->"
AFTER = "<!-- cinemamba bench: generated to here -->"  # the block goes below `cinemamba bench`'s
TARGET = 2.5  # issue 14: at most about the fair share (2x) with one competing process
WARMUP = 3  # steps not timed (allocator and kernel build)


def _cases() -> dict[str, tuple[dict[str, str | None], bool]]:
    """Name -> (OpenMP environment, None removes a variable; whether the thread governor runs)."""
    plain = {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None, "OMP_NUM_THREADS": None}
    return {
        "fixed threads, libgomp default (train.adapt_threads=false)": (plain, False),
        "thread governor (the trainer's default)": (plain, True),
        "idle threads asleep (OMP_WAIT_POLICY=PASSIVE)": (
            {**plain, "OMP_WAIT_POLICY": "PASSIVE"},
            False,
        ),
        "one thread per process (OMP_NUM_THREADS=1)": ({**plain, "OMP_NUM_THREADS": "1"}, False),
    }


# ---- child: the demo's backbone step ------------------------------------------------------
def child(steps: int, ready: Path, go: Path, governed: bool) -> dict:
    """Time `steps` training steps of the demo backbone after `go` appears; wall s/step. With
    `governed`, the trainer's ThreadGovernor is polled before every step, as the trainer does."""
    import torch

    from cinemamba.apps.demo.config import load_demo_config
    from cinemamba_backbone import VideoDiT

    cfg = load_demo_config(REPO / "configs/experiment/demo.yaml")
    model_cfg = cfg.backbone.task.backbone
    vae = cfg.vae.task.model
    frames = (cfg.data.frames - 1) // vae.temporal_compression + 1  # causal VAE: 33 -> 9
    size = cfg.data.size // vae.spatial_compression
    batch = cfg.backbone.train.batch_size
    torch.manual_seed(0)
    model = VideoDiT(model_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, model_cfg.in_channels, frames, size, size)
    t = torch.rand(batch, frames)  # per-frame noise levels, as the demo trains
    text = torch.randn(batch, 8, model_cfg.text_dim)

    def step() -> None:
        noise = torch.randn_like(x)
        xt = (1 - t[:, None, :, None, None]) * x + t[:, None, :, None, None] * noise
        loss = (model(xt, t, text) - (noise - x)).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(WARMUP):
        step()
    ready.touch()
    while not go.exists():
        time.sleep(0.01)
    from cinemamba.train.threads import ThreadGovernor

    governor = ThreadGovernor() if governed else None
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        if governor is not None:
            governor.poll()
        step()
        times.append(time.perf_counter() - start)
    return {"s_per_step": statistics.median(times), "threads": torch.get_num_threads()}


def _run_together(count: int, env: dict[str, str], steps: int, governed: bool) -> list[dict]:
    """Start `count` identical children, release them at once, return their results."""
    with tempfile.TemporaryDirectory() as tmp:
        go = Path(tmp) / "go"
        readies = [Path(tmp) / f"ready{i}" for i in range(count)]
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "_child",
                    str(steps),
                    str(r),
                    str(go),
                    str(int(governed)),
                ],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            for r in readies
        ]
        while not all(r.exists() for r in readies):
            if any(p.poll() not in (None, 0) for p in procs):
                raise RuntimeError("a benchmark process failed before it was ready")
            time.sleep(0.05)
        go.touch()
        outs = [p.communicate()[0] for p in procs]
        if any(p.returncode for p in procs):
            raise RuntimeError("a benchmark process failed")
    return [json.loads(o.strip().splitlines()[-1]) for o in outs]


def _env(overrides: dict[str, str | None]) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def measure(steps: int, repeats: int) -> list[dict]:
    """Per case: alone and contended s/step and their ratio, for each repeat. Cases take
    turns within a repeat, so a change in other load over the run touches all of them."""
    cases = _cases()
    rows = {name: {"case": name, "alone": [], "pair": [], "ratios": []} for name in cases}
    for _ in range(repeats):
        for name, (overrides, governed) in cases.items():
            env, row = _env(overrides), rows[name]
            a = _run_together(1, env, steps, governed)[0]["s_per_step"]
            both = [r["s_per_step"] for r in _run_together(2, env, steps, governed)]
            row["alone"].append(a)
            row["pair"].append(statistics.fmean(both))
            row["ratios"].append(row["pair"][-1] / a)
            print(f"{name}: alone {a:.3f} s/step, two processes {both}", file=sys.stderr)
    return list(rows.values())


def markdown(rows: list[dict], steps: int, load_start: str, load_end: str) -> list[str]:
    """The results as the generated block of docs/benchmarks.md."""
    from cinemamba.apps.bench.measure import cpu_model

    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        BEGIN,
        "",
        "## Contention: two training processes on one machine",
        "",
        f"_Generated by `scripts/bench_contention.py` on {stamp} ({cpu_model()}, "
        f"{os.cpu_count()} cores; load average {load_start} at start, {load_end} at end). "
        "Do not edit by hand; rerun with `--markdown docs/benchmarks.md`._",
        "",
        "The demo's backbone training step (VideoDiT of configs/experiment/demo.yaml, batch and "
        f"latent clip as the demo trains, fp32 AdamW, median wall time of {steps} steps) alone "
        "and as two identical processes started together. Slowdown = two-process s/step ÷ "
        f"alone s/step in the same repeat (median, min–max); fair share is 2×, target ≤ {TARGET}×.",
        "",
        "| case | alone s/step | two processes s/step | slowdown | spread | repeats | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = statistics.median(r["ratios"])
        verdict = "pass" if ratio <= TARGET else "FAIL"
        lines.append(
            f"| {r['case']} | {statistics.median(r['alone']):.3f} | "
            f"{statistics.median(r['pair']):.3f} | {ratio:.2f}× | {min(r['ratios']):.2f}–"
            f"{max(r['ratios']):.2f} | {len(r['ratios'])} | ≤ {TARGET}×: {verdict} |"
        )
    return [*lines, "", END]


def merge(existing: str, block: str) -> str:
    """`existing` with its contention block replaced by `block` (inserted below the
    `cinemamba bench` block, or at the end, when there is none yet)."""
    if BEGIN in existing and END in existing:
        return (
            existing[: existing.index(BEGIN)] + block + existing[existing.index(END) + len(END) :]
        )
    if AFTER in existing:
        cut = existing.index(AFTER) + len(AFTER)
        return existing[:cut] + "\n\n" + block + existing[cut:]
    return existing.rstrip("\n") + "\n\n" + block + "\n"


def main() -> int:
    """Parse arguments, measure every case, print (and optionally merge) the markdown."""
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        steps, ready, go = int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
        print(json.dumps(child(steps, ready, go, sys.argv[5] == "1")))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per process")
    parser.add_argument("--repeats", type=int, default=3, help="alone/pair measurements per case")
    parser.add_argument("--markdown", type=Path, help="merge the results into this page")
    args = parser.parse_args()
    load_start = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = measure(args.steps, args.repeats)
    load_end = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    block = "\n".join(markdown(rows, args.steps, load_start, load_end))
    print(block)
    if args.markdown:
        existing = args.markdown.read_text() if args.markdown.is_file() else "# Benchmarks\n"
        tmp = args.markdown.with_name(args.markdown.name + ".partial")
        tmp.write_text(merge(existing, block))
        tmp.replace(args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
