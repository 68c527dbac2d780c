"""FVD: the Fréchet distance against SciPy in float64, feature statistics, and the I3D
TorchScript path with a tiny stand-in network saved to disk (the real file is never needed)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cinemamba.eval.fvd import (
    DETECTOR_KWARGS,
    FeatureStats,
    I3DFeatures,
    clip_views,
    frechet_distance,
    fvd_between,
    fvd_from_features,
    load_i3d,
)


def scipy_frechet(mu1, s1, mu2, s2) -> float:
    """The textbook formula with scipy.linalg.sqrtm (pytorch-fid / StyleGAN-V style)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(0), np.cov(x, rowvar=False)


@pytest.mark.parametrize(("n", "d"), [(200, 16), (64, 32), (12, 32), (5, 40)])
def test_frechet_matches_scipy_sqrtm(n: int, d: int) -> None:
    """Full-rank (n > d) and rank-deficient (n <= d) covariances of random correlated features."""
    rng = np.random.default_rng(n * 100 + d)
    mix = rng.standard_normal((d, d))
    a = rng.standard_normal((n, d)) @ mix
    b = rng.standard_normal((n + 3, d)) @ mix * 1.3 + 0.5
    mine = frechet_distance(*_stats(a), *_stats(b))
    ref = scipy_frechet(*_stats(a), *_stats(b))
    assert mine == pytest.approx(ref, rel=1e-6, abs=1e-6)


def test_frechet_closed_forms() -> None:
    """Identical Gaussians -> 0; equal covariances -> squared mean distance; diagonal covariances
    -> sum (sqrt(a) - sqrt(b))^2 + |mu1 - mu2|^2."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 8))
    mu, cov = _stats(x)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-9)
    shift = rng.standard_normal(8)
    assert frechet_distance(mu, cov, mu + shift, cov) == pytest.approx(shift @ shift, rel=1e-9)
    va, vb = rng.uniform(0.1, 3, 8), rng.uniform(0.1, 3, 8)
    expected = ((np.sqrt(va) - np.sqrt(vb)) ** 2).sum() + shift @ shift
    assert frechet_distance(mu, np.diag(va), mu + shift, np.diag(vb)) == pytest.approx(expected)
    # Rank-one covariances along the same axis: sqrt(S1 S2) = sqrt(a b) e e^T.
    e = np.zeros(8)
    e[2] = 1
    assert frechet_distance(mu, 4 * np.outer(e, e), mu, 9 * np.outer(e, e)) == pytest.approx(1.0)


def test_frechet_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_feature_stats_streaming_equals_numpy() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((37, 6)) * 3 + 10  # an offset mean stresses the one-pass formula
    stats = FeatureStats()
    for chunk in np.array_split(x, 5):
        stats.add(chunk)
    mu, cov = stats.mean_cov()
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        one = FeatureStats()
        one.add(x[:1])
        one.mean_cov()
    with pytest.raises(ValueError, match="width changed"):
        stats.add(np.zeros((2, 7)))
    assert fvd_from_features(x, x) == pytest.approx(0.0, abs=1e-7)


class StandInI3D(nn.Module):
    """A tiny network with the StyleGAN-V I3D TorchScript call signature and conventions."""

    def __init__(self, dim: int = 12) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, dim, kernel_size=3, stride=(1, 2, 2), padding=1)
        self.head = nn.Linear(dim, dim)

    def forward(
        self, x: Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> Tensor:
        if x.dtype != torch.uint8:
            raise RuntimeError("the stand-in expects uint8 videos")
        y = x.float()
        if rescale:
            y = y / 127.5 - 1.0
        if resize:
            y = F.interpolate(y, size=(y.shape[2], 32, 32), mode="trilinear", align_corners=False)
        feats = torch.relu(self.conv(y)).mean(dim=(2, 3, 4))
        logits = self.head(feats)
        if return_features:
            return logits
        return torch.softmax(logits, dim=-1)


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> tuple[StandInI3D, str]:
    torch.manual_seed(0)
    net = StandInI3D().eval()
    path = tmp_path_factory.mktemp("i3d") / "i3d_torchscript.pt"
    torch.jit.script(net).save(str(path))
    return net, str(path)


def test_i3d_loaded_from_torchscript_follows_the_calling_convention(standin) -> None:
    net, path = standin
    feats = I3DFeatures.from_file(path)
    rng = np.random.default_rng(2)
    videos = rng.integers(0, 256, size=(2, 5, 20, 24, 3), dtype=np.uint8)  # (B, T, H, W, 3)
    got = feats(videos)
    assert got.dtype == np.float64 and got.shape == (2, 12)
    # Reference: the eager module on (B, 3, T, H, W) uint8 with the documented keyword arguments.
    x = torch.from_numpy(videos).permute(0, 4, 1, 2, 3).contiguous()
    with torch.no_grad():
        want = net(x, **DETECTOR_KWARGS).double().numpy()
        softmax = net(x).double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, softmax)  # features, not class probabilities
    with pytest.raises(ValueError, match="uint8"):
        feats(videos.astype(np.float32))


def test_missing_or_bad_i3d_file_names_the_path(tmp_path) -> None:
    missing = tmp_path / "nowhere" / "i3d_torchscript.pt"
    with pytest.raises(FileNotFoundError, match="nowhere/i3d_torchscript.pt"):
        load_i3d(missing)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="bad.pt"):
        load_i3d(bad)


def test_fvd_between_clip_lengths_and_ordering(standin) -> None:
    """Same distribution scores lower than a shifted one; short videos are counted, not used."""
    _, path = standin
    feats = I3DFeatures.from_file(path)
    rng = np.random.default_rng(3)

    def videos(n: int, lo: int, hi: int, frames: int = 18) -> list[np.ndarray]:
        return [rng.integers(lo, hi, size=(frames, 16, 16, 3), dtype=np.uint8) for _ in range(n)]

    real = videos(6, 0, 200)
    same = videos(6, 0, 200)
    other = videos(6, 100, 256) + [rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)]
    near = fvd_between(feats, real, same)
    far = fvd_between(feats, real, other)
    assert set(near) == {"fvd16", "fvd_full"}
    assert near["fvd16"]["real_clips"] == 6 and near["fvd_full"]["fake_clips"] == 6
    assert far["fvd16"]["fake_clips"] == 6 and far["fvd16"]["too_short"] == 1
    assert far["fvd_full"]["fake_clips"] == 7
    for name in ("fvd16", "fvd_full"):
        assert 0 <= near[name]["fvd"] < far[name]["fvd"]
    # With one clip per side there is no covariance: None, not a crash.
    assert fvd_between(feats, real[:1], same[:1])["fvd16"]["fvd"] is None


def test_clip_views() -> None:
    v = np.zeros((20, 4, 4, 3), np.uint8)
    assert clip_views(v, 16).shape[0] == 16
    assert clip_views(v, None).shape[0] == 20
    assert clip_views(v[:10], 16) is None
