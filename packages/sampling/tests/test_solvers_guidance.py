"""Solvers and guidance against exact answers from an analytic (Gaussian-data) denoiser."""

from __future__ import annotations

import math

import pytest
import torch

from cinemamba_conditioning import TextEmbedding
from cinemamba_sampling import (
    DDPM,
    SOLVERS,
    ClassifierFreeGuidance,
    FlowMatching,
    ProcessConfig,
    get_solver,
    guided,
    make_ddim,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
)
from cinemamba_sampling.processes import NoiseProcess, expand_t

MU, S = 0.7, 0.5  # data x0 ~ N(MU, S^2) independently per element


class GaussianOracle:
    """The exact network for Gaussian data: E[target | x_t] in closed form, in float64."""

    def __init__(self, process: NoiseProcess, mu: float = MU, s: float = S) -> None:
        self.process, self.mu, self.s = process, mu, s
        self.calls = 0

    def __call__(self, x, t):
        self.calls += 1
        a, sig = (expand_t(v, x) for v in self.process.alpha_sigma(t.double()))
        var = a**2 * self.s**2 + sig**2
        resid = x.double() - a * self.mu
        x0 = self.mu + a * self.s**2 / var * resid  # E[x0 | x_t]
        eps = sig / var * resid  # E[eps | x_t]
        pred = self.process.prediction
        out = eps - x0 if pred == "velocity" else eps if pred == "epsilon" else a * eps - sig * x0
        return out.to(x.dtype)


def exact_endpoint(process: NoiseProcess, x_start, t_start: float):
    """The probability-flow ODE map for Gaussian data: affine, matching means and stds."""
    a, sig = (float(v) for v in process.alpha_sigma(torch.tensor([t_start], dtype=torch.float64)))
    return MU + S * (x_start - a * MU) / math.sqrt(a**2 * S**2 + sig**2)


