"""Conformance suite every temporal mixer runs, plus mixer-specific checks."""

from __future__ import annotations

import math

import pytest
import torch

from cinemamba_backbone.mixers import TEMPORAL_MIXERS, Mamba, MixerOptions, build_mixer

DIM = 32
OPTS = MixerOptions(heads=2, headdim=16, chunk_size=4)
NAMES = sorted(TEMPORAL_MIXERS)
CAUSAL = [n for n in NAMES if TEMPORAL_MIXERS[n].causal]


def _mixer(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_mixer(name, DIM, OPTS)


def _x(n: int = 3, t: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, t, DIM, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", NAMES)
def test_shape_kept_and_gradients_flow(name):
    mixer = _mixer(name)
    x = _x().requires_grad_()
    y = mixer(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in mixer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert (
        sum(p.grad.abs().sum() > 0 for p in mixer.parameters()) >= len(list(mixer.parameters())) - 1
    )


@pytest.mark.parametrize("name", NAMES)
def test_bf16_runs(name):
    mixer = _mixer(name).to(torch.bfloat16)
    x = _x().to(torch.bfloat16).requires_grad_()
    y = mixer(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    y.float().sum().backward()
    assert torch.isfinite(x.grad.float()).all()
    ref = _mixer(name)(_x())
    assert (y.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name, tmp_path):
    mixer = _mixer(name, seed=0)
    torch.save(mixer.state_dict(), tmp_path / "mixer.pt")
    other = _mixer(name, seed=123)
    x = _x()
    assert not torch.allclose(other(x), mixer(x))
    other.load_state_dict(torch.load(tmp_path / "mixer.pt"))
    torch.testing.assert_close(other(x), mixer(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_causality(name):
    mixer = _mixer(name)
    x = _x(t=9)
    y = mixer(x)
    for t in (0, 4, 7):
        x2 = x.clone()
        x2[:, t + 1] += torch.randn_like(x2[:, t + 1])
        y2 = mixer(x2)
        if mixer.causal:
            torch.testing.assert_close(y2[:, : t + 1], y[:, : t + 1], rtol=0, atol=1e-6)
        else:
            # Bidirectional mixers must let a later frame reach earlier outputs.
            assert (y2[:, : t + 1] - y[:, : t + 1]).abs().max() > 1e-4
        assert (y2[:, t + 1 :] - y[:, t + 1 :]).abs().max() > 1e-4


@pytest.mark.parametrize("name", CAUSAL)
def test_streaming_equals_full_and_state_is_not_mutated(name):
    mixer = _mixer(name)
    x = _x(t=13)
    full = mixer(x)
    state = mixer.init_state(x.shape[0])
    outs = []
    for a, b in [(0, 1), (1, 6), (6, 7), (7, 13)]:
        before = [s.clone() for s in state]
        out, new_state = mixer.forward_chunk(x[:, a:b], state)
        again, _ = mixer.forward_chunk(x[:, a:b], state)
        torch.testing.assert_close(again, out, rtol=0, atol=0)
        for s0, s1 in zip(before, state, strict=True):
            assert torch.equal(s0, s1)
        outs.append(out)
        state = new_state
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in CAUSAL if "mamba" in n])
def test_ssm_streaming_state_does_not_grow(name):
    mixer = _mixer(name)
    state = mixer.init_state(2)
    sizes = [s.numel() for s in state]
    for _ in range(5):
        _, state = mixer.forward_chunk(torch.randn(2, 7, DIM), state)
    assert [s.numel() for s in state] == sizes


@pytest.mark.parametrize("name", NAMES)
def test_runs_at_four_times_the_trained_length(name):
    mixer = _mixer(name)
    opt = torch.optim.SGD(mixer.parameters(), lr=1e-2)
    for step in range(3):
        x = _x(t=8, seed=step)
        loss = (mixer(x) - x.flip(1)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    long_x = _x(t=32, seed=9)
    with torch.no_grad():
        y = mixer(long_x)
        assert y.shape == long_x.shape and torch.isfinite(y).all()
        # The scale of the output stays that of the trained length.
        short = mixer(long_x[:, :8])
        assert y.std() < 3 * short.std() + 1e-3
        if mixer.causal:
            torch.testing.assert_close(y[:, :8], short, rtol=1e-5, atol=1e-5)


def test_unknown_mixer_lists_valid_names():
    with pytest.raises(ValueError, match="bimamba") as err:
        build_mixer("mamba3", DIM)
    assert "causal_attention" in str(err.value)


# mamba_ssm.modules.mamba_simple.Mamba(d_model=32) with defaults (d_state=16, d_conv=4,
# expand=2, dt_rank=ceil(32/16)=2, conv_bias=True, bias=False): its documented keys and shapes.
MAMBA_SIMPLE_KEYS = {
    "in_proj.weight": (128, 32),
    "conv1d.weight": (64, 1, 4),
    "conv1d.bias": (64,),
    "x_proj.weight": (2 + 32, 64),
    "dt_proj.weight": (64, 2),
    "dt_proj.bias": (64,),
    "A_log": (64, 16),
    "D": (64,),
    "out_proj.weight": (32, 64),
}


def test_mamba_state_dict_matches_mamba_ssm_layout():
    mixer = Mamba(32, d_state=16, d_conv=4, expand=2)
    shapes = {k: tuple(v.shape) for k, v in mixer.state_dict().items()}
    assert shapes == MAMBA_SIMPLE_KEYS
    torch.testing.assert_close(mixer.A_log.exp()[0], torch.arange(1.0, 17.0), msg="S4D-real A init")
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6
    assert math.isclose(float(mixer.D.detach().mean()), 1.0)


@pytest.mark.parametrize("name", [n for n in CAUSAL if "mamba" in n])
def test_bf16_streaming_keeps_an_fp32_ssm_state(name):
    mixer = _mixer(name).to(torch.bfloat16)
    x = _x(t=6).to(torch.bfloat16)
    state = mixer.init_state(x.shape[0], dtype=torch.bfloat16)
    _, state = mixer.forward_chunk(x[:, :3], state)
    out, state = mixer.forward_chunk(x[:, 3:], state)
    assert state[1].dtype == torch.float32
    full = mixer(x)
    assert (out.float() - full[:, 3:].float()).abs().max() < 0.05 * full.float().abs().max() + 0.02
