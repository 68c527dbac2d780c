"""The classical detector behind the ground-truth scores (`cinemamba.eval.groundtruth`): the
objects of each frame of a synthetic-set video, with colour, position and shape, no network.

Detection, per frame:

1. **Colour segmentation, saturation-aware.** Each pixel's chroma (RGB minus its grey
   component) is compared with the chroma of the palette colours (`data.synth.COLOURS`): the
   nearest hue gives the colour, the projection onto it gives a soft opacity `alpha` (an object
   blended with a grey background at opacity a has chroma a * palette chroma, whatever the
   grey). Backgrounds are low-saturation greys (alpha < 0.1), so textures do not register.
2. **Connected components** of `alpha >= 0.5` per colour (8-connected), merged across opposite
   frame edges, since linear motions wrap around on a torus.
3. **Shape descriptors** of a component, over its alpha map dilated by a few pixels so blurred
   edges are included: the rotation-invariant complex moments `I_n = |sum w z^n| / m^(1+n/2)`
   (z the offset from the centroid, m the mass). An n-fold symmetric shape has `I_k = 0` unless
   n divides k, so I3, I4 and I5 single out the triangle, the square and the star, and a disc has
   none. These moments are unchanged by any isotropic blur that conserves mass (the tiny VAE's
   blur, Flusser & Suk's blur invariants), which is why they are used rather than contour
   features; fill ratio, convex-hull solidity and compactness are reported alongside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import ConvexHull, QhullError

from cinemamba.data.synth import COLOUR_NAMES, COLOURS, SHAPES

CORE_ALPHA = 0.5  # a pixel belongs to an object above this opacity
SOFT_ALPHA = 0.05  # opacity below this is background noise in the moment sums
DILATE = 2  # pixels of blurred edge included in the moments (plus a quarter of the object size)
BACKGROUND_ALPHA = 0.25  # a frame's median chroma is its background tint if it is this faint
MIN_AREA_FRACTION = 0.002  # a component smaller than this share of the frame is noise
REL_AREA = 0.25  # ... or smaller than this share of the largest component of its colour
HARMONICS = (3, 4, 5)

_PALETTE = np.array([COLOURS[c] for c in COLOUR_NAMES], np.float64)  # (K, 3)
_PALETTE_CHROMA = _PALETTE - _PALETTE.mean(1, keepdims=True)
_PALETTE_NORM2 = (_PALETTE_CHROMA**2).sum(1)  # (K,)


# --------------------------------------------------------------------------- segmentation


def colour_maps(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: nearest palette colour index `(T, H, W)` and its soft opacity `(T, H, W)`."""
    rgb = frames.astype(np.float32)
    chroma = rgb - rgb.mean(-1, keepdims=True)  # (T, H, W, 3), grey removed
    # Remove the background's tint (objects cover a small part of a frame, so the median pixel
    # is background) unless the frame is mostly saturated: then there is no grey background.
    tint = np.median(chroma.reshape(len(chroma), -1, 3), axis=1)  # (T, 3)
    faint = np.abs(tint @ _PALETTE_CHROMA.T / _PALETTE_NORM2).max(1) < BACKGROUND_ALPHA
    chroma -= np.where(faint[:, None], tint, 0.0)[:, None, None, :].astype(np.float32)
    proj = chroma @ _PALETTE_CHROMA.T.astype(np.float32)  # (T, H, W, K)
    # Nearest hue = largest cosine; the norm of the pixel chroma is common to all colours.
    label = np.argmax(proj / np.sqrt(_PALETTE_NORM2).astype(np.float32), axis=-1)
    alpha = np.take_along_axis(proj, label[..., None], -1)[..., 0] / _PALETTE_NORM2[label]
    return label, alpha.astype(np.float32)


