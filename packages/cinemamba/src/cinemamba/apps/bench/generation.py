"""Sampling speed per long-video mode, and how each pipeline stage grows with frame count.

Both build the tiny random-weight pipeline exactly as `cinemamba sample` does
(`cinemamba.pipeline.build_pipeline`); random weights cost the same as trained ones.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from cinemamba.apps.bench.measure import Figure, Section, repeat_times, slope
from cinemamba.pipeline import SampleConfig, build_pipeline
from cinemamba_conditioning import TextEncoderConfig
from cinemamba_sampling import MODES, PipelineConfig, ProcessConfig, VideoPipeline, peak_memory

PROMPT = "a red circle moves to the left"


@dataclass(frozen=True)
class GenerationScale:
    """Sizes of the sampling and growth benchmarks."""

    repeats: int = 5
    size: int = 32  # pixel height = width
    steps: int = 4  # solver steps (the cost per step is what differs between modes)
    guidance: float = 3.0  # CFG on: two network rows per sample, as in real use
    sample_frames: tuple[int, ...] = (64, 256, 1024)
    growth_frames: tuple[int, ...] = (65, 129, 257, 513)
    window: int = 8  # rolling window / context, streaming chunk (latent frames)
    context: int = 2
    chunk: int = 4


def pipeline(mixer: str, scale: GenerationScale) -> VideoPipeline:
    """The tiny VAE + tiny VideoDiT (`mixer` along time) + tiny text encoder, random weights."""
    cfg = SampleConfig(
        random_init=True,
        backbone_mixer=mixer,
        text_encoder=TextEncoderConfig(random_init_seed=0),
        process=ProcessConfig(name="flow"),
        pipeline=PipelineConfig(
            solver="euler",
            window=scale.window,
            context=scale.context,
            chunk=scale.chunk,
            decode_chunk_frames=8,
            progress=False,
        ),
        device="cpu",
    )
    return build_pipeline(cfg)


def _generate(pipe: VideoPipeline, frames: int, mode: str, scale: GenerationScale, decode=True):
    call = pipe.generate if decode else pipe.sample_latents
    return lambda: call(
        [PROMPT], frames=frames, height=scale.size, width=scale.size, steps=scale.steps,
        guidance=scale.guidance, seed=0, mode=mode,
    )  # fmt: skip


def sampling(scale: GenerationScale) -> Section:
    """Seconds per generated frame and peak tensor memory per mode; ratio vs oneshot."""
    # `streaming` needs a causal backbone, so all three modes run the causal `mamba` mixer
    # (as configs/sampling/tiny.yaml does): the same network, only the schedule differs.
    pipe = pipeline("mamba", scale)
    section = Section("sampling", "Sampling: seconds per generated frame by long-video mode")
    rows = []
    for frames in scale.sample_frames:
        per_mode: dict[str, list[float]] = {}
        peaks: dict[str, int] = {}
        total_peaks: dict[str, int] = {}
        for mode in MODES:
            run = _generate(pipe, frames, mode, scale)
            per_mode[mode] = [t / frames for t in repeat_times(run, scale.repeats)]
            # denoising alone: the chunked decode that follows has the same peak in every mode
            peaks[mode] = peak_memory(_generate(pipe, frames, mode, scale, decode=False))[1]
            total_peaks[mode] = peak_memory(run)[1]
        for mode in MODES:
            rows.append((frames, mode, per_mode[mode], peaks[mode], peaks["oneshot"],
                         total_peaks[mode]))  # fmt: skip
            if mode != "oneshot":
                section.figures += [
                    Figure("sampling", f"{mode} s/frame, {frames} frames", "s/frame",
                           per_mode[mode], per_mode["oneshot"], "oneshot s/frame"),
                    Figure("sampling", f"{mode} denoising peak memory, {frames} frames", "bytes",
                           [peaks[mode]], [peaks["oneshot"]], "oneshot peak", exact=True),
                ]  # fmt: skip
    section.lines += [
        f"Tiny preset, random weights, causal `mamba` mixer, {scale.size}×{scale.size} pixels, "
        f"{scale.steps} Euler steps, CFG {scale.guidance} (2 network rows), rolling window "
        f"{scale.window} / context {scale.context}, streaming chunk {scale.chunk} latent frames; "
        "time = `generate` including the chunked VAE decode, CPU seconds per output frame. "
        "Peaks = peak bytes of tensors allocated during the call "
        "(`cinemamba_sampling.peak_memory`): denoising (`sample_latents`) and whole `generate`.",
        "",
        "| frames | mode | s/frame (median) | min–max | ÷ oneshot | denoising peak MiB "
        "| ÷ oneshot | generate peak MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    oneshot = {r[0]: r[2] for r in rows if r[1] == "oneshot"}
    for frames, mode, secs, peak, ref_peak, total in rows:
        ratio = statistics.median(secs) / statistics.median(oneshot[frames])
        section.lines.append(
            f"| {frames} | {mode} | {statistics.median(secs):.4f} | {min(secs):.4f}–"
            f"{max(secs):.4f} | {ratio:.2f} | {peak / 2**20:.1f} | {peak / ref_peak:.2f} | "
            f"{total / 2**20:.1f} |"
        )
    return section


def _stage_calls(pipe: VideoPipeline, frames: int, scale: GenerationScale) -> dict:
    """The four pipeline stages at `frames` pixel frames, as zero-argument callables."""
    vae, backbone, size = pipe.vae, pipe.backbone, scale.size
    g = torch.Generator().manual_seed(0)
    video = torch.rand(1, 3, frames, size, size, generator=g) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(video, sample=False, chunk_frames=16)  # (1, C, t, h, w)
    text = pipe.text_encoder.encode([PROMPT])
    t = torch.rand(1, generator=g)

    def train_step() -> None:
        backbone.zero_grad(set_to_none=True)
        pred = backbone(latents, t, text.tokens, text.mask, text.pooled)
        pred.square().mean().backward()

    def encode() -> None:
        with torch.no_grad():
            vae.encode(video, sample=False, chunk_frames=16)

    def sample() -> None:
        pipe.sample_latents([PROMPT], frames=frames, height=size, width=size,
                            steps=scale.steps, guidance=scale.guidance, seed=0)  # fmt: skip

    def decode() -> None:
        with torch.no_grad():
            vae.decode(latents, chunk_frames=8)

    return {"encode": encode, "train step": train_step, "sample": sample, "decode": decode}


def growth(scale: GenerationScale) -> Section:
    """Time and peak memory of encode / train step / sample / decode against frame count,
    for `bimamba` and `attention`, with log-log slopes; bimamba ÷ attention per length."""
    section = Section("growth", "Cost growth with frame count (whole pipeline)")
    results: dict[tuple[str, str, int], tuple[list[float], int]] = {}
    for mixer in ("bimamba", "attention"):
        pipe = pipeline(mixer, scale)
        pipe.backbone.train()  # the train step needs autograd; sampling runs under no_grad
        for frames in scale.growth_frames:
            for stage, call in _stage_calls(pipe, frames, scale).items():
                if mixer == "attention" and stage in ("encode", "decode"):
                    results[(mixer, stage, frames)] = results[("bimamba", stage, frames)]
                    continue  # the VAE does not depend on the temporal mixer
                times = repeat_times(call, scale.repeats)
                results[(mixer, stage, frames)] = (times, peak_memory(call)[1])
    stages = ("encode", "train step", "sample", "decode")
    fs = list(scale.growth_frames)
    section.lines += [
        f"Tiny preset, {scale.size}×{scale.size} pixels, batch 1. encode/decode: tiny VAE, "
        f"chunked (16 pixel / 8 latent frames; the same for both mixers); train step: backbone "
        f"forward + backward on the clip's latents; sample: {scale.steps} Euler steps, CFG "
        f"{scale.guidance}, oneshot. CPU seconds (median of {scale.repeats}) / peak tensor MiB.",
        "",
        "| stage | mixer | " + " | ".join(f"{f} frames" for f in fs)
        + " | slope time | slope memory |",
        "|---|---|" + "---|" * (len(fs) + 2),
    ]  # fmt: skip
    for stage in stages:
        for mixer in ("bimamba", "attention"):
            if stage in ("encode", "decode") and mixer == "attention":
                continue
            med = [statistics.median(results[(mixer, stage, f)][0]) for f in fs]
            mem = [results[(mixer, stage, f)][1] for f in fs]
            cells = " | ".join(
                f"{m:.3f} s / {b / 2**20:.1f}" for m, b in zip(med, mem, strict=True)
            )
            label = "both" if stage in ("encode", "decode") else mixer
            section.lines.append(
                f"| {stage} | {label} | {cells} | {slope(fs, med):.2f} | "
                f"{slope(fs, [max(b, 1) for b in mem]):.2f} |"
            )
        if stage in ("train step", "sample"):
            for f in fs:
                bi, att = results[("bimamba", stage, f)], results[("attention", stage, f)]
                section.figures += [
                    Figure("growth", f"{stage} time, bimamba, {f} frames", "s", bi[0], att[0],
                           "attention"),
                    Figure("growth", f"{stage} peak memory, bimamba, {f} frames", "bytes",
                           [bi[1]], [att[1]], "attention", exact=True),
                ]  # fmt: skip
    return section


__all__ = ["GenerationScale", "growth", "pipeline", "sampling"]