def _start(n=4096, seed=0):
    return torch.randn(
        2, 4, 8, n // 64, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


FLOW = FlowMatching()
DDPM_EPS = DDPM(ProcessConfig(name="ddpm", prediction="epsilon"))
DDPM_V_ZSNR = DDPM(
    ProcessConfig(name="ddpm", prediction="v", zero_terminal_snr=True, beta_schedule="cosine")
)


def _error(solver, process, steps):
    x = _start()
    ts = process.timesteps(steps)
    out = solver(GaussianOracle(process), x, ts, process=process)
    return (out - exact_endpoint(process, x, float(ts[0]))).abs().max().item()


def test_euler_first_order_and_heun_second_order_on_linear_flow():
    e10, e20, e40 = (_error(sample_euler, FLOW, n) for n in (10, 20, 40))
    assert e40 < 0.1
    assert 1.7 < e10 / e20 < 2.3 and 1.7 < e20 / e40 < 2.3  # O(1/N)
    h10, h20 = _error(sample_heun, FLOW, 10), _error(sample_heun, FLOW, 20)
    assert h20 < e40 and h10 / h20 > 3.0  # O(1/N^2)


def test_euler_exact_on_constant_velocity():
    const = torch.full((2, 3, 4, 2, 2), 0.25, dtype=torch.float64)
    x = torch.randn(2, 3, 4, 2, 2, dtype=torch.float64)
    out = sample_euler(lambda x_, t: const, x, FLOW.timesteps(7), process=FLOW)
    torch.testing.assert_close(out, x - const)  # x(0) = x(1) - v


@pytest.mark.parametrize(
    "process", [FLOW, DDPM_EPS, DDPM_V_ZSNR], ids=["flow", "ddpm-eps", "ddpm-v-zsnr"]
)
def test_deterministic_solvers_reach_exact_map(process):
    # max abs error over 32k samples; DDIM is first order, DPM-Solver++(2M) second order
    assert _error(sample_ddim, process, 160) < 0.05
    assert _error(sample_dpmpp_2m, process, 40) < 0.015
    assert _error(sample_dpmpp_2m, process, 40) < _error(sample_ddim, process, 40) / 4


def test_ddim_on_flow_is_euler():
    x = _start()
    ts = FLOW.timesteps(9)
    a = sample_ddim(GaussianOracle(FLOW), x, ts, process=FLOW)
    b = sample_euler(GaussianOracle(FLOW), x, ts, process=FLOW)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("process", [FLOW, DDPM_EPS], ids=["flow", "ddpm-eps"])
def test_ddim_eta0_inverts_and_regenerates_a_latent(process):
    """DDIM(0) run 0 -> 1 then 1 -> 0 returns the latent; the error is first order in 1/steps."""
    torch.manual_seed(0)
    x0 = MU + S * torch.randn(2, 4, 6, 8, 8, dtype=torch.float64)
    oracle = GaussianOracle(process)
    errors = []
    for steps in (500, 1000):
        ts = process.timesteps(steps)
        if process is DDPM_EPS:
            ts = ts[1:]  # stop one step short of t = 1, where alpha -> 0 amplifies errors
        noise = sample_ddim(oracle, x0, ts.flip(0), process=process)  # t: 0 -> 1
        assert (noise - x0).abs().mean() > 0.3  # it really moved
        back = sample_ddim(oracle, noise, ts, process=process)
        errors.append((back - x0).abs().max().item())
    assert errors[1] < 0.015
    assert 1.7 < errors[0] / errors[1] < 2.3


def test_ddpm_equals_ddim_eta1_and_samples_the_data_distribution():
    x = _start()
    ts = DDPM_EPS.timesteps(50)
    a = sample_ddpm(
        GaussianOracle(DDPM_EPS),
        x,
        ts,
        process=DDPM_EPS,
        generator=torch.Generator().manual_seed(1),
    )
    b = make_ddim(1.0)(
        GaussianOracle(DDPM_EPS),
        x,
        ts,
        process=DDPM_EPS,
        generator=torch.Generator().manual_seed(1),
    )
    torch.testing.assert_close(a, b)
    c = sample_ddpm(
        GaussianOracle(DDPM_EPS),
        x,
        ts,
        process=DDPM_EPS,
        generator=torch.Generator().manual_seed(2),
    )
    assert not torch.allclose(a, c)
    # With every training step the ancestral sampler draws from the data distribution.
    full = sample_ddpm(
        GaussianOracle(DDPM_EPS),
        x,
        DDPM_EPS.timesteps(1000),
        process=DDPM_EPS,
        generator=torch.Generator().manual_seed(1),
    )
    assert abs(full.mean().item() - MU) < 0.01 and abs(full.std().item() - S) < 0.01


def test_ddpm_posterior_matches_textbook_formula():
    """One step of sample_ddpm from t=i to s=i-1 equals Ho et al. eq. 7 with betas."""
    proc = DDPM(ProcessConfig(name="ddpm", num_steps=10))
    x = _start()
    i = 6
    ts = torch.tensor([i / 10, (i - 1) / 10], dtype=torch.float64)
    out = sample_ddpm(
        GaussianOracle(proc), x, ts, process=proc, generator=torch.Generator().manual_seed(5)
    )
    ab_t, ab_s, beta = (
        proc.alpha_bar[i].item(),
        proc.alpha_bar[i - 1].item(),
        proc.betas[i - 1].item(),
    )
    eps = GaussianOracle(proc)(x, torch.full((2,), i / 10))
    x0 = (x - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
    mean = (
        math.sqrt(ab_s) * beta / (1 - ab_t) * x0 + math.sqrt(1 - beta) * (1 - ab_s) / (1 - ab_t) * x
    )
    var = (1 - ab_s) / (1 - ab_t) * beta
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    torch.testing.assert_close(out, mean + math.sqrt(var) * z)


def test_solvers_are_stateless_and_deterministic_per_seed():
    for name in SOLVERS:
        process = FLOW if name in ("euler", "heun") else DDPM_V_ZSNR
        solver = make_ddim(0.5) if name == "ddim" else get_solver(name)
        runs = [
            solver(
                GaussianOracle(process),
                _start(),
                process.timesteps(6),
                process=process,
                generator=torch.Generator().manual_seed(9),
            )
            for _ in range(2)
        ]
        assert torch.equal(runs[0], runs[1]), name


def test_callback_and_wrong_process_errors():
    seen = []
    sample_heun(
        GaussianOracle(FLOW),
        _start(),
        FLOW.timesteps(5),
        process=FLOW,
        callback=lambda i, x, x0: seen.append(i),
    )
    assert seen == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="flow process"):
        sample_euler(GaussianOracle(DDPM_EPS), _start(), DDPM_EPS.timesteps(5), process=DDPM_EPS)
    with pytest.raises(ValueError, match="unknown solver 'lms'.*euler"):
        get_solver("lms")


class TextNet(torch.nn.Module):
    """A toy text-conditioned network: output depends on x, t, the masked tokens and pooled."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, text, text_mask=None, pooled=None):
        self.calls.append(x.shape[0])
        tok = (text * text_mask[..., None]).sum(1).mean(-1)  # (B,)
        scale = expand_t(t.float(), x)
        return x * (1 + tok + pooled.mean(-1))[:, None, None, None, None] * scale


def _emb(b, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(b, 6, dtype=torch.bool)
    mask[:, :3] = True
    return TextEmbedding(torch.randn(b, 6, 4, generator=g), mask, torch.randn(b, 5, generator=g))


def test_guidance_scale_one_is_the_conditional_prediction():
    net = TextNet()
    cond, uncond = _emb(2, 0), _emb(2, 1)
    x, t = torch.randn(2, 3, 4, 2, 2), torch.tensor([0.5, 0.7])
    cfg1 = ClassifierFreeGuidance(net, cond, uncond, 1.0)
    torch.testing.assert_close(
        cfg1(x, t), net(x, t, cond.tokens, cond.mask, cond.pooled), rtol=0, atol=0
    )
    assert net.calls[0] == 2  # no unconditional pass at scale 1


def test_guidance_formula_in_one_batch_and_per_frame_t():
    net = TextNet()
    cond, uncond = _emb(2, 0), _emb(2, 1)
    x = torch.randn(2, 3, 4, 2, 2)
    for t in (torch.tensor([0.5, 0.7]), torch.rand(2, 4)):
        net.calls.clear()
        out = guided(net, cond, uncond, 4.0)(x, t)
        assert net.calls == [4]  # cond and uncond share one batch
        c = net(x, t, cond.tokens, cond.mask, cond.pooled)
        u = net(x, t, uncond.tokens, uncond.mask, uncond.pooled)
        torch.testing.assert_close(out, u + 4.0 * (c - u))
    torch.testing.assert_close(
        guided(net, cond, uncond, 0.0)(x, torch.ones(2)),
        net(x, torch.ones(2), uncond.tokens, uncond.mask, uncond.pooled),
    )
    with pytest.raises(ValueError, match="unconditional"):
        guided(net, cond, None, 3.0)
