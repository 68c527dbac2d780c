"""Exponential moving average of a model's weights, correct under every ZeRO stage.

The EMA is a full fp32 copy of the parameters on every rank (identical everywhere, since the
weights it follows are). Under ZeRO-3 the parameters are gathered a chunk at a time to update
it; under bf16 it follows DeepSpeed's fp32 master weights, not the rounded bf16 copies.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

_CHUNK_NUMEL = 1 << 26  # gather at most ~64M parameters at a time under ZeRO-3


def _chunks(params: list[tuple[str, nn.Parameter]]) -> Iterator[list[tuple[str, nn.Parameter]]]:
    chunk: list[tuple[str, nn.Parameter]] = []
    size = 0
    for name, p in params:
        chunk.append((name, p))
        size += int(getattr(p, "ds_numel", p.numel()))
        if size >= _CHUNK_NUMEL:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _gathered(params: list[nn.Parameter], modify: bool = False):
    """Full parameters inside the block (ZeRO-3); a no-op for other stages."""
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0 if modify else None)


def full_fp32(params: list[nn.Parameter], master: bool) -> list[torch.Tensor]:
    """Full fp32 values of `params` on every rank; collective under ZeRO-3 (call on all ranks).

    `master` reads DeepSpeed's fp32 master weights (bf16 runs); else the module weights.
    """
    if master:
        from deepspeed.utils import safe_get_full_fp32_param

        out = [safe_get_full_fp32_param(p) for p in params]
        if all(v is not None for v in out):
            return [v.detach().float().clone() for v in out]  # type: ignore[union-attr]
    with _gathered(params):
        return [p.detach().float().clone() for p in params]


class EMA:
    """`ema = decay * ema + (1 - decay) * weights` after every `every`-th optimizer step."""

    def __init__(self, module: nn.Module, decay: float, master: bool = False) -> None:
        self.module = module
        self.decay = decay
        self.master = master
        self.params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.shadow: dict[str, torch.Tensor] = {}
        for chunk in _chunks(self.params):
            values = full_fp32([p for _, p in chunk], master)
            self.shadow.update({n: v for (n, _), v in zip(chunk, values, strict=True)})

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current weights into the average (collective under ZeRO-3)."""
        for chunk in _chunks(self.params):
            values = full_fp32([p for _, p in chunk], self.master)
            for (name, _), value in zip(chunk, values, strict=True):
                self.shadow[name].lerp_(value.to(self.shadow[name].device), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """EMA parameters plus the module's current buffers: a loadable fp32 state dict."""
        state = {n: v.detach().cpu().contiguous() for n, v in self.shadow.items()}
        for name, buf in self.module.named_buffers():
            if buf is not None and name not in state:
                state[name] = buf.detach().cpu().contiguous()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the average from `state_dict()` output; missing parameters are an error."""
        missing = [n for n in self.shadow if n not in state]
        if missing:
            raise KeyError(f"EMA state lacks parameters {missing[:5]}")
        for name in self.shadow:
            self.shadow[name].copy_(state[name])

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Run the block with the EMA weights in the module, then put the trained ones back.

        The trained values are kept on the CPU, a chunk gathered at a time under ZeRO-3.
        """
        chunks = list(_chunks(self.params))
        saved: list[list[torch.Tensor]] = []
        for chunk in chunks:
            params = [p for _, p in chunk]
            with _gathered(params, modify=True), torch.no_grad():
                saved.append([p.detach().to("cpu", copy=True) for p in params])
                for name, p in chunk:
                    p.data.copy_(self.shadow[name].to(p.device, p.dtype))
        try:
            yield
        finally:
            for chunk, values in zip(chunks, saved, strict=True):
                params = [p for _, p in chunk]
                with _gathered(params, modify=True), torch.no_grad():
                    for p, value in zip(params, values, strict=True):
                        p.data.copy_(value.to(p.device))
