"""Building blocks of the causal video autoencoder, each streamable along time.

Every temporal operation is causal: a frame only sees itself and earlier frames, and the
missing past before the first frame is the first frame replicated (CogVideoX, Wan). Every
block takes an optional `StreamCache`; with one, a convolution keeps the input frames its
next output still needs, so feeding a video chunk by chunk gives exactly the full-sequence
result. Normalisation and attention never mix frames, which is what makes that possible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor, nn


class StreamCache:
    """Carried state of a chunked (streaming) pass: per-layer past frames and start flags."""

    def __init__(self) -> None:
        self.frames: dict[int, Tensor] = {}
        self.started: set[int] = set()


def _empty_frames(x: Tensor, channels: int, height: int, width: int) -> Tensor:
    """A zero-frame tensor: what a layer returns when a chunk completes none of its outputs."""
    return x.new_empty(x.shape[0], channels, 0, height, width)


class CausalConv3d(nn.Module):
    """3D convolution padded only from the past along time (first frame replicated).

    Spatially it is an ordinary zero-padded convolution, so frames stay independent images.
    With `time_stride > 1` output j sees input frames up to `j * time_stride`, which maps
    `1 + s*k` frames to `1 + k` and keeps the first frame on its own.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int = 3,
        *,
        time_kernel: int | None = None,
        stride: int = 1,
        time_stride: int = 1,
    ) -> None:
        super().__init__()
        self.time_kernel = kernel if time_kernel is None else time_kernel
        self.time_stride = time_stride
        self.kernel, self.stride, self.out_channels = kernel, stride, out_channels
        self.conv = nn.Conv3d(
            in_channels,
            out_channels,
            (self.time_kernel, kernel, kernel),
            stride=(time_stride, stride, stride),
            padding=(0, kernel // 2, kernel // 2),
        )

    def _out_hw(self, h: int, w: int) -> tuple[int, int]:
        pad = self.kernel // 2
        return (
            (h + 2 * pad - self.kernel) // self.stride + 1,
            (w + 2 * pad - self.kernel) // self.stride + 1,
        )

    def window(self, x: Tensor, cache: StreamCache | None = None) -> Tensor | None:
        """The input frames the outputs completed by this chunk read (None if there are none).

        Output j of the window reads frames [j*st, j*st + kt); its "current" frame (the
        newest one it sees) is window frame j*st + kt - 1.
        """
        kt, st = self.time_kernel, self.time_stride
        if kt == 1 and st == 1:
            return x if x.shape[2] > 0 else None
        key = id(self)
        past = cache.frames.get(key) if cache is not None else None
        if past is None:
            if x.shape[2] == 0:
                return None
            # Stream start: the past before frame 0 is frame 0 itself, (kt - 1) times.
            past = x[:, :, :1].expand(-1, -1, kt - 1, -1, -1)
        x = torch.cat([past, x], dim=2)
        n_out = (x.shape[2] - kt) // st + 1 if x.shape[2] >= kt else 0
        if cache is not None:
            # Keep exactly the frames the next output still needs (a copy, so the chunk is freed).
            cache.frames[key] = x[:, :, n_out * st :].clone()
        return x[:, :, : (n_out - 1) * st + kt] if n_out > 0 else None

    def empty(self, x: Tensor) -> Tensor:
        """The zero-frame output for input `x` (a chunk that completes no output)."""
        return _empty_frames(x, self.out_channels, *self._out_hw(*x.shape[3:]))

    def forward(self, x: Tensor, cache: StreamCache | None = None) -> Tensor:
        """(B, C, T, H, W) -> (B, C', T', H', W'); T' counts only outputs complete so far."""
        win = self.window(x, cache)
        return self.empty(x) if win is None else self.conv(win)


def channel_shortcut(x: Tensor, channels: int) -> Tensor:
    """Parameter-free width change: average groups of channels, or repeat each channel.

    The non-learned residual paths of DC-AE / Wan 2.2's AvgDown3D-DupUp3D: they let an
    untrained autoencoder already pass a pooled image through, so training starts from a
    blurry reconstruction instead of the mean colour.
    """
    c = x.shape[1]
    if c == channels:
        return x
    if c % channels == 0:
        return rearrange(x, "b (c g) t h w -> b c g t h w", c=channels).mean(dim=2)
    if channels % c == 0:
        return x.repeat_interleave(channels // c, dim=1)
    raise ValueError(f"no parameter-free shortcut from {c} to {channels} channels")


class FrameNorm(nn.Module):
    """Group norm (or layer norm with `groups=1`) computed per frame, never across time."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        if channels % groups:
            raise ValueError(f"norm_groups={groups} must divide channel count {channels}")
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) -> same shape."""
        b = x.shape[0]
        y = self.norm(rearrange(x, "b c t h w -> (b t) c h w"))
        return rearrange(y, "(b t) c h w -> b c t h w", b=b)


class ResBlock(nn.Module):
    """Pre-norm residual block of two causal 3x3x3 convolutions."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = FrameNorm(in_channels, groups)
        self.conv1 = CausalConv3d(in_channels, out_channels)
        self.norm2 = FrameNorm(out_channels, groups)
        self.conv2 = CausalConv3d(out_channels, out_channels)
        self.skip = (
            CausalConv3d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: Tensor, cache: StreamCache | None = None) -> Tensor:
        """(B, C, T, H, W) -> (B, C', T, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)), cache)
        h = self.conv2(F.silu(self.norm2(h)), cache)
        return self.skip(x) + h


class FrameAttention(nn.Module):
    """Single-head self-attention over the pixels of one frame (no mixing across time)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = FrameNorm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor, cache: StreamCache | None = None) -> Tensor:
        """(B, C, T, H, W) -> same shape; `cache` is unused (attention is per frame)."""
        b, _, _, h, w = x.shape
        y = rearrange(self.norm(x), "b c t h w -> (b t) c h w")
        q, k, v = rearrange(self.qkv(y), "n (three c) h w -> three n (h w) c", three=3)
        y = F.scaled_dot_product_attention(q, k, v)  # (B*T, H*W, C)
        y = self.proj(rearrange(y, "n (h w) c -> n c h w", h=h, w=w))
        return x + rearrange(y, "(b t) c h w -> b c t h w", b=b)


class Downsample(nn.Module):
    """Halve H and W and, when `temporal`, map 1 + 2k frames to 1 + k (one strided conv).

    With `shortcut`, the output adds the current frame of each output average-pooled 2x2.
    """

    def __init__(self, channels: int, *, spatial: bool, temporal: bool, shortcut: bool) -> None:
        super().__init__()
        self.spatial, self.shortcut = spatial, shortcut
        self.conv = CausalConv3d(
            channels,
            channels,
            3,
            stride=2 if spatial else 1,
            time_stride=2 if temporal else 1,
        )

    def forward(self, x: Tensor, cache: StreamCache | None = None) -> Tensor:
        """(B, C, T, H, W) -> (B, C, T', H', W')."""
        win = self.conv.window(x, cache)
        if win is None:
            return self.conv.empty(x)
        y = self.conv.conv(win)
        if self.shortcut:
            current = win[:, :, self.conv.time_kernel - 1 :: self.conv.time_stride]
            if self.spatial:  # 2x2 mean (einops: avg_pool3d has no bf16 CPU kernel)
                current = reduce(current, "b c t (h p) (w q) -> b c t h w", "mean", p=2, q=2)
            y = y + current
        return y


class Upsample(nn.Module):
    """Double H and W (nearest + conv) and, when `temporal`, map 1 + k frames to 1 + 2k.

    Time doubles by depth-to-time: a causal conv makes two frames' worth of channels per
    input frame; latent frame 0 keeps only one of its two, mirroring the encoder. The width
    changes from `in_channels` to `out_channels` before the spatial conv. With `shortcut`,
    each step adds its parameter-free counterpart (channel average, frame and pixel repeat).
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, spatial: bool, temporal: bool, shortcut: bool
    ) -> None:
        super().__init__()
        self.out_channels, self.temporal, self.shortcut = out_channels, temporal, shortcut
        if temporal:
            self.time_conv = CausalConv3d(in_channels, 2 * out_channels)
        elif in_channels != out_channels:
            self.time_conv = CausalConv3d(in_channels, out_channels, 1)
        else:
            self.time_conv = None
        self.conv = CausalConv3d(out_channels, out_channels) if spatial else None

    def forward(self, x: Tensor, cache: StreamCache | None = None) -> Tensor:
        """(B, C, t, h, w) -> (B, C', T, H, W)."""
        if self.time_conv is not None:
            n_in = x.shape[2]
            y = self.time_conv(x, cache)
            skip = channel_shortcut(x, self.out_channels) if self.shortcut else None
            if self.temporal:
                y = rearrange(y, "b (r c) t h w -> b c (t r) h w", r=2)
                if skip is not None:
                    skip = skip.repeat_interleave(2, dim=2)
                if n_in > 0 and not (cache is not None and id(self) in cache.started):
                    # latent frame 0 decodes to one frame only
                    y, skip = y[:, :, 1:], (None if skip is None else skip[:, :, 1:])
                    if cache is not None:
                        cache.started.add(id(self))
            x = y if skip is None else y + skip
        if self.conv is not None:
            if x.shape[2] == 0:
                return _empty_frames(x, x.shape[1], 2 * x.shape[3], 2 * x.shape[4])
            b = x.shape[0]
            up = F.interpolate(rearrange(x, "b c t h w -> (b t) c h w"), scale_factor=2.0)
            up = rearrange(up, "(b t) c h w -> b c t h w", b=b)
            x = self.conv(up, cache) + up if self.shortcut else self.conv(up, cache)
        return x
