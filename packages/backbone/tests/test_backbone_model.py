"""VideoDiT: shapes, per-frame time, text mask, checkpointing, persistence, streaming."""

from __future__ import annotations

import pytest
import torch

from cinemamba_backbone import (
    BLOCK_MIXERS,
    PRESETS,
    BackboneConfig,
    Full3DBlock,
    KernelUnavailableError,
    VideoDiT,
    VideoDiTBlock,
)
from cinemamba_backbone.layers import sincos_2d
from cinemamba_backbone.mixers import BiMamba, TemporalAttention

C, TEXT = 4, 16


def _model(mixer: str = "bimamba", seed: int = 0, **kw) -> VideoDiT:
    """A tiny model whose zero-initialised parameters are perturbed so every path is live."""
    torch.manual_seed(seed)
    cfg = BackboneConfig.from_preset("tiny", in_channels=C, text_dim=TEXT, mixer=mixer, **kw)
    model = VideoDiT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _inputs(b=2, t=5, h=8, w=8, length=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, C, t, h, w, generator=g)
    time = torch.rand(b, generator=g)
    text = torch.randn(b, length, TEXT, generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, 4:] = False
    return x, time, text, mask


@pytest.mark.parametrize("mixer", BLOCK_MIXERS)
def test_tiny_shapes_and_gradients_for_every_mixer(mixer):
    model = _model(mixer)
    x, t, text, mask = _inputs()
    out = model(x, t, text, mask, pooled=torch.randn(2, TEXT))
    assert out.shape == x.shape
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_initialised_model_outputs_zero_and_uses_documented_init():
    torch.manual_seed(0)
    model = VideoDiT(BackboneConfig.from_preset("tiny", in_channels=C, text_dim=TEXT))
    x, t, text, mask = _inputs()
    assert torch.count_nonzero(model(x, t, text, mask)) == 0  # adaLN-zero final layer
    assert "blocks.0.temporal.forward_ssm.A_log" in model.no_weight_decay_names()


@pytest.mark.parametrize("preset", ["S"])
def test_larger_preset_runs(preset):
    cfg = BackboneConfig.from_preset(preset, in_channels=C, text_dim=TEXT, depth=2)
    model = VideoDiT(cfg)
    x, t, text, mask = _inputs(b=1, t=3)
    assert model(x, t, text, mask).shape == x.shape


def test_preset_parameter_counts_match_docs():
    # The same numbers are listed in docs/backbone.md (counted on the meta device).
    expected = {
        "tiny": 394_576,
        "S": 58_110_352,
        "B": 229_168_912,
        "L": 805_321_744,
        "XL": 1_186_541_584,
    }
    with torch.device("meta"):
        counts = {
            name: sum(p.numel() for p in VideoDiT(BackboneConfig.from_preset(name)).parameters())
            for name in PRESETS
        }
    assert counts == expected


def test_hybrid_pattern_builds_the_requested_blocks():
    cfg = BackboneConfig.from_preset(
        "tiny", depth=8, mixer_pattern=["bimamba", "bimamba", "bimamba", "attention"]
    )
    kinds = [type(b.temporal) for b in VideoDiT(cfg).blocks]
    assert kinds == [BiMamba, BiMamba, BiMamba, TemporalAttention] * 2
    cfg = BackboneConfig.from_preset("tiny", depth=3, mixer_pattern=["bimamba", "full3d_causal"])
    blocks = VideoDiT(cfg).blocks
    assert [type(b) for b in blocks] == [VideoDiTBlock, Full3DBlock, VideoDiTBlock]
    assert blocks[1].causal and not VideoDiT(cfg).is_causal  # bimamba blocks see the future


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="bimamba"):
        BackboneConfig(mixer="s4")
    with pytest.raises(ValueError, match="tiny"):
        BackboneConfig.from_preset("XXL")
    path = tmp_path / "c.yaml"
    path.write_text("preset: tiny\nhiden_size: 3\n")
    with pytest.raises(Exception, match="hiden_size"):
        BackboneConfig.from_yaml(path)
    path.write_text("preset: tiny\ndepth: 3\n")
    cfg = BackboneConfig.from_yaml(path, ["text_dim=77"])
    assert (cfg.hidden_size, cfg.depth, cfg.text_dim) == (64, 3, 77)


def test_input_errors_name_the_input():
    model = _model()
    x, t, text, mask = _inputs()
    with pytest.raises(ValueError, match="patch_size"):
        model(x[..., :7], t, text, mask)
    with pytest.raises(ValueError, match="t must be"):
        model(x, torch.rand(2, 3), text, mask)
    with pytest.raises(ValueError, match="text_mask"):
        model(x, t, text, mask[:, :3])


