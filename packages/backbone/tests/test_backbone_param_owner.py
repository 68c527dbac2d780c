"""Every parameter is read inside its own module's forward, for every mixer and the model.

Engines that partition parameters per module (DeepSpeed ZeRO-3, FSDP) gather a module's
parameters in its forward hooks. A parameter read elsewhere (a parent reading
`conv1d.weight`, a core called as a method instead of through `__call__`) falls back on
ZeRO-3's lazy "external parameter" registration, which only fires when the parameter happens
not to be gathered: after a checkpoint load it was, the trace recorded in the first resumed
step missed it, and the second step crashed (issue 14). This test watches every parameter
read during a forward and a backward and names the reads made outside the owner's forward.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from cinemamba_backbone import BackboneConfig, VideoDiT
from cinemamba_backbone.mixers import TEMPORAL_MIXERS, MixerOptions, build_mixer


class _Watched(OrderedDict):
    """A module's `_parameters` that reports each read to the watcher."""

    def __init__(self, owner: nn.Module, items, reads: list) -> None:
        super().__init__(items)
        self.owner, self.reads = owner, reads

    def __getitem__(self, key):
        self.reads.append((self.owner, key))
        return super().__getitem__(key)


def _foreign_reads(model: nn.Module, run) -> list[str]:
    """Run `run()` with every parameter read recorded against the module whose forward is on
    top of the call stack; return the reads whose owner is not that module."""
    names = {m: n or "<root>" for n, m in model.named_modules()}
    stack: list[nn.Module] = []
    bad: list[str] = []
    reads: list = []

    def pre(module, args):
        stack.append(module)

    def post(module, args, out):
        stack.pop()

    handles = []
    for m in model.modules():
        m._parameters = _Watched(m, m._parameters, reads)
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    try:
        original = _Watched.__getitem__

        def getitem(self, key):
            if stack and stack[-1] is not self.owner:
                bad.append(f"{names[self.owner]}.{key} read in {names[stack[-1]]}.forward")
            return original(self, key)

        _Watched.__getitem__ = getitem  # type: ignore[method-assign]
        run()
    finally:
        _Watched.__getitem__ = original  # type: ignore[method-assign]
        for h in handles:
            h.remove()
        for m in model.modules():
            m._parameters = OrderedDict(m._parameters)
    return sorted(set(bad))


@pytest.mark.parametrize("name", sorted(TEMPORAL_MIXERS))
def test_mixer_reads_parameters_only_in_their_owners_forward(name: str) -> None:
    """Each registered mixer, forward and backward, on the default (PyTorch/C) path."""
    torch.manual_seed(0)
    mixer = build_mixer(name, 32, MixerOptions(heads=2, headdim=16, chunk_size=4))
    x = torch.randn(3, 7, 32, requires_grad=True)
    assert _foreign_reads(mixer, lambda: mixer(x).square().sum().backward()) == []


@pytest.mark.parametrize("mixer", ["bimamba", "mamba2", "full3d_causal"])
def test_video_dit_reads_parameters_only_in_their_owners_forward(mixer: str) -> None:
    """The whole VideoDiT (embedders, blocks, final layer) under training."""
    torch.manual_seed(0)
    cfg = BackboneConfig(in_channels=4, patch_size=2, hidden_size=32, depth=1, num_heads=2,
                         text_dim=16, mixer=mixer, ssd_headdim=16, sample_size=8)  # fmt: skip
    model = VideoDiT(cfg)
    x, t = torch.randn(2, 4, 3, 8, 8), torch.rand(2)
    text, pooled = torch.randn(2, 5, 16), torch.randn(2, 16)

    def run() -> None:
        model(x, t, text, None, pooled).square().sum().backward()

    assert _foreign_reads(model, run) == []
