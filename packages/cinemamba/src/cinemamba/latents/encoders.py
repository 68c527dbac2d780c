"""The frozen encoders of a latent export and the per-video encode: one raw sample ->
(latents `(C, t, h, w)`, text embedding, caption, metadata).

Latents are the VAE's posterior mean, one video per VAE call (see `cinemamba.latents.export`);
whole videos stream through the VAE in chunks of `chunk_frames` pixel frames.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cinemamba.latents import format as fmt
from cinemamba.latents.clips import (
    ClipConfig,
    SampleError,
    WholeVideo,
    decode_clip,
    decode_whole,
    to_pixels,
)
from cinemamba_conditioning import build_text_encoder
from cinemamba_vae import load_vae

if TYPE_CHECKING:
    from cinemamba.latents.export import ExportConfig

WHOLE_CHUNK = 64  # pixel frames decoded and encoded at a time in whole-video mode (default)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class _Encoders:
    """The frozen VAE and text encoder, with their identities."""

    def __init__(self, cfg: ExportConfig) -> None:
        self.device = _device(cfg.device)
        self.vae = load_vae(cfg.vae).to(self.device).eval()
        self.vae.requires_grad_(False)
        self.vae_identity = fmt.vae_identity(cfg.vae)
        self.text = build_text_encoder(cfg.text_encoder).to(self.device)
        self.chunk_frames = cfg.chunk_frames or None
        # the VAE's own frame rule: 1 + 4k for ours and Wan, 1 + 8k for CogVideoX and LTX
        self.frame_step = getattr(
            self.vae.config, "frame_step", self.vae.config.temporal_compression
        )
        # Per-video clip choice (bucket size) or None. Imported here: `data.buckets` imports
        # the latents package (for `latents.clips`), which imports this module via `export`.
        from cinemamba.data.buckets import export_fit

        self.fit = (
            export_fit(cfg.buckets, self.vae.latent_shape, cfg.patch_size)
            if cfg.buckets.enabled
            else None
        )

    @torch.no_grad()
    def encode(self, video: torch.Tensor, caption: str) -> tuple[torch.Tensor, Any]:
        """Latents `(C, t, h, w)` of one clip `(3, T, H, W)`, and its caption's embedding."""
        latents = self.vae.encode(
            video[None].to(self.device), sample=False, chunk_frames=self.chunk_frames
        )[0]
        return latents, self.text.encode([caption])

    @torch.no_grad()
    def encode_whole(self, video: WholeVideo) -> tuple[torch.Tensor, Any, int]:
        """Latents `(C, t, h, w)` of every frame of `video`, its caption's embedding, and the
        pixel frames encoded (fewer than planned when the video ends before its header says).

        The chunks go through the VAE's `encode_stream`: our VAE and diffusers' Wan hold one
        chunk of pixels at a time (flat memory in length); the other diffusers classes gather
        the chunks for one `encode` call (docs/latents.md).
        """

        def pixels():
            for chunk in video.chunks:
                yield to_pixels(chunk.to(self.device))[None]  # (1, 3, k, H, W)

        parts = [z[0].cpu() for z in self.vae.encode_stream(pixels())]
        if not parts:
            raise SampleError("undecodable", "no frame of the video could be decoded")
        latents = torch.cat(parts, dim=1)
        frames = 1 + self.vae.config.temporal_compression * (latents.shape[1] - 1)
        return latents, self.text.encode([video.caption]), frames


def _encode_sample(
    enc: _Encoders, sample: dict[str, Any], clip: ClipConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, Any, str, dict[str, Any]]:
    """(latents `(C, t, h, w)`, text embedding, caption, metadata) of one raw sample, as
    `clip.start` asks: every frame ("whole") or the first clip ("first").

    The metadata records the latent frames and the pixel frames encoded (`clip.frames`); for a
    whole video also their frame rate (`fps`) and the video's own frame count
    (`source_frames`). Raises SampleError / ValueError for bad input.
    """
    if clip.start == "whole":
        video = decode_whole(sample, clip, rng, frame_step=enc.frame_step,
                             chunk=enc.chunk_frames or WHOLE_CHUNK, fit=enc.fit)  # fmt: skip
        latents, text, frames = enc.encode_whole(video)
        meta = video.meta
        if frames < video.frames:
            # The header promised more frames than the stream holds: keep what was decoded.
            meta.setdefault("warnings", []).append("fewer_frames_than_header")
        meta["clip"]["frames"] = frames
        meta.update(fps=video.fps, source_frames=video.source_frames)
        caption = video.caption
    else:
        pixels, caption, meta = decode_clip(sample, clip, rng, fit=enc.fit)
        latents, text = enc.encode(to_pixels(pixels), caption)
    meta["latent_frames"] = int(latents.shape[1])
    return latents, text, caption, meta
