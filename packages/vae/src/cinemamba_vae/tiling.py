"""Spatial tiling with overlap blending, for frames larger than memory allows.

Approximate by nature: a tile's convolutions see zero padding where the full frame has
neighbours, so results differ from the untiled pass near tile seams (measured error in
docs/vae.md). Each tile is still streamed through time with the exact chunked path.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile start offsets covering [0, length) with at least `overlap` shared between tiles."""
    if tile >= length:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _ramp(n: int, overlap: int, at_start: bool, at_end: bool) -> Tensor:
    """1D blend weights: linear ramps over `overlap` on edges shared with another tile."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    w = torch.ones(n, dtype=torch.float64)
    if overlap > 0 and not at_start:
        w = torch.minimum(w, i / overlap)
    if overlap > 0 and not at_end:
        w = torch.minimum(w, (n - i) / overlap)
    return w


def blend_tiles(
    shape: tuple[int, ...], tiles: list[tuple[int, int, Tensor]], overlap: int
) -> Tensor:
    """Weighted average of (top, left, tile) tensors (..., h, w) into a (..., H, W) canvas."""
    ref = tiles[0][2]
    out = torch.zeros(shape, dtype=ref.dtype, device=ref.device)
    weight = torch.zeros(shape[-2:], dtype=ref.dtype, device=ref.device)
    height, width = shape[-2:]
    for top, left, tile in tiles:
        h, w = tile.shape[-2:]
        wy = _ramp(h, overlap, top == 0, top + h == height)
        wx = _ramp(w, overlap, left == 0, left + w == width)
        win = (wy[:, None] * wx[None, :]).to(ref)  # (h, w)
        out[..., top : top + h, left : left + w] += tile * win
        weight[top : top + h, left : left + w] += win
    return out / weight


def _check_tile(name: str, size: int, overlap: int, unit: int) -> None:
    if size % unit or overlap % unit or not 0 <= overlap < size:
        raise ValueError(
            f"{name}: tile size {size} and overlap {overlap} must be multiples of {unit} "
            "with 0 <= overlap < tile size"
        )


def tiled_encode_moments(
    vae, video: Tensor, *, tile_size: int, overlap: int, chunk_frames: int | None
) -> tuple[Tensor, Tensor]:
    """Posterior moments from overlapping pixel tiles, blended in latent space."""
    s = vae.config.spatial_compression
    _check_tile("encode", tile_size, overlap, s)
    vae._check_video(video)
    height, width = video.shape[-2:]
    tiles = []
    for top in _starts(height, tile_size, overlap):
        for left in _starts(width, tile_size, overlap):
            crop = video[..., top : top + tile_size, left : left + tile_size]
            mean, logvar = vae.encode_moments(crop, chunk_frames=chunk_frames)
            tiles.append((top // s, left // s, torch.cat([mean, logvar], dim=1)))
    b, _, t = tiles[0][2].shape[:3]
    shape = (b, 2 * vae.config.latent_channels, t, height // s, width // s)
    return blend_tiles(shape, tiles, overlap // s).chunk(2, dim=1)


def tiled_decode_raw(
    vae, z: Tensor, *, tile_size: int, overlap: int, chunk_frames: int | None
) -> Tensor:
    """Pixels from overlapping latent tiles (sizes in latent pixels), blended in pixel space."""
    s = vae.config.spatial_compression
    _check_tile("decode", tile_size, overlap, 1)
    height, width = z.shape[-2:]
    tiles = []
    for top in _starts(height, tile_size, overlap):
        for left in _starts(width, tile_size, overlap):
            crop = z[..., top : top + tile_size, left : left + tile_size]
            tiles.append((top * s, left * s, vae.decode_raw(crop, chunk_frames=chunk_frames)))
    b, c, t = tiles[0][2].shape[:3]
    return blend_tiles((b, c, t, height * s, width * s), tiles, overlap * s)