def test_per_frame_time():
    model = _model("mamba")  # causal, so a frame's time can only reach later frames
    x, t, text, mask = _inputs()
    frames = x.shape[2]
    per_frame = t[:, None].expand(-1, frames).contiguous()
    base = model(x, t, text, mask)
    torch.testing.assert_close(model(x, per_frame, text, mask), base, rtol=0, atol=0)
    per_frame[:, 3] = 1.0 - per_frame[:, 3]
    out = model(x, per_frame, text, mask)
    torch.testing.assert_close(out[:, :, :3], base[:, :, :3], rtol=0, atol=1e-6)
    assert (out[:, :, 3] - base[:, :, 3]).abs().max() > 1e-3


def test_text_mask_and_pooled_are_respected():
    model = _model()
    x, t, text, mask = _inputs()
    base = model(x, t, text, mask)
    masked_out = text.clone()
    masked_out[0, 4:] += 5.0  # tokens hidden by the mask of sample 0
    torch.testing.assert_close(model(x, t, masked_out, mask), base, rtol=0, atol=1e-6)
    visible = text.clone()
    visible[0, 1] += 5.0
    assert (model(x, t, visible, mask) - base)[0].abs().max() > 1e-3
    empty = mask.clone()
    empty[1] = False
    assert torch.isfinite(model(x, t, text, empty)).all()
    pooled = torch.randn(2, TEXT)
    assert (model(x, t, text, mask, pooled) - base).abs().max() > 1e-3


@pytest.mark.parametrize("mixer", ["bimamba", "full3d"])
def test_gradient_checkpointing_gives_the_same_gradients(mixer):
    x, t, text, mask = _inputs(b=1, t=3)
    grads = []
    for ckpt in (False, True):
        model = _model(mixer, grad_checkpointing=ckpt)
        model(x, t, text, mask).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_save_load_round_trip_without_kernel_choice(tmp_path):
    model = _model(mixer_pattern=["bimamba", "attention"])
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.yaml",
        "model.safetensors",
    ]
    assert "kernel" not in (tmp_path / "ckpt" / "config.yaml").read_text()
    loaded = VideoDiT.from_pretrained(tmp_path / "ckpt", kernels="torch")
    assert loaded.config == model.config
    x, t, text, mask = _inputs()
    model.set_kernels("torch")  # bit-identical needs the same path ("auto" is the C scan)
    torch.testing.assert_close(loaded(x, t, text, mask), model(x, t, text, mask), rtol=0, atol=0)
    strict = VideoDiT.from_pretrained(tmp_path / "ckpt", require_kernels=True)
    with pytest.raises(KernelUnavailableError):
        strict(x, t, text, mask)
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        VideoDiT.from_pretrained(tmp_path)


def test_position_embedding_interpolates_to_other_sizes():
    big = sincos_2d(32, 16, 16, base_size=16).view(16, 16, 32)
    small = sincos_2d(32, 8, 8, base_size=16).view(8, 8, 32)
    torch.testing.assert_close(small, big[::2, ::2])
    model = _model()
    x, t, text, mask = _inputs(h=16, w=12)
    assert model(x, t, text, mask).shape == x.shape


def test_bf16_forward_backward():
    model = _model().to(torch.bfloat16)
    x, t, text, mask = _inputs()
    out = model(x.bfloat16(), t, text.bfloat16(), mask)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    out.float().mean().backward()


@pytest.mark.parametrize(
    "pattern",
    [["mamba"], ["mamba2"], ["causal_attention", "mamba"], ["full3d_causal", "mamba"]],
)
def test_streaming_chunks_equal_full_forward(pattern):
    model = _model(mixer_pattern=pattern)
    assert model.is_causal
    x, _, text, mask = _inputs(t=7)
    t = torch.rand(2, 7)
    full = model(x, t, text, mask)
    state = model.init_state(2, 8, 8)
    outs = []
    for a, b in [(0, 1), (1, 4), (4, 5), (5, 7)]:
        out, new_state = model.forward_chunk(x[:, :, a:b], t[:, a:b], text, mask, state)
        # Several denoising passes may start from the same state: it is never mutated.
        again, _ = model.forward_chunk(x[:, :, a:b], t[:, a:b], text, mask, state)
        torch.testing.assert_close(again, out, rtol=0, atol=0)
        outs.append(out)
        state = new_state
    assert state.frames == 7
    torch.testing.assert_close(torch.cat(outs, dim=2), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mixer", ["bimamba", "full3d"])
def test_non_causal_model_refuses_to_stream(mixer):
    with pytest.raises(TypeError, match=f"causal.*{mixer}"):
        _model(mixer).init_state(1, 8, 8)


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[3] / "configs" / "backbone"
    paths = sorted(root.glob("*.yaml"))
    assert paths, root
    for path in paths:
        cfg = BackboneConfig.from_yaml(path)
        assert cfg.block_mixers(), path
