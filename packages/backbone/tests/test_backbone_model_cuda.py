"""VideoDiT in bf16 on CUDA (whatever kernels `auto` picks there: mamba_ssm, our Triton scan,
SDPA) against the same weights in float64 on the CPU's PyTorch path: output and gradients.

Marked ``cuda`` (auto-skipped without a GPU). Errors are relative norms. The output must be
within a few bf16 epsilons; weight gradients sum many cancelling per-token terms, so their bf16
error is large whatever the kernel (up to ~36 eps on a CPU here), and the bar for them is the
error of the CPU's own bf16 PyTorch path on the same inputs (as mamba's kernel tests do): the
CUDA path may be at most twice as far from float64, plus 2 eps.
"""

from __future__ import annotations

import copy

import pytest
import torch

from cinemamba_backbone import BackboneConfig, VideoDiT

pytestmark = pytest.mark.cuda
BF16_EPS = torch.finfo(torch.bfloat16).eps  # 2**-7 (the spacing above 1)


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref||, in float64."""
    a, ref = a.double().cpu(), ref.double().cpu()
    return float((a - ref).norm() / ref.norm().clamp_min(1e-30))


def _model(mixer: str) -> VideoDiT:
    torch.manual_seed(0)
    model = VideoDiT(BackboneConfig.from_preset("tiny", in_channels=4, mixer=mixer, text_dim=32))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():  # adaLN-zero and the final layer: open them, or the output is 0
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def run_pair(mixer: str, device: str, dtype: torch.dtype) -> dict[str, float]:
    """Relative errors of `dtype` on `device` against float64 on CPU: output, input grad, and
    the worst parameter grad (kept importable so tolerances can be checked on a CPU)."""
    ref_model = _model(mixer).double()
    ref_model.set_kernels("torch")
    model = copy.deepcopy(ref_model).to(device=device, dtype=dtype)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 6, 8, 8, generator=g, dtype=torch.float64)
    t = torch.rand(2, generator=g, dtype=torch.float64)
    text = torch.randn(2, 5, 32, generator=g, dtype=torch.float64)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    out = {}
    for name, m in (("ref", ref_model), ("test", model)):
        p = next(m.parameters())
        xi = x.to(p.device, p.dtype).clone().requires_grad_()
        y = m(xi, t.to(p.device, p.dtype), text.to(p.device, p.dtype), mask.to(p.device))
        w = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view_as(y).to(p.device)
        (y.double() * w).sum().backward()
        out[name] = (y.detach(), xi.grad, {n: q.grad for n, q in m.named_parameters()})
    (y_ref, gx_ref, gp_ref), (y, gx, gp) = out["ref"], out["test"]
    worst = max(_rel(gp[n], gp_ref[n]) for n in gp_ref if gp_ref[n] is not None)
    return {"out": _rel(y, y_ref), "grad_x": _rel(gx, gx_ref), "grad_params": worst}


@pytest.mark.parametrize("mixer", ["bimamba", "attention"])
def test_videodit_bf16_cuda_forward_backward_matches_float64(mixer: str) -> None:
    """Output within 4 eps of float64; every error at most 2x the CPU bf16 path's + 2 eps."""
    err = run_pair(mixer, "cuda", torch.bfloat16)
    cpu = run_pair(mixer, "cpu", torch.bfloat16)
    assert err["out"] < 4 * BF16_EPS, (err, cpu)
    for key, value in err.items():
        assert value <= 2 * cpu[key] + 2 * BF16_EPS, (key, err, cpu)
