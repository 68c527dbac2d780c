"""Noise processes against closed forms: flow interpolation/velocity, DDPM alpha-bar and conversions."""

from __future__ import annotations

import math

import pytest
import torch

from cinemamba_sampling import DDPM, FlowMatching, ProcessConfig, build_process, expand_t


def _latents(b=3, c=2, t=4, h=3, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, t, h, w, generator=g, dtype=torch.float64), torch.randn(
        b, c, t, h, w, generator=g, dtype=torch.float64
    )


def test_flow_interpolation_and_velocity_closed_form():
    proc = FlowMatching()
    x0, eps = _latents()
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    xt = proc.add_noise(x0, eps, t)
    for i, ti in enumerate(t.tolist()):
        torch.testing.assert_close(xt[i], (1 - ti) * x0[i] + ti * eps[i])
    torch.testing.assert_close(proc.target(x0, eps, t), eps - x0)
    # The velocity is the time derivative of the path.
    dt = 1e-6
    tm = torch.full((3,), 0.3, dtype=torch.float64)
    d = (proc.add_noise(x0, eps, tm + dt) - proc.add_noise(x0, eps, tm)) / dt
    torch.testing.assert_close(d, eps - x0, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="batch"):
        proc.add_noise(x0, eps, t[:2])


def test_per_frame_times_broadcast_over_frames():
    proc = FlowMatching()
    x0, eps = _latents()
    t = torch.rand(3, 4, dtype=torch.float64)
    xt = proc.add_noise(x0, eps, t)
    for b in range(3):
        for f in range(4):
            tf = t[b, f].item()
            torch.testing.assert_close(xt[b, :, f], (1 - tf) * x0[b, :, f] + tf * eps[b, :, f])
    with pytest.raises(ValueError, match="per-frame t"):
        expand_t(torch.zeros(3, 7), x0)


@pytest.mark.parametrize(
    "proc",
    [
        FlowMatching(),
        DDPM(ProcessConfig(name="ddpm", prediction="epsilon")),
        DDPM(ProcessConfig(name="ddpm", prediction="v", beta_schedule="cosine")),
    ],
)
def test_predict_inverts_target(proc):
    """predict(target(x0, eps, t), x_t, t) recovers (x0, eps) exactly, per-batch and per-frame t."""
    x0, eps = _latents()
    for t in (
        torch.tensor([0.25, 0.5, 0.9], dtype=torch.float64),
        torch.rand(3, 4, dtype=torch.float64) * 0.9 + 0.05,
    ):
        xt = proc.add_noise(x0, eps, t)
        x0_hat, eps_hat = proc.predict(proc.target(x0, eps, t), xt, t)
        torch.testing.assert_close(x0_hat, x0)
        torch.testing.assert_close(eps_hat, eps)


def test_ddpm_linear_alpha_bar_closed_form():
    proc = DDPM(ProcessConfig(name="ddpm"))
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    prod = 1.0
    for i, b in enumerate(betas, start=1):
        prod *= 1 - b
        if i in (1, 10, 500, 1000):
            got = proc.alpha_bar_at(torch.tensor([i / 1000], dtype=torch.float64)).item()
            assert got == pytest.approx(prod, rel=1e-10), i
    assert proc.alpha_bar_at(torch.zeros(1, dtype=torch.float64)).item() == 1.0
    # sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps
    x0, eps = _latents()
    t = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)
    ab = proc.alpha_bar[500].item()
    torch.testing.assert_close(
        proc.add_noise(x0, eps, t), math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps
    )


def test_ddpm_cosine_alpha_bar_closed_form():
    proc = DDPM(ProcessConfig(name="ddpm", beta_schedule="cosine"))
    s = 0.008

    def f(u):
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    for i in (1, 100, 700):  # below the 0.999 beta clip, alpha_bar = f(t) / f(0)
        t = torch.tensor([i / 1000], dtype=torch.float64)
        assert proc.alpha_bar_at(t).item() == pytest.approx(f(i / 1000) / f(0), rel=1e-9)


def test_v_and_eps_conversions_closed_form():
    proc = DDPM(ProcessConfig(name="ddpm", prediction="v"))
    x0, eps = _latents()
    t = torch.full((3,), 0.4, dtype=torch.float64)
    ab = proc.alpha_bar[400].item()
    a, s = math.sqrt(ab), math.sqrt(1 - ab)
    v = proc.target(x0, eps, t)
    torch.testing.assert_close(v, a * eps - s * x0)
    xt = a * x0 + s * eps
    torch.testing.assert_close(a * xt - s * v, x0)  # x0 from v
    torch.testing.assert_close(s * xt + a * v, eps)  # eps from v
    eps_proc = DDPM(ProcessConfig(name="ddpm", prediction="epsilon"))
    x0_hat, _ = eps_proc.predict(eps, xt, t)
    torch.testing.assert_close(x0_hat, (xt - s * eps) / a)


