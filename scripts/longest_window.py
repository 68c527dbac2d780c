"""The longest latent training window that fits a memory and a time budget (issue 15).

    .venv/bin/python scripts/longest_window.py                        # tiny and S, this machine
    .venv/bin/python scripts/longest_window.py --markdown docs/training.md
    .venv/bin/python scripts/longest_window.py --presets tiny --memory-gb 1 --time-s 2  # smoke

For each backbone config (configs/backbone/<preset>.yaml, `--set key=value` overrides, e.g.
`grad_checkpointing=true`) one training step is run at batch 1 on random latents of
`(in_channels, T, size, size)` with per-frame noise levels and random text tokens: forward,
backward and an AdamW step, fp32 as CPU training runs (`--precision bf16`: under bf16
autocast, as on GPUs). Each window length T runs in a fresh process: a warm-up step, then the
median of `--steps` timed steps; the peak is the process's peak resident memory (VmHWM; on CUDA
the peak allocated memory). A length fits when its peak is within `--memory-gb` and its step
within `--time-s`. The search doubles T from `--start` until a length does not fit (or
`--max-frames`), then bisects between the last fit and the first miss down to `--resolution`
frames. A process over the memory budget is stopped by a watchdog at 1.1x the budget, and one
whose first step already exceeds the time budget stops after it, so a miss costs little.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEGIN = "<!-- scripts/longest_window.py: generated from here -->"
END = "<!-- scripts/longest_window.py: generated to here -->"
AFTER = "<!-- scripts/longest_window.py --markdown docs/training.md writes its table below this line -->"
TEXT_TOKENS = 77  # a CLIP-length caption
OVER_MEMORY = 3  # exit code of a child stopped by the memory watchdog


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1))


def _watchdog(limit_kib: int) -> None:
    """Stop this process once its resident memory passes `limit_kib` (before the machine
    starts swapping or the OOM killer picks another process)."""

    def watch() -> None:
        while True:
            if _status_kib("VmRSS") > limit_kib:
                print(json.dumps({"over_memory": True}), flush=True)
                os._exit(OVER_MEMORY)
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()


def child(spec: dict) -> dict:
    """One window length in this (fresh) process: step time (s) and peak memory (GiB)."""
    import torch

    from cinemamba_backbone import BackboneConfig, VideoDiT

    device = torch.device(spec["device"])
    if device.type == "cpu":
        _watchdog(int(spec["memory_gb"] * 1.1 * 2**20))
    cfg = BackboneConfig.from_yaml(spec["config"], spec["overrides"])
    torch.manual_seed(0)
    model = VideoDiT(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    frames, size = spec["frames"], spec["size"]
    x = torch.randn(1, cfg.in_channels, frames, size, size, device=device)
    text = torch.randn(1, TEXT_TOKENS, cfg.text_dim, device=device)
    mask = torch.ones(1, TEXT_TOKENS, dtype=torch.bool, device=device)
    bf16 = spec["precision"] == "bf16"

    def step() -> float:
        start = time.perf_counter()
        t = torch.rand(1, frames, device=device)  # one noise level per latent frame
        noise = torch.randn_like(x)
        xt = (1 - t[:, None, :, None, None]) * x + t[:, None, :, None, None] * noise
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = model(xt, t, text, mask)
        loss = (pred.float() - (noise - x)).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    first = step()  # warm-up: allocator, kernels, Adam state
    times = [first]
    if first <= spec["time_s"]:
        times = [step() for _ in range(spec["steps"])]
    if device.type == "cuda":
        peak_gb = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak_gb = _status_kib("VmHWM") / 2**20
    params = sum(p.numel() for p in model.parameters())
    return {"frames": frames, "step_s": statistics.median(times), "peak_gb": peak_gb,
            "params": params, "tokens": frames * (size // cfg.patch_size) ** 2}  # fmt: skip


def try_length(args: argparse.Namespace, preset: str, frames: int) -> dict:
    """Run one length in a child; a row with `fits` (and why not)."""
    spec = {
        "config": str(REPO / "configs" / "backbone" / f"{preset}.yaml"),
        "overrides": args.set, "frames": frames, "size": args.size, "device": args.device,
        "precision": args.precision, "steps": args.steps, "memory_gb": args.memory_gb,
        "time_s": args.time_s,
    }  # fmt: skip
    cmd = [sys.executable, __file__, "_child", json.dumps(spec)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}  # RSS tracks live tensors
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    last = (proc.stdout.strip().splitlines() or ["{}"])[-1]
    row = {"preset": preset, "frames": frames}
    if proc.returncode == OVER_MEMORY:
        row.update(fits=False, why=f"over {args.memory_gb:g} GB (stopped)")
    elif proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["?"])[-1]
        row.update(fits=False, why=f"failed: {err[:120]}")
    else:
        row.update(json.loads(last))
        over_m, over_t = row["peak_gb"] > args.memory_gb, row["step_s"] > args.time_s
        row["fits"] = not (over_m or over_t)
        row["why"] = "over memory" if over_m else "over time" if over_t else ""
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def search(args: argparse.Namespace, preset: str) -> list[dict]:
    """Doubling from `start`, then bisection between the last fit and the first miss."""
    rows, fit, miss = [], 0, None
    frames = args.start
    while frames <= args.max_frames:
        row = try_length(args, preset, frames)
        rows.append(row)
        if not row["fits"]:
            miss = frames
            break
        fit = frames
        frames *= 2
    if miss is None:
        return rows  # everything up to max_frames fits
    while miss - fit > args.resolution:
        mid = (fit + miss) // 2
        row = try_length(args, preset, mid)
        rows.append(row)
        fit, miss = (mid, miss) if row["fits"] else (fit, mid)
    return rows


def markdown(results: dict[str, list[dict]], args: argparse.Namespace) -> str:
    """The generated block: conditions, every tried length, the longest per preset."""
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               "?")  # fmt: skip
    overrides = " ".join(args.set) or "none"
    lines = [
        BEGIN,
        "",
        f"_Generated by `scripts/longest_window.py` on {when} ({cpu}, {os.cpu_count()} cores, "
        f"device {args.device}; load average {load} at the end). Do not edit by hand; rerun "
        "with `--markdown docs/training.md`._",
        "",
        f"Budget: peak memory ≤ {args.memory_gb:g} GB and ≤ {args.time_s:g} s per training "
        f"step; batch 1, latent frames {args.size}×{args.size}, {args.precision}, AdamW, "
        f"median of {args.steps} steps after a warm-up, overrides: {overrides}.",
        "",
        "| preset | latent frames T | tokens | step s | peak GB | fits |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for preset, rows in results.items():
        for r in sorted(rows, key=lambda r: r["frames"]):
            step = f"{r['step_s']:.2f}" if "step_s" in r else "–"
            peak = f"{r['peak_gb']:.2f}" if "peak_gb" in r else "–"
            tokens = r.get("tokens", "–")
            fits = "yes" if r["fits"] else f"no ({r['why']})"
            lines.append(f"| {preset} | {r['frames']} | {tokens} | {step} | {peak} | {fits} |")
    lines.append("")
    for preset, rows in results.items():
        good = [r["frames"] for r in rows if r["fits"]]
        best = max(good) if good else None
        capped = all(r["fits"] for r in rows)
        lines.append(
            f"- **{preset}**: longest window that fits: "
            + (f"{best} latent frames" if best else f"none from {args.start}")
            + (f" (every length up to --max-frames {args.max_frames} fits)" if capped else "")
        )
    lines += ["", END]
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, search each preset, print the block (and splice it into --markdown)."""
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        print(json.dumps(child(json.loads(sys.argv[2]))), flush=True)
        return
    mem_total = _status_kib_meminfo() / 2**20
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "S"],
                        help="configs/backbone/<name>.yaml")  # fmt: skip
    parser.add_argument("--set", nargs="*", default=[], help="BackboneConfig overrides k=v")
    parser.add_argument("--size", type=int, default=32, help="latent height = width")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--memory-gb", type=float, default=round(0.75 * mem_total, 1),
                        help="peak memory budget (default: 75%% of this machine's RAM)")  # fmt: skip
    parser.add_argument("--time-s", type=float, default=60.0, help="seconds per step budget")
    parser.add_argument("--start", type=int, default=8, help="first window length tried")
    parser.add_argument("--max-frames", type=int, default=4096)
    parser.add_argument("--resolution", type=int, default=4, help="bisect down to this many")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per length")
    parser.add_argument("--markdown", help="splice the block into this page between markers")
    args = parser.parse_args()
    results = {preset: search(args, preset) for preset in args.presets}
    block = markdown(results, args)
    print(block)
    if args.markdown:
        from cinemamba.apps.bench.markers import splice_block

        page = Path(args.markdown)
        page.write_text(splice_block(page.read_text(), block, BEGIN, END, AFTER))


def _status_kib_meminfo() -> int:
    """MemTotal of this machine in KiB."""
    text = Path("/proc/meminfo").read_text()
    return int(re.search(r"MemTotal:\s+(\d+)", text).group(1))


if __name__ == "__main__":
    main()
