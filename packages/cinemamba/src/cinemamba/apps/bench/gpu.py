"""`cinemamba bench --gpu`: the selective scan, VideoDiT and a training step on one CUDA GPU.

Three measurements, each against a ceiling measured in the same run:
- scan throughput: bytes the forward scan must move (u, Δ, z, B, C in, y out, in the input
  dtype) over its time, in GB/s, against the device's copy bandwidth (a large
  ``copy_``, bytes read + written over its time);
- VideoDiT fwd+bwd time and peak memory for the bidirectional Mamba and the temporal-attention
  mixers at 16 ... 1024 latent frames, and the crossover length where Mamba gets cheaper;
- train-step MFU: model FLOPs of one step (``torch.utils.flop_counter.FlopCounterMode`` over
  forward + backward: matmuls, convolutions, SDPA; the scan's elementwise work is not
  counted) ÷ step time ÷ the device's dense bf16 peak (datasheet, see ``PEAK_BF16``), and
  the same against a bf16 matmul measured in this run.

Times come from CUDA events after warm-up (the first call also compiles Triton kernels);
every case stops repeating after ``case_budget_s`` and the whole run respects ``budget_s``:
what no longer fits is reported as skipped, never silently left out. The measuring code
takes the device as an argument so that its test runs it on CPU at toy sizes. The markdown
block of docs/benchmarks.md is rendered from the results by `gpu_report`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import torch
from torch import nn

from cinemamba.apps.bench.measure import count_flops

log = logging.getLogger(__name__)

# Dense bf16 tensor-core peak by datasheet (no sparsity), FLOP/s, matched against the device
# name in order: the SXM H100 and H200 share the chip (989.4 TFLOP/s), the PCIe H100 is lower.
PEAK_BF16: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0e12),
    ("H200", 989.4e12),
    ("H100", 989.4e12),
    ("A100", 312.0e12),
    ("L40S", 362.05e12),
)
CPU_MESSAGE = "bench --gpu needs a CUDA device (torch.cuda.is_available() is False)"


class GPUUnavailableError(RuntimeError):
    """`bench --gpu` was asked for on a machine without a usable CUDA device."""


@dataclass(frozen=True)
class GPUScale:
    """Sizes of the GPU benchmark (defaults: VideoDiT-S shapes, fit an H100/H200)."""

    scan_batch: int = 1024  # sequences: B·h·w of 4 videos at 16×16 tokens a frame
    scan_dim: int = 768  # d_inner of VideoDiT-S (expand 2 × 384)
    scan_state: int = 16
    scan_t: tuple[int, ...] = (16, 64, 256, 512)
    torch_scan_t: int = 64  # the PyTorch scan (a per-tile loop) at this length only
    preset: str = "S"
    latent: tuple[int, int, int] = (4, 16, 16)  # (C, h, w): 64 tokens a frame at patch 2
    model_t: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024)
    mixers: tuple[str, ...] = ("bimamba", "attention")
    mfu_t: int = 64
    mfu_batch: int = 8
    text_tokens: int = 77
    warmup: int = 2
    repeats: int = 5
    case_budget_s: float = 15.0  # stop repeating a case after this long (>= 1 timed call)
    budget_s: float = 240.0  # the whole run; cases past it are reported as skipped
    matmul_n: int = 8192
    copy_bytes: int = 2 << 30


GPU_SCALES: dict[str, GPUScale] = {
    "full": GPUScale(),
    "quick": GPUScale(scan_t=(16, 256), model_t=(16, 64, 256, 1024), budget_s=120.0),
    # Seconds on a CPU, for the test of the measuring code itself; the numbers mean nothing.
    "micro": GPUScale(
        scan_batch=4, scan_dim=8, scan_state=4, scan_t=(4, 8), torch_scan_t=4, preset="tiny",
        latent=(4, 4, 4), model_t=(2, 4, 8), mfu_t=4, mfu_batch=1, text_tokens=3, warmup=1,
        repeats=2, case_budget_s=5.0, budget_s=60.0, matmul_n=64, copy_bytes=1 << 20,
    ),
}  # fmt: skip


# ---- timing --------------------------------------------------------------------------------
class Deadline:
    """Wall-clock budget of the whole run."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        """Seconds left (negative when over)."""
        return self.end - time.perf_counter()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(
    fn: Callable[[], object],
    device: torch.device,
    *,
    warmup: int = 2,
    repeats: int = 5,
    budget_s: float = 15.0,
) -> list[float]:
    """Milliseconds of `repeats` calls after `warmup` (CUDA events on a GPU, wall clock on a
    CPU); stops early once `budget_s` has passed, keeping at least one timed call."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start, times = time.perf_counter(), []
    for _ in range(repeats):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start > budget_s:
            break
    return times