def test_zero_terminal_snr():
    proc = DDPM(ProcessConfig(name="ddpm", prediction="v", zero_terminal_snr=True))
    ref = DDPM(ProcessConfig(name="ddpm"))
    assert proc.alpha_bar[-1].item() == 0.0
    assert proc.alpha_bar[1].item() == pytest.approx(ref.alpha_bar[1].item(), rel=1e-12)
    assert (proc.betas > 0).all() and (proc.betas <= 1).all()
    x0, eps = _latents()
    torch.testing.assert_close(proc.add_noise(x0, eps, torch.ones(3, dtype=torch.float64)), eps)
    # x0 stays recoverable from v at pure noise
    x0_hat, eps_hat = proc.predict(
        proc.target(x0, eps, torch.ones(3)), eps, torch.ones(3, dtype=torch.float64)
    )
    torch.testing.assert_close(x0_hat, x0)
    with pytest.raises(ValueError, match="needs prediction 'v'"):
        DDPM(ProcessConfig(name="ddpm", zero_terminal_snr=True))


def test_timesteps_grids():
    flow = FlowMatching()
    ts = flow.timesteps(4)
    assert ts.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    ddpm = DDPM(ProcessConfig(name="ddpm"))
    ts = ddpm.timesteps(4)
    assert (ts * 1000).tolist() == [1000, 750, 500, 250, 0]
    assert ddpm.timesteps(3).mul(1000).round().tolist() == [1000, 667, 333, 0]
    with pytest.raises(ValueError, match="steps"):
        ddpm.timesteps(0)


def test_flow_shift_grows_with_tokens():
    proc = FlowMatching(ProcessConfig(shift=1.0, shift_base_tokens=1000, max_shift=8.0))
    assert proc.shift_for(1000) == 1.0
    assert proc.shift_for(4000) == pytest.approx(2.0)
    assert proc.shift_for(10**9) == 8.0
    s = 3.0
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(
        FlowMatching.apply_shift(t, s), torch.tensor([0, 0.5, 0.75, 1], dtype=torch.float64)
    )
    small, big = proc.timesteps(10, num_tokens=1000), proc.timesteps(10, num_tokens=16000)
    assert small[0] == big[0] == 1 and small[-1] == big[-1] == 0
    assert (big[1:-1] > small[1:-1]).all()  # more of the steps spent at high noise


def test_sample_t_shapes_distribution_and_determinism():
    flow = FlowMatching()
    g = torch.Generator().manual_seed(0)
    t = flow.sample_t(20000, generator=g)
    assert t.shape == (20000,) and (t > 0).all() and (t < 1).all()
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item()) < 0.03 and abs(logit.std().item() - 1) < 0.03
    assert flow.sample_t(4, 6, generator=g).shape == (4, 6)
    a = flow.sample_t(8, generator=torch.Generator().manual_seed(3))
    b = flow.sample_t(8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    shifted = flow.sample_t(20000, generator=torch.Generator().manual_seed(0), num_tokens=4 * 4096)
    assert shifted.mean() > t.mean()
    ddpm = DDPM(ProcessConfig(name="ddpm", num_steps=10))
    td = ddpm.sample_t(5000, 3, generator=g)
    assert td.shape == (5000, 3)
    assert set((td * 10).round().long().unique().tolist()) == set(range(1, 11))


def _linear_snr(i: int, n: int = 1000, start: float = 1e-4, end: float = 0.02) -> float:
    """SNR of step i of the default linear DDPM schedule, by a plain float loop."""
    alpha_bar = 1.0
    for k in range(i):
        alpha_bar *= 1.0 - (start + k * (end - start) / (n - 1))
    return alpha_bar / (1.0 - alpha_bar)


def test_loss_weights():
    """Min-SNR-5 weights against closed forms, not the library's own `snr`."""
    t = torch.tensor([0.01, 0.5, 0.99])
    assert torch.equal(FlowMatching().loss_weight(t), torch.ones(3))
    steps = [10, 500, 990]
    snr = [_linear_snr(i) for i in steps]
    # early steps are nearly clean (SNR >> 5, clipped); late ones are mostly noise (SNR << 1)
    assert snr[0] > 100 and snr[2] < 1e-3
    t = torch.tensor(steps, dtype=torch.float64) / 1000
    proc = DDPM(ProcessConfig(name="ddpm", loss_weighting="min_snr", min_snr_gamma=5.0))
    torch.testing.assert_close(proc.snr(t), torch.tensor(snr, dtype=torch.float64), rtol=1e-9,
                               atol=0)  # fmt: skip
    eps_w = [min(r, 5.0) / r for r in snr]  # epsilon loss: min(SNR, 5) / SNR
    torch.testing.assert_close(proc.loss_weight(t), torch.tensor(eps_w), rtol=1e-6, atol=0)
    assert eps_w[0] < 0.05 and eps_w[2] == 1.0
    proc_v = DDPM(ProcessConfig(name="ddpm", prediction="v", loss_weighting="min_snr"))
    v_w = [min(r, 5.0) / (r + 1) for r in snr]  # v loss: min(SNR, 5) / (SNR + 1)
    torch.testing.assert_close(proc_v.loss_weight(t), torch.tensor(v_w), rtol=1e-6, atol=0)
    assert proc.loss_weight(torch.zeros(2, 3)).shape == (2, 3)


def test_build_process_errors_list_valid_names():
    assert isinstance(build_process(), FlowMatching)
    assert isinstance(build_process(ProcessConfig(name="ddpm")), DDPM)
    with pytest.raises(ValueError, match="'edm'.*flow, ddpm"):
        build_process(ProcessConfig(name="edm"))
    with pytest.raises(ValueError, match="beta_schedule"):
        build_process(ProcessConfig(name="ddpm", beta_schedule="quadratic"))
