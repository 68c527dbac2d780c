"""`cinemamba sample DIR|CONFIG --prompt ... [--frames N --mode ...] --out video.mp4 [key=value]`

DIR is a saved pipeline (`VideoPipeline.save_pretrained`, e.g. a training run's `pipeline/`):
it names its VAE, text encoder, process, solver settings, steps, guidance and clip size, so
nothing else is needed; `key=value` overrides change them (another solver is fine, another
process than the backbone was trained with is an error). CONFIG is a sampling YAML
(configs/sampling/) naming each part separately (random-weight smoke tests). One video per
prompt: mp4, a PNG contact sheet and the prompt in a `.txt` sidecar (what `cinemamba eval
--generated` reads).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cinemamba.config import ConfigError, load_config, to_object
from cinemamba.media import save_video
from cinemamba.pipeline import SampleConfig, build_pipeline, load_saved_pipeline, saved_defaults
from cinemamba_sampling import (
    MODES,
    is_saved_pipeline,
    to_uint8,
)

NAME = "sample"
HELP = "generate videos from text with a trained VAE + backbone (oneshot, rolling or streaming)"
EXAMPLES = """
    cinemamba sample runs/backbone_tiny/pipeline --prompt "a red circle moves up" --frames 65 \\
        --mode rolling --out out/v.mp4
"""
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags override the config's generation defaults; `key=value` overrides any field."""
    parser.add_argument(
        "config", help="a saved pipeline directory, or a sampling YAML (configs/sampling/...)"
    )
    parser.add_argument(
        "--prompt", action="append", required=True, help="text prompt; repeat for several videos"
    )
    parser.add_argument("--frames", type=int, help="pixel frames per video")
    parser.add_argument("--mode", choices=MODES, help="long-video mode")
    parser.add_argument(
        "--out", required=True, help="output .mp4 (several prompts: name_0.mp4, name_1.mp4, ...)"
    )
    parser.add_argument("--steps", type=int, help="solver steps")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale (1 = off)")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--height", type=int, help="pixel height")
    parser.add_argument("--width", type=int, help="pixel width")
    parser.add_argument("--negative-prompt", help="prompt for the unconditional branch")
    parser.add_argument(
        "--lora", help="a LoRA adapter directory (a fine-tuning run's lora/), merged on load"
    )
    # key=value overrides may come anywhere: cli.main hands the ones argparse leaves over
    # (after an option) to this list too.
    parser.add_argument(
        "overrides",
        nargs="*",
        default=[],
        help="key=value config overrides, e.g. pipeline.window=16",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override (repeatable, anywhere)",
    )


def _outputs(out: Path, count: int) -> list[Path]:
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"--out must end in .mp4, got {str(out)!r}")
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(count)]


def run(args: argparse.Namespace) -> int:
    """Generate one video per prompt and write mp4 + contact sheet + prompt files."""
    saved = is_saved_pipeline(args.config)
    if saved:
        cfg = load_config(saved_defaults(args.config), None, [*args.overrides, *args.set])
    else:
        cfg = load_config(SampleConfig, args.config, [*args.overrides, *args.set])
    flags = {
        "frames": args.frames,
        "mode": args.mode,
        "steps": args.steps,
        "guidance": args.guidance,
        "seed": args.seed,
        "height": args.height,
        "width": args.width,
        "negative_prompt": args.negative_prompt,
    }
    for key, value in flags.items():
        if value is not None:
            cfg[key] = value
    cfg: SampleConfig = to_object(cfg)
    if cfg.mode not in MODES:
        raise ConfigError(f"mode {cfg.mode!r} is unknown; valid: {', '.join(MODES)}")
    outputs = _outputs(Path(args.out), len(args.prompt))
    outputs[0].parent.mkdir(parents=True, exist_ok=True)
    pipe = load_saved_pipeline(args.config, cfg) if saved else build_pipeline(cfg)
    if args.lora:
        pipe.load_lora(args.lora)
    video = pipe.generate(
        args.prompt,
        frames=cfg.frames,
        height=cfg.height,
        width=cfg.width,
        steps=cfg.steps,
        guidance=cfg.guidance,
        seed=cfg.seed,
        mode=cfg.mode,
        negative_prompt=cfg.negative_prompt or None,
    )
    for frames, path, prompt in zip(to_uint8(video), outputs, args.prompt, strict=True):
        title = f"{prompt} | {cfg.mode} | {len(frames)} frames | seed {cfg.seed}"
        saved = save_video(path, frames, cfg.fps, title=title)
        path.with_suffix(".txt").write_text(prompt + "\n")  # the sidecar `eval` reads
        log.info("wrote %s (%d frames), %s and its prompt", path, frames.shape[0], saved.sheet)
    return 0