def _torus_labels(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a `(T, H, W)` mask per frame, joined across opposite edges."""
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True  # no connection across time
    lab, n = ndimage.label(mask, structure=structure)
    if n == 0:
        return lab, 0
    pairs = []
    for a, b in ((lab[:, :, 0], lab[:, :, -1]), (lab[:, 0, :], lab[:, -1, :])):
        for shift in (-1, 0, 1):  # 8-connectivity across the seam
            bb = np.roll(b, shift, axis=1)
            both = (a > 0) & (bb > 0)
            pairs.append(np.stack([a[both], bb[both]]))
    edges = np.concatenate(pairs, axis=1)
    if edges.shape[1] == 0:
        return lab, n
    graph = coo_matrix((np.ones(edges.shape[1]), (edges[0], edges[1])), shape=(n + 1, n + 1))
    _, root = connected_components(graph, directed=False)
    # Renumber so that background stays 0 and merged labels share one id.
    _, root = np.unique(root, return_inverse=True)
    root = root - root[0]
    return root[lab], int(root.max())


@dataclass
class Blob:
    """One detected object in one frame."""

    colour: str
    area: int  # core pixels (alpha >= CORE_ALPHA)
    mass: float  # sum of alpha over the core and its blurred edge
    x: float  # centroid, torus-aware, in [0, width)
    y: float
    rgb: tuple[float, float, float]  # mean colour of the core pixels
    shape: str = ""
    descriptors: dict[str, float] = field(default_factory=dict)


@lru_cache(maxsize=1)
def _reference_moments() -> dict[str, np.ndarray]:
    """I3, I4, I5 of each ideal shape, from a high-resolution rendering."""
    from cinemamba.data.shapes import shape_inside

    n = 240
    yy, xx = np.mgrid[0:n, 0:n] + 0.5 - n / 2
    out = {}
    for shape in SHAPES:
        w = shape_inside(shape, xx / (n / 8), yy / (n / 8)).astype(np.float64)
        out[shape] = _moments(w, xx, yy)
    return out


def _moments(w: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Blur- and rotation-invariant `I_n` for n in HARMONICS (weights w at offsets dx, dy)."""
    m = w.sum()
    cx, cy = (w * dx).sum() / m, (w * dy).sum() / m
    z = (dx - cx) + 1j * (dy - cy)
    return np.array([abs((w * z**n).sum()) / m ** (1 + n / 2) for n in HARMONICS])


def classify_shape(moments: np.ndarray) -> str:
    """The shape whose ideal `(I3, I4, I5)` is nearest, each harmonic scaled by its largest value.

    I4 counts a quarter: the pixel grid and H.264's 2x2 chroma subsampling are 4-fold symmetric
    themselves and add I4 to every small shape, the more the smaller the shape.
    """
    ref = _reference_moments()
    scale = np.max(np.stack(list(ref.values())), axis=0)  # (3,)
    weight = np.array([1.0, 0.25, 1.0])
    dist = {s: float((weight * ((moments - r) / scale) ** 2).sum()) for s, r in ref.items()}
    return min(dist, key=dist.get)


def _blob(
    comp: np.ndarray, weights: np.ndarray, frame: np.ndarray, colour: int, shape: bool
) -> Blob:
    """Centroid, colour and (when `shape`) shape descriptors of one component of one frame."""
    h, w = comp.shape
    ys, xs = np.nonzero(comp)
    # Blurred edges reach beyond the core: include them, as the moments need all the mass.
    reach = DILATE + round(0.25 * math.sqrt(len(xs)))
    region = ndimage.maximum_filter(comp, size=2 * reach + 1, mode="wrap") if shape else comp
    ry, rx = np.nonzero(region)
    wt = weights[ry, rx].astype(np.float64)
    wt = np.where(wt < SOFT_ALPHA, 0.0, np.minimum(wt, 1.0))
    wt[comp[ry, rx]] = np.maximum(wt[comp[ry, rx]], CORE_ALPHA)
    # Circular mean on the torus, then offsets unwrapped around it.
    cx = _circular_mean(rx, wt, w)
    cy = _circular_mean(ry, wt, h)
    dx, dy = _unwrap(rx - cx, w), _unwrap(ry - cy, h)
    m = wt.sum()
    cx, cy = (cx + (wt * dx).sum() / m) % w, (cy + (wt * dy).sum() / m) % h
    rgb = frame[ys, xs].astype(np.float64).mean(0)
    # Pixel i covers [i, i + 1): its centre is i + 0.5 (the renderer's convention).
    blob = Blob(COLOUR_NAMES[colour], len(xs), float(m), (cx + 0.5) % w, (cy + 0.5) % h, tuple(rgb))
    if shape:
        moments = _moments(wt, dx, dy)
        blob.shape = classify_shape(moments)
        blob.descriptors = _descriptors(_unwrap(xs - cx, w), _unwrap(ys - cy, h), wt, dx, dy)
        blob.descriptors.update(
            {f"I{n}": float(v) for n, v in zip(HARMONICS, moments, strict=True)}
        )
    return blob


def _circular_mean(p: np.ndarray, w: np.ndarray, period: int) -> float:
    angle = 2 * np.pi * p / period
    return (
        float(
            np.arctan2((w * np.sin(angle)).sum(), (w * np.cos(angle)).sum()) * period / (2 * np.pi)
        )
        % period
    )


def _unwrap(d: np.ndarray, period: float) -> np.ndarray:
    """Differences folded into [-period/2, period/2)."""
    return np.mod(d + period / 2, period) - period / 2


def _descriptors(xs, ys, wt, dx, dy) -> dict[str, float]:
    """Classical contour-free descriptors of a core mask (unwrapped pixel offsets xs, ys)."""
    area = len(xs)
    bbox = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
    corners = np.concatenate(
        [np.stack([xs + a, ys + b], 1) for a in (-0.5, 0.5) for b in (-0.5, 0.5)]
    )
    try:
        hull = ConvexHull(corners).volume  # area in 2-D
    except QhullError:
        hull = float(area)
    m = wt.sum()
    second = (wt * ((dx - (wt * dx).sum() / m) ** 2 + (dy - (wt * dy).sum() / m) ** 2)).sum()
    return {
        "fill": float(area / bbox),
        "solidity": float(area / hull),
        "compactness": float(m**2 / (2 * np.pi * second)) if second > 0 else 1.0,  # 1 = disc
    }


# ------------------------------------------------------------------------------- detection


def detect(frames: np.ndarray) -> list[list[Blob]]:
    """Objects in each frame of uint8 `(T, H, W, 3)`: significant components, largest first.

    The largest component of each colour in a frame carries its shape and descriptors.
    """
    frames = _check_frames(frames)
    t, h, w, _ = frames.shape
    label, alpha = colour_maps(frames)
    core = alpha >= CORE_ALPHA
    min_area = max(3.0, MIN_AREA_FRACTION * h * w)
    out: list[list[Blob]] = [[] for _ in range(t)]
    for k in np.unique(label[core]):
        comps, n = _torus_labels(core & (label == k))
        if n == 0:
            continue
        area = np.bincount(comps.ravel(), minlength=n + 1)[1:]  # (n,)
        frame_of = ndimage.maximum(
            np.broadcast_to(np.arange(t)[:, None, None], comps.shape), comps, np.arange(1, n + 1)
        )
        weights = np.where(label == k, alpha, 0.0)
        for f in np.unique(frame_of).astype(int):
            ids = np.flatnonzero(frame_of == f)
            ids = ids[np.argsort(-area[ids], kind="stable")]
            keep = ids[area[ids] >= max(min_area, REL_AREA * area[ids[0]])]
            for rank, i in enumerate(keep):
                out[f].append(_blob(comps[f] == i + 1, weights[f], frames[f], int(k), rank == 0))
    for blobs in out:
        blobs.sort(key=lambda b: -b.area)
    return out


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if frames.shape[0] == 0:
        raise ValueError("frames is empty: a video needs at least one frame to be scored")
    return frames
