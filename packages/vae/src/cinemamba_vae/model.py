"""The causal 3D video autoencoder: encoder, decoder, model (config and presets: config.py).

A `1 + s_t*k`-frame video maps to `1 + k` latent frames (s_t the temporal compression); an
image is a 1-frame video. Everything along time is causal, so `encode`/`decode` can stream
through any length in chunks of K frames and give the full-sequence result exactly.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from cinemamba_vae.config import VAEConfig, load_vae_config
from cinemamba_vae.latent_norm import LatentNormalization
from cinemamba_vae.layers import (
    CausalConv3d,
    Downsample,
    FrameAttention,
    FrameNorm,
    ResBlock,
    StreamCache,
    Upsample,
    channel_shortcut,
)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.yaml"
LOGVAR_RANGE = (-30.0, 20.0)  # as in latent diffusion: keeps exp(logvar) finite
LOGVAR_INIT = -6.0  # initial posterior log-variance (sigma ~ 0.05), see initialize_weights


@dataclass
class VAEOutput:
    """What a training forward pass returns (raw, unnormalised latent space)."""

    reconstruction: Tensor  # (B, 3, T, H, W)
    mean: Tensor  # (B, C, t, h, w) posterior mean
    logvar: Tensor  # (B, C, t, h, w) posterior log-variance
    latents: Tensor  # (B, C, t, h, w) the sample that was decoded


class Encoder(nn.Module):
    """Pixels (B, 3, T, H, W) -> posterior moments (B, 2C, t, h, w)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mults]
        self.patch, self.shortcut = cfg.patch_size, cfg.shortcuts
        self.conv_in = CausalConv3d(cfg.in_channels * cfg.patch_size**2, widths[0])
        self.blocks = nn.ModuleList()
        ch = widths[0]
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                self.blocks.append(ResBlock(ch, width, cfg.norm_groups))
                ch = width
            if level < len(widths) - 1:
                self.blocks.append(
                    Downsample(
                        ch,
                        spatial=level < cfg.spatial_levels,
                        temporal=level < cfg.temporal_levels,
                        shortcut=cfg.shortcuts,
                    )
                )
        self.mid = nn.ModuleList([ResBlock(ch, ch, cfg.norm_groups)])
        if cfg.mid_attention:
            self.mid.append(FrameAttention(ch, cfg.norm_groups))
        self.mid.append(ResBlock(ch, ch, cfg.norm_groups))
        self.norm_out = FrameNorm(ch, cfg.norm_groups)
        self.conv_out = CausalConv3d(ch, 2 * cfg.latent_channels)

    def forward(self, x: Tensor, cache: StreamCache | None = None) -> Tensor:
        """Run (a chunk of) a video through; returns the moments completed so far."""
        p = self.patch
        x = rearrange(x, "b c t (h p) (w q) -> b (c p q) t h w", p=p, q=p)
        x = self.conv_in(x, cache)
        for block in [*self.blocks, *self.mid]:
            x = block(x, cache)
        moments = self.conv_out(nn.functional.silu(self.norm_out(x)), cache)
        if self.shortcut and moments.shape[2] > 0:  # stride-1 conv: frames align 1:1
            mean, logvar = moments.chunk(2, dim=1)
            moments = torch.cat([mean + channel_shortcut(x, mean.shape[1]), logvar], dim=1)
        return moments


