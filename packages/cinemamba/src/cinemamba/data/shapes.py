"""The embedded set's shapes: star-shaped polygons (and a disc) as vertex tables and an inside
test, shared by the renderers (`synth_video`, `synth_memory`) and the detectors (`eval`)."""

from __future__ import annotations

import math

import numpy as np

from cinemamba.data.synth import SHAPES

# Polygon vertices (angle, radius) in units of size/2; y grows downwards, so -90 deg is "up".
_POLYGONS: dict[str, tuple[np.ndarray, np.ndarray]] = {
    "square": (np.deg2rad([-135, -45, 45, 135]), np.full(4, 1.15)),
    "triangle": (np.deg2rad([-90, 30, 150]), np.full(3, 1.2)),
    "star": (np.deg2rad(-90 + 36 * np.arange(10)), np.tile([1.25, 0.5], 5)),
}
_REACH = {"circle": 1.0, "square": 1.15, "triangle": 1.2, "star": 1.25}
assert set(_REACH) == set(SHAPES)


def shape_inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of points (u, v) (units of size/2, centred) inside a shape."""
    rho = np.hypot(u, v)
    if shape == "circle":
        return rho <= 1.0
    angles, radii = _POLYGONS[shape]
    n = len(angles)
    step = 2 * math.pi / n
    theta = np.arctan2(v, u)
    k = np.floor(np.mod(theta - angles[0], 2 * math.pi) / step).astype(np.int64) % n
    # Ray-edge intersection: boundary radius r = (P1 x P2) / (d x (P2 - P1)).
    p1 = np.stack([radii * np.cos(angles), radii * np.sin(angles)], -1)  # (n, 2)
    p2 = np.roll(p1, -1, axis=0)
    cross12 = p1[:, 0] * p2[:, 1] - p1[:, 1] * p2[:, 0]
    e = p2 - p1
    dx, dy = np.cos(theta), np.sin(theta)
    denom = dx * e[k, 1] - dy * e[k, 0]
    return rho <= cross12[k] / denom
