"""`cinemamba ablate`: the seed paper's experiment — one small backbone per temporal mixer.

The shared part is the demo's (`cinemamba.apps.demo`): its synthetic set, VAE, latent statistics and
latent export run once, as the demo's own stages, or are taken from an existing demo run
(`vae` + `latents`). Then every mixer trains the demo's backbone experiment with the same
latents, seed and step budget, each in its own `cinemamba train` process so that its wall time
and peak RSS are its own; only the temporal mixer differs. Each trained backbone generates the
same prompts at 1x, 4x and 8x the training length (`frames = 1 + m * (F - 1)` for a training
clip of F frames: m times as many latent frames for the causal VAE), and the ground-truth
detector scores every video overall and per quarter. The same prompts rendered as real
synthetic videos are the ceiling. With a `memory` section (issue 21; `configs/ablation/memory.yaml`),
memory-scene captions are also generated in each of its modes and scored per scene kind and gap
length (`cinemamba.apps.ablate.memory`). With the I3D weights (the eval extra), FVD_16 of every mixer
at every length is computed against real videos of the same length (featurized once, in the
ceiling stage, which runs first), and the drift curve at the longest length. Results: `ablation.json`, and `ablation.md` + `ablation.png` from `cinemamba.apps.ablate.report`.

All stages run through the demo's resumable `StageRunner`: a re-run reuses every finished
stage whose config is unchanged (so adding a mixer trains only that mixer).
"""

from cinemamba.apps.ablate.config import (
    MIB,
    AblationConfig,
    AblationEval,
    check_mixers,
    eval_lengths,
    eval_prompts,
    mixer_pattern,
    slug,
)
from cinemamba.apps.ablate.evaluate import (
    FLOOR_SEED,
    REAL_FEATURES,
    evaluate_ceiling,
    evaluate_mixer,
    evaluate_mixer_memory,
    real_features,
)
from cinemamba.apps.ablate.report import write_report
from cinemamba.apps.ablate.stages import mixer_stages, run_ablation, shared_inputs
from cinemamba.apps.ablate.training import (
    experiment_yaml,
    latent_shapes,
    mixer_experiment,
    train_clip,
    train_mixer,
    train_shapes,
    train_step_memory,
)

__all__ = [
    "AblationConfig",
    "AblationEval",
    "FLOOR_SEED",
    "MIB",
    "REAL_FEATURES",
    "check_mixers",
    "eval_lengths",
    "eval_prompts",
    "evaluate_ceiling",
    "evaluate_mixer",
    "evaluate_mixer_memory",
    "experiment_yaml",
    "latent_shapes",
    "mixer_experiment",
    "mixer_pattern",
    "mixer_stages",
    "real_features",
    "run_ablation",
    "shared_inputs",
    "slug",
    "train_clip",
    "train_mixer",
    "train_shapes",
    "train_step_memory",
    "write_report",
]
