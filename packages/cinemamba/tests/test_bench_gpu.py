"""`cinemamba bench --gpu` on a CPU: the clear error without CUDA, the FLOP count against a
hand count, the byte count, the crossover, the markdown from hand-made numbers, the page
merge, and the measuring code end to end at toy sizes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cinemamba.apps.bench.gpu import (
    GPU_SCALES,
    GPUUnavailableError,
    crossover,
    fwd_bwd_flops,
    peak_bf16,
    run_gpu_bench,
    scan_bytes,
)
from cinemamba.apps.bench.gpu_report import GPU_BEGIN, GPU_END, MAIN_END, merge_gpu, render_gpu
from cinemamba.cli import main


def test_bench_gpu_without_cuda_is_a_clear_error(monkeypatch, capsys) -> None:
    """No CUDA: exit code 2 and one line that says what is needed; no traceback."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GPUUnavailableError, match="bench --gpu needs a CUDA device"):
        run_gpu_bench(GPU_SCALES["micro"])
    assert main(["bench", "--gpu"]) == 2
    assert "bench --gpu needs a CUDA device" in capsys.readouterr().err


def test_fwd_bwd_flops_matches_a_hand_count() -> None:
    """A 2-layer MLP on a batch that needs no input gradient: forward 2·b·(i·h + h·o); the
    backward computes both weight gradients (same again) and the hidden activation's
    gradient (2·b·h·o), but not the input's."""
    b, i, h, o = 8, 5, 7, 3
    model = nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, o))
    x = torch.randn(b, i)
    flops = fwd_bwd_flops(model, lambda: model(x).square().sum())
    fwd = 2 * b * (i * h + h * o)
    assert flops == fwd + fwd + 2 * b * h * o
    assert model[0].weight.grad is not None  # the backward really ran


def test_scan_bytes_counts_inputs_and_output_once() -> None:
    """u, Δ, z, y (batch·dim·T each) and B, C (batch·state·T each) in the input dtype, A, D
    and Δ bias in fp32."""
    batch, dim, state, length = 3, 5, 2, 7
    expected = 2 * (4 * batch * dim * length + 2 * batch * state * length) + 4 * (dim * 2 + 2 * dim)
    assert scan_bytes(batch, dim, state, length, 2) == expected


def test_crossover_is_where_the_scan_stays_cheaper() -> None:
    """The first length from which Mamba is cheaper at every longer measured length."""
    ts = [16, 32, 64, 128]
    attn = {16: 1.0, 32: 2.0, 64: 4.0, 128: 8.0}
    assert crossover(ts, {16: 2.0, 32: 3.0, 64: 3.0, 128: 4.0}, attn) == 64
    # cheaper at 16, dearer at 32, cheaper again after: the crossover is the second one
    assert crossover(ts, {16: 0.5, 32: 3.0, 64: 3.0, 128: 4.0}, attn) == 64
    assert crossover(ts, {16: 2.0, 32: 3.0, 64: 5.0, 128: 9.0}, attn) is None
    # attention ran out of memory at 128: the comparison ends at 64
    assert crossover(ts, {16: 2.0, 32: 1.0, 64: 3.0, 128: 4.0}, {16: 1, 32: 2, 64: 4}) == 32


def test_peak_bf16_by_device_name() -> None:
    """Datasheet dense bf16: H200 / H100 SXM share 989.4 TFLOP/s; the PCIe H100 is lower."""
    assert peak_bf16("NVIDIA H200") == 989.4e12
    assert peak_bf16("NVIDIA H100 80GB HBM3") == 989.4e12
    assert peak_bf16("NVIDIA H100 PCIe") == 756.0e12
    assert peak_bf16("Some Future GPU") is None


def _fake_result() -> dict:
    return {
        "scale": {"matmul_n": 8192},
        "device": {"device": "NVIDIA H200", "torch": "2.11.0"},
        "copy_GBps": 4000.0,
        "matmul_TFLOPs": 790.0,
        "matmul_dtype": "bfloat16",
        "peak_TFLOPs": 989.4,
        "peak_source": "datasheet dense bf16",
        "scan": {
            "batch": 1024,
            "dim": 768,
            "state": 16,
            "dtype": "bfloat16",
            "rows": [
                {
                    "path": "triton",
                    "T": 64,
                    "status": "ok",
                    "fwd_ms": 0.5,
                    "GBps": 1000.0,
                    "of_copy": 0.25,
                    "fwd_bwd_ms": 2.0,
                },
                {"path": "mamba_ssm", "T": 64, "status": "mamba_ssm not installed"},
            ],
        },  # fmt: skip
        "model": {
            "preset": "S",
            "latent": [4, 16, 16],
            "dtype": "bfloat16",
            "rows": [
                {"mixer": "bimamba", "T": 16, "status": "ok", "ms": 12.0, "peak_GiB": 1.5},
                {"mixer": "attention", "T": 16, "status": "ok", "ms": 10.0, "peak_GiB": 1.25},
                {"mixer": "bimamba", "T": 1024, "status": "ok", "ms": 300.0, "peak_GiB": 40.0},
                {"mixer": "attention", "T": 1024, "status": "out of memory"},
            ],
            "crossover_time": 1024,
        },  # fmt: skip
        "mfu": {
            "rows": [
                {
                    "mixer": "bimamba",
                    "T": 64,
                    "batch": 8,
                    "status": "ok",
                    "flops": 2.5e12,
                    "step_ms": 10.0,
                    "TFLOPs": 250.0,
                    "mfu": 0.2527,
                    "of_matmul": 0.3165,
                },
                {"mixer": "attention", "T": 64, "batch": 8, "status": "skipped (time budget)"},
            ]
        },  # fmt: skip
        "wall_s": 200.0,
        "stamp": "2026-12-04 16:00 UTC",
    }


