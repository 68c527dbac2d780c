"""Full-3D attention block (issue 20): float64 reference, 3D rotary, causality, bf16, save/load.

The model-level conformance tests (shapes, gradients, checkpointing, streaming, refusal to
stream) run over every mixer name in test_backbone_model.py, full3d kinds included.
"""

from __future__ import annotations

import math

import pytest
import torch

from cinemamba_backbone import BackboneConfig, VideoDiT
from cinemamba_backbone.full3d import Full3DAttention, rotary_3d

C, TEXT = 4, 16


def _model(mixer: str, seed: int = 0, **kw) -> VideoDiT:
    """A tiny model with its zero-initialised parameters perturbed so every path is live."""
    torch.manual_seed(seed)
    cfg = BackboneConfig.from_preset("tiny", in_channels=C, text_dim=TEXT, mixer=mixer, **kw)
    model = VideoDiT(cfg, kernels="torch")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _inputs(b=2, t=4, h=6, w=4, length=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, C, t, h, w, generator=g)
    time = torch.rand(b, t, generator=g)
    text = torch.randn(b, length, TEXT, generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, 3:] = False
    return x, time, text, mask


def _rope_ref(x: torch.Tensor, pos: list[tuple[int, int, int]], widths: list[int]) -> torch.Tensor:
    """Float64 3D RoPE written out per token and per pair: part a of the head dim rotates
    pairs (i, i + n/2) of its n = widths[a] features by pos[a] * 10000^(-i / (n/2))."""
    out = x.clone()
    for m, p in enumerate(pos):
        start = 0
        for axis, n in enumerate(widths):
            half = n // 2
            for i in range(half):
                angle = p[axis] * 10000.0 ** (-i / half)
                a, b = x[..., m, start + i], x[..., m, start + half + i]
                out[..., m, start + i] = a * math.cos(angle) - b * math.sin(angle)
                out[..., m, start + half + i] = a * math.sin(angle) + b * math.cos(angle)
            start += n
    return out


@pytest.mark.parametrize("causal", [False, True])
def test_joint_attention_equals_float64_reference(causal):
    torch.manual_seed(0)
    dim, heads, t, h, w = 24, 2, 3, 2, 3  # head dim 12: rotary widths t=4, h=4, w=4
    attn = Full3DAttention(dim, heads, qk_norm=True, causal=causal)
    with torch.no_grad():
        for p in attn.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, t, h * w, dim)
    out, _ = attn(x, h, w)

    xd = x.double().reshape(2, t * h * w, dim)
    qkv = xd @ attn.qkv.weight.double().T + attn.qkv.bias.double()
    q, k, v = (z.reshape(2, -1, heads, dim // heads).transpose(1, 2) for z in qkv.chunk(3, -1))

    def rms(z, weight):
        eps = torch.finfo(torch.float32).eps  # nn.RMSNorm's default for float32 input
        return z / torch.sqrt(z.square().mean(-1, keepdim=True) + eps) * weight.double()

    pos = [(i, j, kk) for i in range(t) for j in range(h) for kk in range(w)]
    q = _rope_ref(rms(q, attn.q_norm.weight), pos, [4, 4, 4])
    k = _rope_ref(rms(k, attn.k_norm.weight), pos, [4, 4, 4])
    scores = q @ k.transpose(-1, -2) / math.sqrt(dim // heads)
    if causal:
        frame = torch.tensor([p[0] for p in pos])
        scores = scores.masked_fill(frame[None, :] > frame[:, None], float("-inf"))
    ref = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, t * h * w, dim)
    ref = ref @ attn.proj.weight.double().T + attn.proj.bias.double()
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(out.reshape(ref.shape).double(), ref, rtol=64 * eps, atol=64 * eps)


def test_rotary_scores_depend_only_on_relative_time():
    g = torch.Generator().manual_seed(0)
    t, h, w, k = 5, 3, 2, 32
    q, key = (
        torch.randn(2, 2, t * h * w, k, generator=g),
        torch.randn(2, 2, t * h * w, k, generator=g),
    )
    scores = [
        rotary_3d(q, t, h, w, offset) @ rotary_3d(key, t, h, w, offset).transpose(-1, -2)
        for offset in (0, 37)
    ]
    # Angles up to ~40 rad in float32: error ~ angle * eps per rotation, times sqrt(k) terms.
    tol = 40 * torch.finfo(torch.float32).eps * k
    torch.testing.assert_close(scores[1], scores[0], rtol=0, atol=tol)
    # ... while the rotary does depend on the absolute position (it is not the identity).
    assert (rotary_3d(q, t, h, w, 37) - rotary_3d(q, t, h, w, 0)).abs().max() > 0.1


@pytest.mark.parametrize("mixer", ["full3d_causal", "full3d"])
def test_causality_in_time(mixer):
    model = _model(mixer)
    x, t, text, mask = _inputs()
    base = model(x, t, text, mask)
    k = 2
    x2 = x.clone()
    x2[:, :, k] += 1.0
    out = model(x2, t, text, mask)
    assert (out[:, :, k] - base[:, :, k]).abs().max() > 1e-4
    earlier = (out[:, :, :k] - base[:, :, :k]).abs().max()
    if mixer == "full3d_causal":
        assert earlier == 0  # exactly: masked keys get zero weight
    else:
        assert earlier > 1e-4  # the full variant sees the future


def test_bf16_autocast_close_to_fp32():
    model = _model("full3d_causal")
    x, t, text, mask = _inputs()
    ref = model(x, t, text, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, text, mask)
    # Two blocks of a few bf16 matmuls each: measured ~1 bf16 eps; allow 8 of the scale.
    tol = 8 * torch.finfo(torch.bfloat16).eps * ref.abs().max().item()
    assert (out.float() - ref).abs().max().item() <= tol
    out.float().square().mean().backward()
    for name, p in model.named_parameters():
        if not name.startswith("pooled_proj"):  # no pooled text given
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_save_load_round_trip_bit_exact(tmp_path):
    model = _model("full3d", mixer_pattern=["bimamba", "full3d_causal"])
    model.save_pretrained(tmp_path / "ckpt")
    loaded = VideoDiT.from_pretrained(tmp_path / "ckpt", kernels="torch")
    assert loaded.config.block_mixers() == ["bimamba", "full3d_causal"]
    x, t, text, mask = _inputs()
    torch.testing.assert_close(loaded(x, t, text, mask), model(x, t, text, mask), rtol=0, atol=0)


def test_unknown_mixer_lists_full3d():
    with pytest.raises(ValueError, match="full3d_causal"):
        BackboneConfig.from_preset("tiny", mixer="full4d")


def test_lora_default_targets_find_full3d_linears():
    from cinemamba_backbone import LORA_TARGETS

    names = {n.split(".", 2)[2] for n, m in _model("full3d").named_modules() if n.count(".") >= 3}
    assert {"attn.qkv", "attn.proj", "cross_attn.q", "mlp.0"} <= names & set(LORA_TARGETS)