@contextlib.contextmanager
def peak_bytes(device: torch.device) -> Iterator[list[float]]:
    """Yields a list that holds, after the block, the peak bytes allocated on a CUDA device
    during it (everything live, weights included); NaN on a CPU."""
    box: list[float] = []
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    yield box
    if device.type == "cuda":
        _sync(device)
        box.append(float(torch.cuda.max_memory_allocated(device)))
    else:
        box.append(math.nan)


def copy_bandwidth(device: torch.device, nbytes: int, scale: GPUScale) -> float:
    """Bytes read + written per second by a device-to-device copy of `nbytes`."""
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    ms = timed_ms(lambda: dst.copy_(src), device, warmup=scale.warmup, repeats=scale.repeats)
    return 2 * src.numel() * 4 / (statistics.median(ms) / 1e3)


def matmul_rate(device: torch.device, n: int, scale: GPUScale) -> float:
    """FLOP/s of an n×n×n matmul in bf16 (fp32 on a CPU, which has no fast bf16 matmul)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    ms = timed_ms(lambda: a @ b, device, warmup=scale.warmup, repeats=scale.repeats)
    return 2 * n**3 / (statistics.median(ms) / 1e3)


def peak_bf16(name: str) -> float | None:
    """Dense bf16 datasheet peak (FLOP/s) for a device name, or None when unknown."""
    for key, flops in PEAK_BF16:
        if key.lower() in name.lower():
            return flops
    return None


# ---- the scan ------------------------------------------------------------------------------
def scan_bytes(batch: int, dim: int, state: int, length: int, itemsize: int) -> int:
    """Least bytes a forward scan with z gating moves: u, Δ, z, B, C read and y written in
    the input dtype, plus A (fp32) and D, Δ bias (fp32) read once."""
    per_seq = (4 * dim + 2 * state) * length * itemsize  # u, Δ, z, y: dim; B, C: state
    return batch * per_seq + 4 * (dim * state + 2 * dim)


def _scan_paths(device: torch.device) -> dict[str, Callable[..., Any] | str]:
    """Each scan implementation: its function, or the reason it is unavailable here."""
    from cinemamba_backbone import _kernels
    from cinemamba_backbone.ops import selective_scan_torch

    paths: dict[str, Callable[..., Any] | str] = {}
    if device.type != "cuda":
        paths["triton"] = "needs a CUDA device"
    else:
        try:
            from cinemamba_backbone.ops.triton_scan import selective_scan_triton
        except ImportError as err:  # the Triton kernel is issue 19's item 1
            paths["triton"] = f"not importable ({err})"
        else:
            paths["triton"] = selective_scan_triton
    fn = _kernels._selective_scan_fn() if device.type == "cuda" else None
    paths["mamba_ssm"] = fn if fn is not None else "mamba_ssm not installed / no CUDA"
    paths["torch"] = lambda *a: selective_scan_torch(*a, native=False)
    return paths


def _scan_inputs(scale: GPUScale, length: int, device: torch.device, dtype: torch.dtype):
    g = torch.Generator(device=device).manual_seed(0)
    m, d, n = scale.scan_batch, scale.scan_dim, scale.scan_state

    def r(*shape: int, dt: torch.dtype = dtype) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=device, dtype=dt)

    # (u, Δ, A, B, C, D, z, Δ bias): the mamba layout of ops/reference.py
    return [r(m, d, length), r(m, d, length) * 0.5, -torch.rand(d, n, device=device) - 0.1,
            r(m, n, length), r(m, n, length), r(d, dt=torch.float32), r(m, d, length),
            r(d, dt=torch.float32) * 0.5]  # fmt: skip


def _scan_case(
    fn: Callable[..., Any], scale: GPUScale, length: int, device: torch.device
) -> dict[str, Any]:
    """Forward (no grad) and forward+backward time of one scan path at one length."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    args = _scan_inputs(scale, length, device, dtype)
    with torch.no_grad():
        ms = timed_ms(lambda: fn(*args, True), device, warmup=scale.warmup,
                      repeats=scale.repeats, budget_s=scale.case_budget_s)  # fmt: skip
    for a in args:
        a.requires_grad_()

    def fwd_bwd() -> None:
        for a in args:
            a.grad = None
        fn(*args, True).float().sum().backward()

    ms_fb = timed_ms(fwd_bwd, device, warmup=1, repeats=scale.repeats,
                     budget_s=scale.case_budget_s)  # fmt: skip
    nbytes = scan_bytes(scale.scan_batch, scale.scan_dim, scale.scan_state, length,
                        torch.finfo(dtype).bits // 8)  # fmt: skip
    fwd = statistics.median(ms)
    return {"status": "ok", "fwd_ms": fwd, "bytes": nbytes, "GBps": nbytes / fwd / 1e6,
            "fwd_bwd_ms": statistics.median(ms_fb), "repeats": len(ms)}  # fmt: skip


def bench_scan(scale: GPUScale, device: torch.device, deadline: Deadline) -> dict[str, Any]:
    """Forward GB/s and fwd+bwd time of each scan path at each length."""
    rows = []
    for name, fn in _scan_paths(device).items():
        for length in (scale.torch_scan_t,) if name == "torch" else scale.scan_t:
            row: dict[str, Any] = {"path": name, "T": length}
            rows.append(row)
            if isinstance(fn, str):
                row["status"] = fn
            elif deadline.left() < 0:
                row["status"] = "skipped (time budget)"
            else:
                row.update(_guarded(f"scan {name} T={length}", _scan_case, fn, scale, length,
                                    device))  # fmt: skip
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    return {"batch": scale.scan_batch, "dim": scale.scan_dim, "state": scale.scan_state,
            "dtype": dtype, "rows": rows}  # fmt: skip


def _guarded(what: str, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """fn(*args), or a status row when it runs out of memory or fails: one broken case must
    not hide the other cases' numbers."""
    try:
        return fn(*args)
    except torch.OutOfMemoryError:
        return {"status": "out of memory"}
    except Exception as err:
        log.exception("bench --gpu: %s failed", what)
        return {"status": f"failed: {err!r}"[:200]}
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ---- VideoDiT ------------------------------------------------------------------------------
def _model(scale: GPUScale, mixer: str, device: torch.device) -> nn.Module:
    from cinemamba_backbone import BackboneConfig, VideoDiT

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    c, h, _ = scale.latent
    cfg = BackboneConfig.from_preset(scale.preset, in_channels=c, mixer=mixer, sample_size=h)
    return VideoDiT(cfg).to(device=device, dtype=dtype)


def _model_inputs(
    scale: GPUScale, model: nn.Module, batch: int, frames: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents (B, C, T, h, w), times (B,), text tokens (B, L, text_dim) on the model's device."""
    p = next(model.parameters())
    c, h, w = scale.latent
    g = torch.Generator(device=p.device).manual_seed(0)
    kw = {"generator": g, "device": p.device, "dtype": p.dtype}
    x = torch.randn(batch, c, frames, h, w, **kw)
    t = torch.rand(batch, **kw)
    text = torch.randn(batch, scale.text_tokens, model.config.text_dim, **kw)
    return x, t, text


def _loss(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return model(*inputs).float().square().mean()


def _fwd_bwd(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
    model.zero_grad(set_to_none=True)
    _loss(model, inputs).backward()


def crossover(ts: list[int], cheaper: dict[int, float], baseline: dict[int, float]) -> int | None:
    """Smallest T from which `cheaper` stays below `baseline` at every longer measured T
    (a length measured for only one of them ends the comparison there); None if never."""
    both = [t for t in sorted(ts) if t in cheaper and t in baseline]
    found = None
    for t in reversed(both):
        if cheaper[t] < baseline[t]:
            found = t
        else:
            break
    return found


def _model_case(
    model: nn.Module, scale: GPUScale, frames: int, device: torch.device
) -> dict[str, Any]:
    """Peak memory of one fwd+bwd (also the warm-up), then its time."""
    inputs = _model_inputs(scale, model, 1, frames)
    with peak_bytes(device) as peak:
        _fwd_bwd(model, inputs)
    ms = timed_ms(lambda: _fwd_bwd(model, inputs), device, warmup=scale.warmup - 1,
                  repeats=scale.repeats, budget_s=scale.case_budget_s)  # fmt: skip
    return {"status": "ok", "ms": statistics.median(ms), "peak_GiB": peak[0] / 2**30,
            "repeats": len(ms)}  # fmt: skip


def bench_model(scale: GPUScale, device: torch.device, deadline: Deadline) -> dict[str, Any]:
    """VideoDiT fwd+bwd time and peak memory per mixer and frame count; the crossovers."""
    rows = []
    for mixer in scale.mixers:
        model = _model(scale, mixer, device)
        stop = ""  # after an out-of-memory or failure, longer lengths are not tried
        for frames in scale.model_t:
            row: dict[str, Any] = {"mixer": mixer, "T": frames}
            rows.append(row)
            if stop or deadline.left() < 0:
                row["status"] = f"skipped ({stop})" if stop else "skipped (time budget)"
                continue
            row.update(_guarded(f"VideoDiT {mixer} T={frames}", _model_case, model, scale,
                                frames, device))  # fmt: skip
            if row["status"] != "ok":
                stop = f"{row['status'][:40]} at T = {frames}"
                model.zero_grad(set_to_none=True)
        del model
    ok = [r for r in rows if r["status"] == "ok"]
    by = {m: {r["T"]: r for r in ok if r["mixer"] == m} for m in scale.mixers}
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    result: dict[str, Any] = {"preset": scale.preset, "latent": list(scale.latent),
                              "dtype": dtype, "rows": rows}  # fmt: skip
    if "bimamba" in by and "attention" in by:
        for key, field in (("crossover_time", "ms"), ("crossover_memory", "peak_GiB")):
            mamba = {t: r[field] for t, r in by["bimamba"].items() if math.isfinite(r[field])}
            attn = {t: r[field] for t, r in by["attention"].items() if math.isfinite(r[field])}
            if mamba and attn:  # peak memory is not measured on a CPU
                result[key] = crossover(list(scale.model_t), mamba, attn)
    return result


# ---- training-step MFU ---------------------------------------------------------------------
def fwd_bwd_flops(model: nn.Module, loss: Callable[[], torch.Tensor]) -> int:
    """FLOPs FlopCounterMode counts over one `loss()` (a forward returning a scalar) plus its
    backward: matmuls, convolutions and SDPA; elementwise work (the scan) is not counted."""

    def step() -> None:
        model.zero_grad(set_to_none=True)
        loss().backward()

    return count_flops(step)


def _mfu_case(scale: GPUScale, mixer: str, device: torch.device, peak: float) -> dict[str, Any]:
    """FLOPs and time of one training step (fwd + bwd + AdamW) of one mixer's VideoDiT."""
    model = _model(scale, mixer, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = _model_inputs(scale, model, scale.mfu_batch, scale.mfu_t)
    flops = fwd_bwd_flops(model, lambda: _loss(model, inputs))

    def step() -> None:
        _fwd_bwd(model, inputs)
        opt.step()

    ms = timed_ms(step, device, warmup=scale.warmup, repeats=scale.repeats,
                  budget_s=scale.case_budget_s)  # fmt: skip
    sec = statistics.median(ms) / 1e3
    return {"status": "ok", "flops": flops, "step_ms": sec * 1e3, "TFLOPs": flops / sec / 1e12,
            "mfu": flops / sec / peak, "repeats": len(ms)}  # fmt: skip


def bench_mfu(
    scale: GPUScale, device: torch.device, deadline: Deadline, peak: float
) -> dict[str, Any]:
    """Model FLOPs per training step over its time, as a fraction of `peak` FLOP/s."""
    rows = []
    for mixer in scale.mixers:
        row: dict[str, Any] = {"mixer": mixer, "T": scale.mfu_t, "batch": scale.mfu_batch}
        rows.append(row)
        if deadline.left() < 0:
            row["status"] = "skipped (time budget)"
        else:
            row.update(_guarded(f"MFU {mixer}", _mfu_case, scale, mixer, device, peak))
    return {"rows": rows}


# ---- the run -------------------------------------------------------------------------------
def device_info(device: torch.device) -> dict[str, str]:
    """Device name, memory, capability and the versions the numbers depend on."""
    info = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = "not installed"
    from cinemamba_backbone import _kernels

    info["optional kernels"] = ", ".join(f"{k}: {'yes' if v else 'no'}"
                                         for k, v in _kernels.available().items())  # fmt: skip
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(device=p.name, memory=f"{p.total_memory / 2**30:.0f} GiB",
                    capability=f"{p.major}.{p.minor}", SMs=str(p.multi_processor_count),
                    cuda=str(torch.version.cuda))  # fmt: skip
    else:
        info["device"] = f"cpu ({platform.processor() or platform.machine()})"
    return info


def run_gpu_bench(scale: GPUScale, device: torch.device | str = "cuda") -> dict[str, Any]:
    """Every GPU measurement at `scale`; a JSON-ready dict. GPUUnavailableError without CUDA
    (a CPU `device` is only for the test of this code)."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GPUUnavailableError(CPU_MESSAGE)
    start = time.perf_counter()
    deadline = Deadline(scale.budget_s)
    info = device_info(device)
    copy = copy_bandwidth(device, scale.copy_bytes, scale)
    matmul = matmul_rate(device, scale.matmul_n, scale)
    datasheet = peak_bf16(info["device"]) if device.type == "cuda" else None
    peak, source = (datasheet, "datasheet dense bf16") if datasheet else (matmul, "measured matmul")
    result: dict[str, Any] = {"scale": asdict(scale), "device": info, "copy_GBps": copy / 1e9,
                              "matmul_TFLOPs": matmul / 1e12, "peak_TFLOPs": peak / 1e12,
                              "matmul_dtype": "bfloat16" if device.type == "cuda" else "float32",
                              "peak_source": source}  # fmt: skip
    for key, fn in (("scan", bench_scan), ("model", bench_model)):
        log.info("bench --gpu: %s (%.0f s left)", key, deadline.left())
        result[key] = fn(scale, device, deadline)
    log.info("bench --gpu: mfu (%.0f s left)", deadline.left())
    result["mfu"] = bench_mfu(scale, device, deadline, peak)
    for row in result["scan"]["rows"]:
        if row.get("status") == "ok":
            row["of_copy"] = row["GBps"] / result["copy_GBps"]
    for row in result["mfu"]["rows"]:
        if row.get("status") == "ok":
            row["of_matmul"] = row["TFLOPs"] / result["matmul_TFLOPs"]
    result["wall_s"] = time.perf_counter() - start
    result["stamp"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return result
