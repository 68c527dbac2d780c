"""LPIPS (the `lpips` package) built strictly from local files, never downloading anything.

`lpips.LPIPS(pretrained=True)` asks torchvision for ImageNet backbone weights, which fetches
them from the internet on first use. Here the backbone is always constructed empty
(`pnet_rand=True`, i.e. torchvision `weights=None`, which never fetches) and then:
- filled from a local torchvision checkpoint (`backbone_weights`, e.g. the file
  `alexnet-owt-7be5be79.pth` that torchvision would have downloaded), or
- left random when `random_backbone=True` (tests only; logged, since the distance is then
  no longer perceptual).
The calibrated linear heads (`lin0..lin4`) ship inside the `lpips` wheel
(`lpips/weights/v0.1/<net>.pth`) and are loaded from there or from `lin_weights`.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

NETS = ("alex", "vgg", "squeeze")


class LPIPSWeightsError(FileNotFoundError):
    """LPIPS was asked for without usable local weights."""


@dataclass
class LPIPSConfig:
    """Perceptual loss / metric settings."""

    weight: float = 0.1  # loss weight; 0 disables the term (and needs no weights)
    net: str = "alex"  # alex | vgg | squeeze
    backbone_weights: str | None = None  # local torchvision ImageNet checkpoint of `net`
    lin_weights: str | None = None  # default: the file shipped in the lpips package
    random_backbone: bool = False  # tests only: random backbone instead of ImageNet weights
    max_frames: int = 4  # frames per clip fed to LPIPS (evenly spaced), to bound its cost


def _package_lin_weights(net: str) -> Path:
    import lpips

    return Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"


def _backbone_state(model, path: Path) -> dict[str, torch.Tensor]:
    """Map a torchvision checkpoint (`features.<i>.*`) onto lpips' `net.slice<k>.<i>.*`."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    where = {}  # torchvision feature index -> lpips slice name
    for slice_name, module in model.net.named_children():
        for idx, _ in module.named_children():
            where[idx] = slice_name
    mapped = {}
    for key, value in state.items():
        if key.startswith("net.slice"):  # already in lpips layout
            mapped[key] = value
            continue
        m = re.match(r"features\.(\d+)\.(.+)", key)
        if m and m.group(1) in where:
            mapped[f"net.{where[m.group(1)]}.{m.group(1)}.{m.group(2)}"] = value
    wanted = {f"net.{k}" for k in model.net.state_dict()}
    missing = sorted(wanted - mapped.keys())
    if missing:
        raise LPIPSWeightsError(
            f"lpips.backbone_weights {str(path)!r} is not a torchvision {model.pnet_type} "
            f"checkpoint: missing {missing[:4]}{' ...' if len(missing) > 4 else ''}"
        )
    return mapped


def build_lpips(cfg: LPIPSConfig) -> torch.nn.Module:
    """An eval-mode, frozen `lpips.LPIPS` from local files; raises LPIPSWeightsError otherwise."""
    if cfg.net not in NETS:
        raise ValueError(f"unknown lpips.net {cfg.net!r}; valid: {', '.join(NETS)}")
    if cfg.backbone_weights is None and not cfg.random_backbone:
        raise LPIPSWeightsError(
            f"LPIPS needs the ImageNet weights of its {cfg.net} backbone, which cannot be "
            "downloaded here. Set lpips.backbone_weights to a local torchvision checkpoint "
            "(e.g. alexnet-owt-7be5be79.pth), or lpips.weight=0 to train without LPIPS, or "
            "lpips.random_backbone=true for tests (not a perceptual metric)."
        )
    if cfg.backbone_weights is not None and not Path(cfg.backbone_weights).is_file():
        raise LPIPSWeightsError(f"lpips.backbone_weights {cfg.backbone_weights!r} does not exist")
    lin_path = Path(cfg.lin_weights) if cfg.lin_weights else _package_lin_weights(cfg.net)
    if not lin_path.is_file():
        raise LPIPSWeightsError(f"LPIPS linear-head weights {str(lin_path)!r} do not exist")

    import lpips

    # pretrained=False: no linear-head load by lpips itself; pnet_rand=True: torchvision is
    # called with weights=None, which constructs the backbone without any network access.
    with warnings.catch_warnings():  # lpips still passes torchvision's deprecated `pretrained`
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(pretrained=False, net=cfg.net, pnet_rand=True, verbose=False)
    lin = torch.load(lin_path, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(lin, strict=False)
    # `lins.<i>` alias the same modules as `lin<i>`, so only `lin<i>` keys must be present.
    if unexpected or any(re.match(r"lin\d", k) for k in missing):
        raise LPIPSWeightsError(f"{str(lin_path)!r} is not an LPIPS v0.1 {cfg.net} head file")
    if cfg.backbone_weights is not None:
        model.load_state_dict(_backbone_state(model, Path(cfg.backbone_weights)), strict=False)
    else:
        log.warning(
            "LPIPS uses a RANDOM %s backbone (lpips.random_backbone=true): the perceptual "
            "term is not perceptual; use only for tests",
            cfg.net,
        )
    model.eval().requires_grad_(False)
    return model
