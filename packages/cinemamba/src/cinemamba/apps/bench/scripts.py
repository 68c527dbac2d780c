"""Adapters over the earlier benchmark scripts (scripts/bench_data.py, bench_vae.py,
bench_backbone.py).

Each script is loaded as a private module instance (not `sys.modules`), so setting its size
constants for quick runs, or pointing its `_spawn` at a recorder, touches nobody else. The
scripts' own tables come from their own code (run_scan / run_model / memory); the repeats
needed for a median and spread call the same child measurements again.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from cinemamba.apps.bench.measure import Figure, Section, count_flops, gemm_rate, repeat_times
from cinemamba_sampling import peak_memory
from cinemamba_vae import VideoAutoencoder, vae_preset

SCRIPTS = Path(__file__).parents[6] / "scripts"


@dataclass(frozen=True)
class KernelScale:
    """Sizes of the scan, backbone and VAE benchmarks."""

    repeats: int = 5
    spawn: bool = True  # each case in a fresh process, as the scripts do (clean memory peaks)
    scan_t: tuple[int, ...] = (64, 256, 1024)
    scan_dims: tuple[int, int, int] | None = None  # (M, D, N); None keeps the script's
    model_t: tuple[int, ...] = (16, 64, 256, 1024)  # >= 4 lengths: the script fits T[2:]
    model_dims: tuple[int, int] | None = None  # (width, depth); None keeps the script's
    mixers: tuple[str, ...] = ()  # subset of the script's MIXERS (must keep "attention")
    vae_size: int = 64
    vae_frames: int = 65  # speed and chunked-vs-full memory
    vae_script_memory: tuple[int, ...] = ()  # lengths for the script's own memory table
    export_frames: int = 1025  # export encode (own vs diffusers Wan VAE); 0 skips it


def load_script(name: str) -> ModuleType:
    """A fresh module object of scripts/NAME.py; FileNotFoundError names the path."""
    path = SCRIPTS / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"benchmark script {path} not found")
    spec = importlib.util.spec_from_file_location(f"_cinemamba_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def data(mode: str) -> Section:
    """scripts/bench_data.py: the VideoLoader vs plain PyAV decode of the same clips."""
    mod = load_script("bench_data")
    if mode != "micro":
        return mod.section(quick=mode == "quick")
    start = time.perf_counter()
    section = Section("data", "Data: VideoLoader vs raw PyAV decode")
    # the script's one-resolution measurement at micro sizes (2 videos, 16x16, 4-frame clips)
    extra = {"label": "micro"} if "label" in inspect.signature(mod.measure).parameters else {}
    section.figures.append(mod.measure(16, 2, 8, 4, repeats=5, **extra))
    section.lines.append("Micro sizes (runner test): 2 videos of 8 frames at 16×16, 4-frame clips.")
    section.seconds = time.perf_counter() - start
    return section


def _backbone_script(scale: KernelScale) -> tuple[ModuleType, dict]:
    """The backbone script with its sizes set and `_spawn` recording every result by case."""
    mod = load_script("bench_backbone")
    mod.THREADS = torch.get_num_threads()
    mod.SCAN_T, mod.MODEL_T = scale.scan_t, scale.model_t
    if scale.scan_dims:
        mod.SCAN_M, mod.SCAN_D, mod.SCAN_N = scale.scan_dims
    if scale.model_dims:
        mod.MODEL_WIDTH, mod.MODEL_DEPTH = scale.model_dims
    if scale.mixers:
        mod.MIXERS = {k: v for k, v in mod.MIXERS.items() if k in scale.mixers}
    spawn = mod._spawn
    results: dict[tuple[str, ...], list[dict]] = defaultdict(list)

    def child(*args: str) -> dict:
        if scale.spawn:
            return spawn(*args)
        if args[0] == "scan":
            return mod.child_scan(int(args[1]))
        return mod.child_model(args[1], int(args[2]))

    def recording(*args: str) -> dict:
        out = child(*args)
        results[args].append(out)
        return out

    mod._spawn = recording
    return mod, results


def scan(scale: KernelScale) -> Section:
    """Selective scan forward (C kernel and PyTorch path) vs its machine-rate floor and vs
    the float reference; targets (issue #5) on the path in use: ≤ 1.5× the floor, ≥ 4×
    faster than the reference."""
    mod, results = _backbone_script(scale)
    section = Section("scan", "Selective scan (CPU fast path)")
    section.lines += ["Script table (first repeat, scripts/bench_backbone.py):", ""]
    section.lines += mod.run_scan()  # repeat 1, and the script's own table
    if not scale.spawn:
        section.lines += ["", "Cases ran in this process (quick mode): the peak-bytes column "
                          "is not meaningful; `--full` runs each in a fresh process."]  # fmt: skip
    for _ in range(scale.repeats - 1):
        for length in scale.scan_t:
            mod._spawn("scan", str(length))
    for length in scale.scan_t:
        rows = results[("scan", str(length))]
        floor = [r["floor_ms"] for r in rows]
        paths = [("torch", "PyTorch path")]
        if rows[0]["native_ms"] is not None:  # the C kernel could be built
            paths.insert(0, ("native", "C kernel"))
        for key, label in paths:
            fast = [r[f"{key}_ms"] for r in rows]
            # The targets apply to the fast path in use: the C kernel where it builds.
            main = key == paths[0][0]
            section.figures.append(Figure("scan", f"{label} forward T={length}", "ms/frame",
                                          fast, floor, "floor (exp rate, bandwidth)",
                                          target=1.5 if main else None))  # fmt: skip
            if rows[0]["ref_ms"] is not None:
                section.figures.append(Figure("scan", f"{label} forward T={length}", "ms/frame",
                                              fast, [r["ref_ms"] for r in rows],
                                              "reference scan", target=0.25 if main else None))  # fmt: skip
    return section


def backbone(scale: KernelScale) -> Section:
    """VideoDiT forward and forward+backward per mixer vs the temporal-attention baseline."""
    mod, results = _backbone_script(scale)
    section = Section("backbone", "VideoDiT vs frame count")
    section.lines += ["Script table (first repeat, scripts/bench_backbone.py):", ""]
    section.lines += mod.run_model()
    for _ in range(scale.repeats - 1):
        for frames in scale.model_t:
            for mixer in mod.MIXERS:
                mod._spawn("model", mixer, str(frames))
    for frames in scale.model_t:
        base = results[("model", "attention", str(frames))]
        for mixer in mod.MIXERS:
            if mixer == "attention":
                continue
            rows = results[("model", mixer, str(frames))]
            for key, what in (("fwd_s", "forward"), ("fwd_bwd_s", "fwd+bwd")):
                section.figures.append(Figure(
                    "backbone", f"{mixer} {what} T={frames}", "s", [r[key] for r in rows],
                    [r[key] for r in base], "attention",
                ))  # fmt: skip
            if scale.spawn:  # a resident-set peak means little inside a long-lived process
                section.figures.append(Figure(
                    "backbone", f"{mixer} fwd+bwd peak T={frames}", "MB",
                    [r["fwd_bwd_peak_mb"] for r in rows], [r["fwd_bwd_peak_mb"] for r in base],
                    "attention",
                ))  # fmt: skip
    if not scale.spawn:
        section.lines += ["", "Cases ran in this process (quick mode): the peak-memory "
                          "columns are not meaningful; `--full` runs each in a fresh process."]  # fmt: skip
    return section


def vae(scale: KernelScale) -> Section:
    """VAE encode/decode time vs a FLOP floor (script's `speed`), chunked vs full memory."""
    mod = load_script("bench_vae")
    mod.SIZE = scale.vae_size
    section = Section("vae", "Video VAE (tiny preset)")
    args = argparse.Namespace(speed_frames=scale.vae_frames, chunk=16, repeats=1)
    speeds = [mod.speed(args) for _ in range(scale.repeats)]  # each: one timed pass (wall)
    torch.manual_seed(0)
    model = VideoAutoencoder(vae_preset("tiny")).eval()
    n, size = scale.vae_frames, scale.vae_size
    video = torch.rand(1, 3, n, size, size) * 2 - 1
    with torch.no_grad():
        latents = model.encode(video, sample=False, chunk_frames=16)
        enc_flops = count_flops(lambda: model.encode(video, sample=False, chunk_frames=16))
        dec_flops = count_flops(lambda: model.decode(latents, chunk_frames=4))
    rate = gemm_rate()
    for stage, flops in (("encode", enc_flops), ("decode", dec_flops)):
        secs = [n / s[f"{stage}_fps"] for s in speeds]
        section.figures.append(Figure(
            "vae", f"{stage} {n} frames {size}² (chunked)", "s", secs,
            [flops / rate] * len(secs), "counted FLOPs ÷ GEMM rate",
        ))  # fmt: skip
    memory = {}
    with torch.no_grad():
        for mode, enc_k, dec_k in (("chunked", 16, 4), ("full", None, None)):
            memory[mode] = (
                peak_memory(lambda k=enc_k: model.encode(video, sample=False, chunk_frames=k))[1],
                peak_memory(lambda k=dec_k: model.decode(latents, chunk_frames=k))[1],
            )
        enc_times = {
            mode: repeat_times(lambda k=k: model.encode(video, sample=False, chunk_frames=k),
                               scale.repeats)
            for mode, k in (("chunked", 16), ("full", None))
        }  # fmt: skip
    for i, stage in enumerate(("encode", "decode")):
        section.figures.append(Figure(
            "vae", f"{stage} peak memory, chunked, {n} frames", "bytes",
            [memory["chunked"][i]], [memory["full"][i]], "unchunked (full) call", exact=True,
        ))  # fmt: skip
    section.figures.append(Figure(
        "vae", f"encode CPU time, chunked, {n} frames", "s", enc_times["chunked"],
        enc_times["full"], "unchunked (full) call",
    ))  # fmt: skip
    fps = {k: statistics.median(s[k] for s in speeds) for k in ("encode_fps", "decode_fps")}
    section.lines += [
        f"Speed from the script's `speed` ({n} frames, {size}×{size}, chunk 16, wall time, "
        f"{speeds[0]['threads']} thread(s)), median of {scale.repeats}: encode "
        f"{fps['encode_fps']:.1f} frames/s, decode {fps['decode_fps']:.1f} frames/s. Floor: "
        f"{enc_flops / 1e9:.2f} / {dec_flops / 1e9:.2f} GFLOP counted ÷ GEMM rate "
        f"{rate / 1e9:.1f} GFLOP/s. Memory: peak tensor bytes (`peak_memory`).",
    ]
    if scale.export_frames:
        export_encode(section, scale)
    if scale.vae_script_memory:
        rows = mod.memory(argparse.Namespace(frames=list(scale.vae_script_memory), chunk=16))
        section.lines += [
            "",
            "Script table (scripts/bench_vae.py memory: rise of peak RSS, fresh process each):",
            "",
            "| path | frames | encode peak / working MiB | decode peak / working MiB |",
            "|---|---|---|---|",
        ]
        section.lines += [
            f"| {r['mode']} | {r['frames']} | {r['encode_peak_mib']:.0f} / "
            f"{r['encode_working_mib']:.0f} | {r['decode_peak_mib']:.0f} / "
            f"{r['decode_working_mib']:.0f} |"
            for r in rows
        ]
    return section


def tiny_diffusers_wan(latent_channels: int = 8) -> torch.nn.Module:
    """A random-init diffusers Wan VAE of the own tiny preset's geometry (4x4x4, 8 channels)."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    return AutoencoderKLWan(
        base_dim=32, z_dim=latent_channels, dim_mult=[1, 2, 2], num_res_blocks=1,
        temperal_downsample=[True, True], scale_factor_spatial=4, scale_factor_temporal=4,
        latents_mean=[0.0] * latent_channels, latents_std=[1.0] * latent_channels,
    ).eval()  # fmt: skip


def export_encode(section: Section, scale: KernelScale) -> None:
    """Export's encode (posterior mean, chunked, one video) of the own tiny VAE and a diffusers
    Wan VAE of the same geometry, loaded through `load_vae`: frames/s, and peak tensor memory
    at the full length vs a quarter of it (flat apart from the latents themselves)."""
    import tempfile

    from cinemamba_vae import load_vae

    try:
        wan = tiny_diffusers_wan()
    except ImportError:
        section.lines += ["", "Export encode rows skipped: diffusers is not installed."]
        return
    n, size = scale.export_frames, scale.vae_size
    short = 1 + (n - 1) // 16 * 4  # a quarter of the length, still 1 + 4k
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        VideoAutoencoder(vae_preset("tiny")).eval().save_pretrained(Path(tmp) / "own")
        wan.save_pretrained(Path(tmp) / "wan")
        vaes = {name: load_vae(Path(tmp) / name).eval() for name in ("own", "wan")}
    video = torch.rand(1, 3, n, size, size) * 2 - 1
    fps, peak = {}, {}
    with torch.no_grad():
        for name, model in vaes.items():

            def enc(frames: int, model=model) -> torch.Tensor:
                return model.encode(video[:, :, :frames], sample=False, chunk_frames=16)

            fps[name] = [n / t for t in repeat_times(lambda e=enc: e(n), scale.repeats)]
            peak[name] = (
                peak_memory(lambda e=enc: e(n))[1],
                peak_memory(lambda e=enc: e(short))[1],
            )
    section.figures.append(Figure(
        "vae", f"export encode, diffusers Wan (tiny), {n} frames {size}²", "frames/s",
        fps["wan"], fps["own"], "own tiny VAE", higher_is_better=True,
    ))  # fmt: skip
    for name in ("own", "wan"):
        section.figures.append(Figure(
            "vae", f"export encode peak memory, {name}, {n} frames", "bytes",
            [peak[name][0]], [peak[name][1]], f"same VAE, {short} frames", exact=True,
        ))  # fmt: skip
    section.lines += [
        "",
        f"Export encode: one {n}-frame {size}×{size} video, posterior mean, `chunk_frames=16`, "
        "both VAEs loaded by `load_vae` (4x4x4, 8 latent channels, random weights); median "
        f"frames/s own {statistics.median(fps['own']):.1f}, diffusers Wan "
        f"{statistics.median(fps['wan']):.1f}. Memory rows: peak tensor bytes at {n} vs "
        f"{short} frames; the input video itself is allocated before the call, not counted.",
    ]
