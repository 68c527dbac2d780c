"""LoRA through peft: which weights train, save/load onto the right base only, merge."""

from __future__ import annotations

import pytest
import torch

from cinemamba_backbone import (
    BackboneConfig,
    LoraSettings,
    VideoDiT,
    add_lora,
    load_lora,
    save_lora,
)
from cinemamba_backbone.lora import weights_hash


def _net(seed: int = 0) -> VideoDiT:
    torch.manual_seed(seed)
    net = VideoDiT(BackboneConfig.from_preset("tiny", mixer="bimamba", in_channels=8, text_dim=16))
    for p in net.parameters():  # adaLN-zero starts as a constant map: make it non-trivial
        torch.nn.init.normal_(p, std=0.05)
    return net


def _inputs() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 3, 4, 4, generator=g)
    return (x, torch.rand(2, generator=g), torch.randn(2, 5, 16, generator=g),
            torch.ones(2, 5, dtype=torch.bool), torch.randn(2, 16, generator=g))  # fmt: skip


def _randomise_adapters(model: torch.nn.Module) -> None:
    # peft starts lora_B at zero (the adapter is a no-op); give it values to test the algebra
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_only_adapters_train_on_the_block_targets() -> None:
    model = add_lora(_net(), LoraSettings(rank=2, targets=["attn.qkv", "temporal.in_proj",
                                                            "mlp.0", "temporal.qkv"]))  # fmt: skip
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    adapted = {n.split(".lora_")[0] for n in trainable}
    # bimamba: in_proj of both directions' ... only names inside blocks; never t_embedder.mlp.0
    assert all(n.startswith("base_model.model.blocks.") for n in adapted)
    assert any(n.endswith("attn.qkv") for n in adapted)
    assert any(n.endswith("mlp.0") for n in adapted)
    assert any(n.endswith("temporal.in_proj") for n in adapted)
    with pytest.raises(ValueError, match="name no linear layer.*valid: adaLN"):
        add_lora(_net(), LoraSettings(rank=2, targets=["nope"]))


def test_merged_equals_unmerged_and_the_base_is_checked(tmp_path) -> None:
    """Merged W + s*B@A against the adapter applied beside W: equal within fp32 rounding."""
    base = _net()
    identity = weights_hash(base)
    model = add_lora(base, LoraSettings(rank=2, alpha=4.0))
    _randomise_adapters(model)
    save_lora(model, tmp_path / "lora", identity)
    save_lora(model, tmp_path / "lora", identity)  # replacing an adapter is fine
    assert not (tmp_path / "lora.partial").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="is not a LoRA adapter"):
        save_lora(model, tmp_path / "other", identity)
    assert (tmp_path / "other" / "keep.txt").is_file()
    args = _inputs()
    with torch.no_grad():
        unmerged = load_lora(_net(), tmp_path / "lora", merge=False).eval()(*args)
        merged_model = load_lora(_net(), tmp_path / "lora", merge=True).eval()
        merged = merged_model(*args)
        plain = _net().eval()(*args)
    assert type(merged_model) is VideoDiT
    assert (unmerged - plain).abs().max() > 1e-3  # the adapter does something
    # rounding of a sum of `hidden` products, a few layers deep, relative to the output scale
    tol = 64 * torch.finfo(torch.float32).eps * float(unmerged.abs().max())
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=tol)
    with pytest.raises(ValueError, match="was trained on base weights sha256-"):
        load_lora(_net(seed=1), tmp_path / "lora")