class Decoder(nn.Module):
    """Latents (B, C, t, h, w) -> pixels (B, 3, T, H, W), mirroring the encoder."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mults]
        ch = widths[-1]
        self.conv_in = CausalConv3d(cfg.latent_channels, ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, cfg.norm_groups)])
        if cfg.mid_attention:
            self.mid.append(FrameAttention(ch, cfg.norm_groups))
        self.mid.append(ResBlock(ch, ch, cfg.norm_groups))
        self.blocks = nn.ModuleList()
        for level in reversed(range(len(widths))):
            for _ in range(cfg.num_res_blocks):
                self.blocks.append(ResBlock(ch, widths[level], cfg.norm_groups))
                ch = widths[level]
            if level > 0:
                # Narrow to the next level's width while upsampling, so the conv at the
                # higher resolution runs at the smaller width.
                self.blocks.append(
                    Upsample(
                        ch,
                        widths[level - 1],
                        spatial=level - 1 < cfg.spatial_levels,
                        temporal=level - 1 < cfg.temporal_levels,
                        shortcut=cfg.shortcuts,
                    )
                )
                ch = widths[level - 1]
        self.norm_out = FrameNorm(ch, cfg.norm_groups)
        self.patch, self.shortcut = cfg.patch_size, cfg.shortcuts
        self.conv_out = CausalConv3d(ch, cfg.in_channels * cfg.patch_size**2)

    def forward(self, z: Tensor, cache: StreamCache | None = None) -> Tensor:
        """Run (a chunk of) latents through; returns the frames completed so far."""
        x = self.conv_in(z, cache)
        if self.shortcut:
            x = x + channel_shortcut(z, x.shape[1])
        for block in [*self.mid, *self.blocks]:
            x = block(x, cache)
        x = self.conv_out(nn.functional.silu(self.norm_out(x)), cache)
        p = self.patch
        return rearrange(x, "b (c p q) t h w -> b c t (h p) (w q)", p=p, q=p)


def _stream(
    net: nn.Module, x: Tensor, chunk_frames: int | None, out_shape: tuple[int, ...]
) -> Tensor:
    """Run `net` over time chunks of `x` with a carried cache, writing into one output.

    The output is allocated once (not concatenated from parts) so that peak memory is the
    result plus one chunk's activations, whatever the video's length.
    """
    if chunk_frames is None:
        return net(x)
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be a positive integer, got {chunk_frames}")
    cache = StreamCache()
    out = x.new_empty(out_shape)
    done = 0
    for start in range(0, x.shape[2], chunk_frames):
        y = net(x[:, :, start : start + chunk_frames], cache)
        out[:, :, done : done + y.shape[2]] = y
        done += y.shape[2]
    if done != out_shape[2]:  # a bug, not a user error: every frame must come out once
        raise RuntimeError(f"streamed {done} frames, expected {out_shape[2]}")
    return out


class VideoAutoencoder(LatentNormalization, nn.Module):
    """Causal 3D VAE with a diagonal Gaussian posterior and owned latent normalisation."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        c = config.latent_channels
        # Per-channel statistics of raw latents; `encode` returns (z - mean) / std.
        self.register_buffer("latent_mean", torch.zeros(c))
        self.register_buffer("latent_std", torch.ones(c))
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """Zero-init residual branches; start the posterior nearly deterministic.

        Every ResBlock starts as the identity (its second conv is zero), so with the shortcuts
        the untrained model is a pooled linear path that training refines. The log-variance
        head starts at LOGVAR_INIT: from logvar = 0 (sigma = 1, as large as the signal) Adam
        needs thousands of steps to shrink the posterior noise before anything beyond the mean
        colour can be learned.
        """
        for m in self.modules():
            if isinstance(m, ResBlock):
                nn.init.zeros_(m.conv2.conv.weight)
                nn.init.zeros_(m.conv2.conv.bias)
        head = self.encoder.conv_out.conv
        c = self.config.latent_channels
        nn.init.zeros_(head.weight[c:])
        nn.init.constant_(head.bias[c:], LOGVAR_INIT)

    # ---------------------------------------------------------------- shapes
    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(t, h, w) of the latents of a `frames` x `height` x `width` video."""
        s, st = self.config.spatial_compression, self.config.temporal_compression
        if frames < 1 or (frames - 1) % st:
            raise ValueError(f"video has {frames} frames; this VAE needs 1 + {st}*k frames")
        if height % s or width % s:
            raise ValueError(f"video size {height}x{width} is not divisible by {s}")
        return 1 + (frames - 1) // st, height // s, width // s

    def _check_video(self, video: Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != self.config.in_channels:
            raise ValueError(f"video must be (B, 3, T, H, W), got shape {tuple(video.shape)}")
        self.latent_shape(*video.shape[2:])

    def _check_latents(self, z: Tensor) -> None:
        if z.ndim != 5 or z.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"latents must be (B, {self.config.latent_channels}, t, h, w), "
                f"got shape {tuple(z.shape)}"
            )

    # ---------------------------------------------------------------- encode
    def encode_moments(
        self, video: Tensor, *, chunk_frames: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance in the raw (unnormalised) latent space."""
        self._check_video(video)
        b, _, t, h, w = video.shape
        out_shape = (b, 2 * self.config.latent_channels, *self.latent_shape(t, h, w))
        moments = _stream(self.encoder, video, chunk_frames, out_shape)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def encode(
        self,
        video: Tensor,
        *,
        sample: bool = True,
        chunk_frames: int | None = None,
        generator: torch.Generator | None = None,
        tile_size: int | None = None,
        tile_overlap: int = 16,
    ) -> Tensor:
        """Pixels (B, 3, T, H, W) in [-1, 1] -> normalised latents (B, C, t, h, w).

        `chunk_frames` streams K pixel frames at a time (exact); `tile_size` additionally
        splits each frame into overlapping tiles of that many pixels (approximate).
        """
        if tile_size is not None:
            from cinemamba_vae.tiling import tiled_encode_moments

            mean, logvar = tiled_encode_moments(
                self, video, tile_size=tile_size, overlap=tile_overlap, chunk_frames=chunk_frames
            )
        else:
            mean, logvar = self.encode_moments(video, chunk_frames=chunk_frames)
        return self.normalized_sample(mean, logvar, sample=sample, generator=generator)

    @torch.no_grad()
    def encode_stream(self, chunks: Iterable[Tensor]) -> Iterator[Tensor]:
        """Consecutive pixel chunks `(B, 3, k, H, W)` of one video -> its normalised
        posterior-mean latents `(B, C, j, h, w)`, yielded as they complete (exact).

        The concatenated output equals `encode(concatenated chunks, sample=False)` on the
        first `1 + s_t*(t-1)` frames (t the latent frames yielded; later frames that complete
        no latent frame are dropped). Only one chunk and the carried cache are held, so the
        caller can feed a video of any length decoded chunk by chunk (latent export).
        """
        cache = StreamCache()
        c = self.config.latent_channels
        for x in chunks:
            if x.ndim != 5 or x.shape[1] != self.config.in_channels:
                raise ValueError(f"video chunk must be (B, 3, k, H, W), got {tuple(x.shape)}")
            self.latent_shape(1, *x.shape[3:])  # frame size divisible by the compression
            moments = self.encoder(x, cache)
            if moments.shape[2] > 0:
                yield self.normalize(moments[:, :c])

    # ---------------------------------------------------------------- decode
    def decode_raw(self, z: Tensor, *, chunk_frames: int | None = None) -> Tensor:
        """Raw latents (B, C, t, h, w) -> pixels (B, 3, T, H, W)."""
        self._check_latents(z)
        b, _, t, h, w = z.shape
        s, st = self.config.spatial_compression, self.config.temporal_compression
        out_shape = (b, self.config.in_channels, 1 + st * (t - 1), h * s, w * s)
        return _stream(self.decoder, z, chunk_frames, out_shape)

    def decode(
        self,
        latents: Tensor,
        *,
        chunk_frames: int | None = None,
        tile_size: int | None = None,
        tile_overlap: int = 4,
    ) -> Tensor:
        """Normalised latents -> pixels; `chunk_frames` counts latent frames per chunk.

        `tile_size` / `tile_overlap` are in latent pixels (approximate, see docs/vae.md).
        """
        self._check_latents(latents)
        z = self.denormalize(latents)
        if tile_size is not None:
            from cinemamba_vae.tiling import tiled_decode_raw

            return tiled_decode_raw(
                self, z, tile_size=tile_size, overlap=tile_overlap, chunk_frames=chunk_frames
            )
        return self.decode_raw(z, chunk_frames=chunk_frames)

    # ---------------------------------------------------------------- training
    def forward(self, video: Tensor, generator: torch.Generator | None = None) -> VAEOutput:
        """Full-sequence encode, sample, decode (training)."""
        mean, logvar = self.encode_moments(video)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + torch.exp(0.5 * logvar) * noise
        return VAEOutput(self.decode_raw(z), mean, logvar, z)

    @property
    def last_layer_weight(self) -> Tensor:
        """Weight of the decoder's output conv (for the GAN's adaptive weight)."""
        return self.decoder.conv_out.conv.weight

    def set_latent_stats(self, mean: Tensor, std: Tensor) -> None:
        """Store per-channel raw-latent statistics used to normalise latents."""
        self.store_latent_stats(mean, std)

    # ---------------------------------------------------------------- save / load
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write `model.safetensors` + `config.yaml` into `directory` (atomically per file)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        for name, write in (
            (WEIGHTS_NAME, lambda p: save_file(state, p, metadata={"format": "pt"})),
            (CONFIG_NAME, lambda p: Path(p).write_text(OmegaConf.to_yaml(self.config))),
        ):
            fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.")
            os.close(fd)
            try:
                write(tmp)
                os.replace(tmp, out / name)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return out

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, *, map_location: str | torch.device = "cpu"
    ) -> VideoAutoencoder:
        """Rebuild a model saved by `save_pretrained`."""
        directory = Path(directory)
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory} has no {name}: not a saved VideoAutoencoder")
        config = load_vae_config(directory / CONFIG_NAME)
        model = cls(config)
        state = load_file(str(directory / WEIGHTS_NAME), device=str(map_location))
        model.load_state_dict(state)
        return model
