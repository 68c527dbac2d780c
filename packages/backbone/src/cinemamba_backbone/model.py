"""VideoDiT: a DiT over video latents, attention within frames and a swappable temporal mixer.

Reads like DiT's ``models.py``: block -> model -> presets. Per-frame timesteps drive the
adaLN-zero modulation, so every latent frame can carry its own noise level (rolling and
streaming generation). SSM mixers get no temporal position embedding (the scan order is the
position, as in arXiv 2403.07711); attention mixers use rotary temporal positions. A block
may instead be a ``Full3DBlock`` (full3d.py: joint attention over all t·h·w tokens).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.checkpoint import checkpoint

from cinemamba_backbone._kernels import check_kernels_arg
from cinemamba_backbone.config import BackboneConfig
from cinemamba_backbone.full3d import FULL3D_BLOCKS, Full3DBlock
from cinemamba_backbone.layers import (
    CrossAttention,
    FinalLayer,
    Mlp,
    SpatialAttention,
    TimestepEmbedder,
    modulate,
    sincos_2d,
    text_mask_or_default,
)
from cinemamba_backbone.mixers import MixerOptions, MixerState, TemporalMixer, build_mixer
from cinemamba_backbone.mixers.base import KernelChoice

CONFIG_NAME = "config.yaml"
WEIGHTS_NAME = "model.safetensors"


class VideoDiTBlock(nn.Module):
    """Spatial attention -> temporal mixer -> text cross-attention -> MLP."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float, mixer: TemporalMixer, qk_norm: bool = True
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SpatialAttention(dim, heads, qk_norm)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.temporal = mixer
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.cross_attn = CrossAttention(dim, heads, qk_norm)
        self.norm4 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio)
        # shift/scale/gate for the spatial, temporal and MLP branches, per frame.
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 9 * dim))

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        state: MixerState | None = None,
        *,
        size: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, MixerState | None]:
        """x (B, t, S, D), c (B, t, D) -> x, and the mixer's new state when streaming.

        ``size`` (the token grid) is unused here; ``Full3DBlock`` takes the same call.
        """
        b, t, s, _ = x.shape
        mods = self.adaLN_modulation(c)[:, :, None].chunk(9, dim=-1)  # each (B, t, 1, D)
        sh1, sc1, g1, sh2, sc2, g2, sh3, sc3, g3 = mods
        h = rearrange(modulate(self.norm1(x), sh1, sc1), "b t s d -> (b t) s d")
        x = x + g1 * rearrange(self.attn(h), "(b t) s d -> b t s d", b=b)
        h = rearrange(modulate(self.norm2(x), sh2, sc2), "b t s d -> (b s) t d")
        if state is None:
            h, new_state = self.temporal(h), None
        else:
            h, new_state = self.temporal.forward_chunk(h, state)
        x = x + g2 * rearrange(h, "(b s) t d -> b t s d", b=b)
        h = rearrange(self.norm3(x), "b t s d -> b (t s) d")
        x = x + rearrange(self.cross_attn(h, text, text_mask), "b (t s) d -> b t s d", t=t)
        x = x + g3 * self.mlp(modulate(self.norm4(x), sh3, sc3))
        return x, new_state

    @property
    def causal(self) -> bool:
        """True when the temporal mixer is causal."""
        return self.temporal.causal

    def init_state(
        self,
        batch: int,
        tokens_per_frame: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> MixerState:
        """The mixer's empty state: one temporal sequence per token of a frame."""
        return self.temporal.init_state(batch * tokens_per_frame, device, dtype)


def build_block(name: str, dim: int, heads: int, mlp_ratio: float, qk_norm: bool,
                opts: MixerOptions) -> nn.Module:  # fmt: skip
    """A full-3D block (``FULL3D_BLOCKS``) or a factorised block with temporal mixer ``name``."""
    if name in FULL3D_BLOCKS:
        return Full3DBlock(dim, heads, mlp_ratio, qk_norm, causal=FULL3D_BLOCKS[name])
    return VideoDiTBlock(dim, heads, mlp_ratio, build_mixer(name, dim, opts), qk_norm)


@dataclass(frozen=True)
class StreamState:
    """Carried state of a causal VideoDiT: one mixer state per block, frames consumed.

    Immutable: ``forward_chunk`` returns a new state and never changes the one passed in, so
    a caller can run several denoising forwards of a chunk from the same state.
    """

    blocks: tuple[MixerState, ...]
    frames: int = 0


class VideoDiT(nn.Module):
    """Text-conditioned video diffusion transformer over latents (B, C, t, h, w)."""

    def __init__(
        self, config: BackboneConfig, *, kernels: str = "auto", require_kernels: bool = False
    ) -> None:
        super().__init__()
        config.validate()
        self.config = config
        dim, p = config.hidden_size, config.patch_size
        self.x_embedder = nn.Conv2d(config.in_channels, dim, p, stride=p)
        self.t_embedder = TimestepEmbedder(dim, scale=config.time_scale)
        self.text_proj = nn.Sequential(
            nn.Linear(config.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.pooled_proj = nn.Sequential(
            nn.Linear(config.text_dim, dim), nn.SiLU(), nn.Linear(dim, dim)
        )
        opts = config.mixer_options()
        self.blocks = nn.ModuleList(
            build_block(name, dim, config.num_heads, config.mlp_ratio, config.qk_norm, opts)
            for name in config.block_mixers()
        )
        self.final_layer = FinalLayer(dim, p, config.in_channels)
        self.initialize_weights()
        self.set_kernels(kernels, require_kernels)

    # ---- setup -------------------------------------------------------------------------
    def initialize_weights(self) -> None:
        """DiT init: xavier linears, zero adaLN modulation and final layer; Mamba's SSM init."""
        mixer_linears = {
            id(m)
            for blk in self.blocks
            if isinstance(blk, VideoDiTBlock)
            for m in blk.temporal.modules()
            if isinstance(m, nn.Linear)
        }
        for m in self.modules():
            if isinstance(m, nn.Linear) and id(m) not in mixer_linears:
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.modules():
            if hasattr(m, "reset_ssm_parameters"):
                m.reset_ssm_parameters()
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for blk in self.blocks:
            # adaLN-zero: every gated branch starts closed; cross-attention output too
            # (PixArt-α), so each block starts as the identity.
            for layer in (blk.adaLN_modulation[-1], blk.cross_attn.proj):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def set_kernels(self, kernels: str = "auto", require_kernels: bool = False) -> None:
        """Runtime kernel choice for every op ("auto" | "torch"); not saved with the weights."""
        check_kernels_arg(kernels)
        for m in self.modules():
            if isinstance(m, KernelChoice):
                m.set_kernels(kernels, require_kernels)

    def no_weight_decay_names(self) -> set[str]:
        """Parameters tagged ``_no_weight_decay`` (SSM A_log, D, dt bias), for the optimizer."""
        return {n for n, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}

    @property
    def is_causal(self) -> bool:
        """True when every block is causal in time, so the model can stream."""
        return all(blk.causal for blk in self.blocks)

    # ---- forward -----------------------------------------------------------------------
    def _embed(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor | None,
        pooled: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Validate inputs; return tokens (B, t, S, D), c (B, t, D), text (B, L, D), mask."""
        cfg = self.config
        if x.dim() != 5 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"x must be (B, {cfg.in_channels}, t, h, w), got {tuple(x.shape)}")
        b, _, frames, h, w = x.shape
        p = cfg.patch_size
        if h % p or w % p:
            raise ValueError(f"x spatial size {h}x{w} is not divisible by patch_size={p}")
        if text.dim() != 3 or text.shape[0] != b or text.shape[2] != cfg.text_dim:
            raise ValueError(f"text must be (B={b}, L, {cfg.text_dim}), got {tuple(text.shape)}")
        if t.dim() == 0 or (t.dim() == 1 and t.shape[0] == b):
            t = t.expand(b)[:, None].expand(b, frames)
        if t.shape != (b, frames):
            raise ValueError(f"t must be (B,) or (B, t)=({b}, {frames}), got {tuple(t.shape)}")
        mask = text_mask_or_default(text, text_mask)
        tokens = self.x_embedder(rearrange(x, "b c t h w -> (b t) c h w"))
        tokens = rearrange(tokens, "(b t) d h w -> b t (h w) d", b=b)
        pos = sincos_2d(cfg.hidden_size, h // p, w // p, cfg.sample_size // p)
        tokens = tokens + pos.to(tokens)
        c = self.t_embedder(t)  # (B, t, D): one conditioning vector per latent frame
        if pooled is not None:
            if pooled.shape != (b, cfg.text_dim):
                raise ValueError(f"pooled must be (B, {cfg.text_dim}), got {tuple(pooled.shape)}")
            c = c + self.pooled_proj(pooled.to(c.dtype))[:, None]
        return tokens, c, self.text_proj(text.to(tokens.dtype)), mask

    def _grid(self, x: torch.Tensor) -> tuple[int, int]:
        """Token grid (h, w) of latents x (B, C, t, h, w)."""
        p = self.config.patch_size
        return x.shape[3] // p, x.shape[4] // p

    def _unpatchify(self, out: torch.Tensor, h: int, w: int) -> torch.Tensor:
        p = self.config.patch_size
        return rearrange(
            out, "b t (h w) (p q c) -> b c t (h p) (w q)", h=h // p, w=w // p, p=p, q=p
        )

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict from latents x (B, C, t, h, w), times t (B,) or (B, t) in [0, 1], text
        tokens (B, L, text_dim) with bool mask (B, L) and optional pooled (B, text_dim)."""
        tokens, c, text_h, mask = self._embed(x, t, text, text_mask, pooled)
        ckpt = self.config.grad_checkpointing and torch.is_grad_enabled()
        size = self._grid(x)
        for blk in self.blocks:
            if ckpt:
                tokens, _ = checkpoint(blk, tokens, c, text_h, mask, use_reentrant=False, size=size)
            else:
                tokens, _ = blk(tokens, c, text_h, mask, size=size)
        return self._unpatchify(self.final_layer(tokens, c), x.shape[3], x.shape[4])

    # ---- streaming ---------------------------------------------------------------------
    def init_state(
        self,
        batch: int,
        height: int,
        width: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> StreamState:
        """Empty streaming state for latents of size (height, width); causal configs only."""
        if not self.is_causal:
            raise TypeError(
                "streaming needs a causal mixer in every block, got "
                f"{self.config.block_mixers()} (causal: mamba, mamba2, causal_attention, "
                "full3d_causal)"
            )
        p = self.config.patch_size
        tokens = (height // p) * (width // p)
        param = next(self.parameters())
        device, dtype = device or param.device, dtype or param.dtype
        return StreamState(
            tuple(blk.init_state(batch, tokens, device, dtype) for blk in self.blocks)
        )

    def forward_chunk(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor | None,
        state: StreamState,
        pooled: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, StreamState]:
        """Run the next frames x (B, C, k, h, w) after the frames ``state`` has consumed.

        Returns (out, new_state); ``state`` is left unchanged. Concatenating the outputs of
        consecutive chunks equals ``forward`` on the whole sequence.
        """
        tokens, c, text_h, mask = self._embed(x, t, text, text_mask, pooled)
        new_states = []
        for blk, blk_state in zip(self.blocks, state.blocks, strict=True):
            tokens, blk_state = blk(tokens, c, text_h, mask, blk_state, size=self._grid(x))
            new_states.append(blk_state)
        out = self._unpatchify(self.final_layer(tokens, c), x.shape[3], x.shape[4])
        return out, StreamState(tuple(new_states), state.frames + x.shape[2])

    # ---- persistence -------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write config.yaml and model.safetensors (each via a temporary name, then rename)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp_cfg = directory / f".{CONFIG_NAME}.tmp"
        tmp_cfg.write_text(self.config.to_yaml())
        tmp_w = directory / f".{WEIGHTS_NAME}.tmp"
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp_w))
        os.replace(tmp_cfg, directory / CONFIG_NAME)
        os.replace(tmp_w, directory / WEIGHTS_NAME)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        *,
        kernels: str = "auto",
        require_kernels: bool = False,
        device: str | torch.device = "cpu",
    ) -> VideoDiT:
        """Rebuild from ``save_pretrained`` output; kernel choice is given here, not loaded."""
        directory = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise FileNotFoundError(
                    f"{directory / name} not found (not a save_pretrained dir?)"
                )
        model = cls(
            BackboneConfig.from_yaml(directory / CONFIG_NAME),
            kernels=kernels,
            require_kernels=require_kernels,
        )
        model.load_state_dict(load_file(str(directory / WEIGHTS_NAME), device=str(device)))
        return model.to(device)