def test_render_gpu_writes_every_number_where_it_belongs() -> None:
    """Hand-made numbers land in their rows; statuses stand in for missing numbers."""
    text = render_gpu(_fake_result())
    assert text.startswith(GPU_BEGIN) and text.rstrip().endswith(GPU_END)
    assert "| copy bandwidth (read + write, measured) | 4000 GB/s |" in text
    assert "| peak used for MFU | 989.4 TFLOP/s (datasheet dense bf16) |" in text
    assert "| triton | 64 | 0.5 | 1000 | 0.25 | 2 | ok |" in text
    assert "| mamba_ssm | 64 | — | — | — | — | mamba_ssm not installed |" in text
    assert "| 16 | 12 | 1.5 | 10 | 1.25 |" in text
    assert "| 1024 | 300 | 40 | out of memory | — |" in text
    assert "cheaper than temporal attention in time from T = 1024 on." in text
    assert "in peak memory" not in text  # no crossover_memory key: no sentence
    assert "| bimamba | 64 | 8 | 2500.0 | 10 | 250.0 | 0.253 | 0.317 | ok |" in text
    assert "| attention | 64 | 8 | — | — | — | — | — | skipped (time budget) |" in text


def test_merge_gpu_keeps_the_page_and_replaces_only_its_block() -> None:
    """First write goes after the CPU block; a second replaces it; other text is kept."""
    page = f"# Benchmarks\n\nintro\n{MAIN_END}\n\n## Backbone\n\nnotes\n"
    first = merge_gpu(page, f"{GPU_BEGIN}\nfirst-run\n{GPU_END}\n")
    assert first.index(MAIN_END) < first.index(GPU_BEGIN) < first.index("## Backbone")
    second = merge_gpu(first, f"{GPU_BEGIN}\nsecond-run\n{GPU_END}\n")
    assert "second-run" in second and "first-run" not in second and second.count(GPU_BEGIN) == 1
    assert second.replace("second-run", "first-run") == first
    assert merge_gpu(None, f"{GPU_BEGIN}\nx\n{GPU_END}\n").startswith("# Benchmarks\n\n")


def test_run_gpu_bench_measuring_code_at_toy_sizes_on_cpu() -> None:
    """The whole run on a CPU (the test hook): every row has a status; derived figures agree
    with their parts; the CUDA-only scan paths say why they did not run."""
    r = run_gpu_bench(GPU_SCALES["micro"], "cpu")
    scan = {(row["path"], row["T"]): row for row in r["scan"]["rows"]}
    assert scan[("triton", 4)]["status"] == "needs a CUDA device"
    torch_row = scan[("torch", 4)]
    assert torch_row["status"] == "ok"
    assert torch_row["GBps"] == pytest.approx(torch_row["bytes"] / torch_row["fwd_ms"] / 1e6)
    assert torch_row["of_copy"] == pytest.approx(torch_row["GBps"] / r["copy_GBps"])
    assert {row["status"] for row in r["model"]["rows"]} == {"ok"}
    assert len(r["model"]["rows"]) == 2 * len(GPU_SCALES["micro"].model_t)
    assert "crossover_time" in r["model"] and "crossover_memory" not in r["model"]
    for row in r["mfu"]["rows"]:
        assert row["status"] == "ok" and row["flops"] > 0
        assert row["mfu"] == pytest.approx(row["TFLOPs"] / r["peak_TFLOPs"])
    assert math.isfinite(r["wall_s"])
    assert GPU_END in render_gpu(r)


def test_from_json_puts_a_saved_run_into_the_page(tmp_path, capsys) -> None:
    """A GPU machine's --json renders here (no CUDA) into --markdown and the page's block."""
    import json

    saved = tmp_path / "r.json"
    saved.write_text(json.dumps(_fake_result()))
    page = tmp_path / "benchmarks.md"
    page.write_text(f"# Benchmarks\n\ncpu block\n{MAIN_END}\n\n## Backbone\n\nnotes\n")
    md = tmp_path / "block.md"
    argv = ["bench", "--gpu", "--from-json", str(saved), "--out", str(page), "--markdown", str(md)]
    assert main(argv) == 0
    text = page.read_text()
    assert md.read_text() in text and "| triton | 64 | 0.5 | 1000 |" in text
    assert text.startswith("# Benchmarks\n\ncpu block\n") and text.endswith("notes\n")
    assert "| triton | 64 |" in capsys.readouterr().out
