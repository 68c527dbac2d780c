"""CUDA parity: the PyTorch paths against mamba_ssm / causal_conv1d / xformers kernels.

Marked ``cuda`` (auto-skipped without a GPU); each test also skips if its package is absent.
"""

from __future__ import annotations

import pytest
import torch

from cinemamba_backbone.mixers import Mamba
from cinemamba_backbone.ops import (
    attention,
    causal_conv1d,
    causal_conv1d_ref,
    selective_scan,
    selective_scan_torch,
    ssd_scan,
    ssd_torch,
)

pytestmark = pytest.mark.cuda
DEV = "cuda"


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def _grads(out, leaves):
    weight = torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out)
    return torch.autograd.grad((out * weight).sum(), leaves)


def test_selective_scan_cpu_path_matches_mamba_ssm_kernel():
    pytest.importorskip("mamba_ssm")
    torch.manual_seed(0)
    b, d, n, length = 2, 64, 16, 37
    base = [
        torch.randn(b, d, length),
        torch.randn(b, d, length) * 0.5,
        -torch.rand(d, n) - 0.1,
        torch.randn(b, n, length),
        torch.randn(b, n, length),
        torch.randn(d),
        torch.randn(b, d, length),
        torch.randn(d) * 0.5,
    ]
    results = []
    for kernels in ("auto", "torch"):
        leaves = _leaves(*(t.to(DEV) for t in base))
        y = selective_scan(*leaves, True, kernels=kernels, require_kernels=kernels == "auto")
        results.append((y, _grads(y, leaves)))
    (y_k, g_k), (y_t, g_t) = results
    torch.testing.assert_close(y_t, y_k, rtol=1e-4, atol=1e-4)
    for a, e in zip(g_t, g_k, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-3, atol=1e-3)
    # The CPU device path itself agrees with the GPU kernel too.
    y_cpu = selective_scan_torch(*(t.cpu() for t in base), True)
    torch.testing.assert_close(y_cpu, y_k.detach().cpu(), rtol=1e-4, atol=1e-4)


def test_ssd_torch_matches_mamba_ssm_chunk_scan():
    pytest.importorskip("mamba_ssm")
    torch.manual_seed(0)
    b, length, h, p, n = 2, 100, 4, 64, 16
    args = [
        torch.randn(b, length, h, p, device=DEV),
        torch.randn(b, length, h, device=DEV) * 0.5,
        -torch.rand(h, device=DEV) - 0.1,
        torch.randn(b, length, 1, n, device=DEV),
        torch.randn(b, length, 1, n, device=DEV),
    ]
    y_k = ssd_scan(*args, 64, dt_softplus=True, require_kernels=True)
    y_t = ssd_torch(*args, 64, dt_softplus=True)
    torch.testing.assert_close(y_t, y_k, rtol=1e-3, atol=1e-3)


def test_causal_conv1d_matches_kernel():
    pytest.importorskip("causal_conv1d")
    x, w, bias = torch.randn(2, 64, 50, device=DEV), torch.randn(64, 4, device=DEV), None
    torch.testing.assert_close(
        causal_conv1d(x, w, bias, require_kernels=True), causal_conv1d_ref(x, w, bias)
    )


def test_mamba_mixer_loads_real_mamba_ssm_weights_and_agrees():
    mamba_simple = pytest.importorskip("mamba_ssm.modules.mamba_simple")
    torch.manual_seed(0)
    real = mamba_simple.Mamba(d_model=64).to(DEV)
    ours = Mamba(64).to(DEV)
    ours.load_state_dict(real.state_dict())
    real.load_state_dict(ours.state_dict())
    x = torch.randn(3, 40, 64, device=DEV)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), real(x), rtol=1e-3, atol=1e-3)
        ours.set_kernels("torch")
        torch.testing.assert_close(ours(x), real(x), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_matches_xformers(causal):
    pytest.importorskip("xformers.ops")
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 33, 32, device=DEV, dtype=torch.float16) for _ in range(3))
    mask = None if causal else torch.rand(2, 33, device=DEV) > 0.3
    if mask is not None:
        mask[:, 0] = True
    fast = attention(q, k, v, causal=causal, key_mask=mask, require_kernels=True)
    ref = attention(q, k, v, causal=causal, key_mask=mask, kernels="torch")
    torch.testing.assert_close(fast, ref, rtol=2e-3, atol=2e-3)
