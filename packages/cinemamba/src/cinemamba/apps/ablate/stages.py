"""The ablation's resumable stages (the demo's shared inputs, then train and evaluate per
mixer) and `run_ablation`."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from cinemamba.apps.ablate.config import AblationConfig, check_mixers, slug
from cinemamba.apps.ablate.evaluate import (
    REAL_FEATURES,
    evaluate_ceiling,
    evaluate_mixer,
    evaluate_mixer_memory,
)
from cinemamba.apps.ablate.memory import (
    MEMORY_FILE,
    ceiling_rows,
)
from cinemamba.apps.ablate.report import write_report
from cinemamba.apps.ablate.training import mixer_experiment, train_clip, train_mixer
from cinemamba.apps.demo.config import DemoConfig, load_demo_config, plain
from cinemamba.apps.demo.runner import Stage, StageRunner, write_json
from cinemamba.apps.demo.stages import LATENTS_DIR, VAE_DIR
from cinemamba.config import ConfigError
from cinemamba.eval.compare import (
    i3d_available,
    optional_features,
)
from cinemamba.eval.run import Scorer, default_scorer
from cinemamba_vae import load_vae

log = logging.getLogger(__name__)


def shared_inputs(cfg: AblationConfig, demo: DemoConfig, fresh: bool = False) -> dict[str, Any]:
    """The VAE and latent directories every mixer uses, and what identifies them.

    Either the given `vae` + `latents`, or the demo's own data / VAE / latent stages, run (or
    reused: same config hash) under `shared_out` (default `out`). Pointing `shared_out` at a
    demo run with the same demo config reuses that run's finished stages.
    """
    if bool(cfg.vae) != bool(cfg.latents):
        raise ConfigError("give both `vae` and `latents` (an existing run) or neither")
    if cfg.vae:
        for key in ("vae", "latents"):
            if not Path(getattr(cfg, key)).is_dir():
                raise ConfigError(f"ablation `{key}`={getattr(cfg, key)!r} is not a directory")
        vae, latents = Path(cfg.vae).resolve(), Path(cfg.latents).resolve()
        return {
            "vae": vae,
            "latents": latents,
            "identity": {"vae": str(vae), "latents": str(latents)},
        }
    from cinemamba.apps.demo.stages import export_stage, synth_stage, vae_stage, vae_stats_stage

    stages = [synth_stage(demo), vae_stage(demo), vae_stats_stage(demo), export_stage(demo)]
    runner = StageRunner(cfg.shared_out or cfg.out, stages, fresh=fresh, label="ablate shared")
    runner.run()
    return {
        "vae": runner.directory("vae-stats") / VAE_DIR,
        "latents": runner.directory("export") / LATENTS_DIR,
        "identity": {"export": runner.hashes["export"]},  # covers data, VAE and stats too
    }


def mixer_stages(cfg: AblationConfig, demo: DemoConfig, shared: Mapping[str, Any],
                 scorer: Scorer, features=None) -> list[Stage]:  # fmt: skip
    """The real-video ceiling (and real FVD features) first, then one train and one eval stage
    per mixer. `features()` returns (the I3D, None) or (None, why): called only when a stage
    that needs it runs."""
    check_mixers(cfg)
    vae, latents, identity = shared["vae"], shared["latents"], dict(shared["identity"])
    features = features or (lambda: (None, "no I3D"))
    # Installing the eval extra changes these hashes: ceiling and eval stages then rerun.
    fvd_on = {"fvd_available": cfg.eval.fvd and i3d_available(cfg.eval.i3d)}

    # The memory section is hashed only when used: ablations without it keep their hashes.
    memory_on = {"memory": asdict(cfg.memory)} if cfg.memory.prompts else {}

    def ceiling_run(work: Path, inputs: Mapping[str, Path]) -> dict:
        shared_vae = load_vae(vae).eval()
        frames0, _, _ = train_clip(latents, demo.backbone.task.data.latent_frames, shared_vae)
        i3d = features()[0] if fvd_on["fvd_available"] else None
        result = evaluate_ceiling(cfg, demo, frames0, scorer, i3d, work)
        write_json(work / "eval.json", result)
        if cfg.memory.prompts:
            write_json(work / MEMORY_FILE, ceiling_rows(cfg.memory, demo.data.scene(), frames0,
                                                          shared_vae, seed=cfg.eval.seed))  # fmt: skip
        return {"lengths": list(result)}

    stages: list[Stage] = [Stage("ceiling", ceiling_run,
                                 {"eval": asdict(cfg.eval), "shared": identity,
                                  "data": demo.data.record(), **fvd_on, **memory_on},
                                 description="score the same prompts as real videos (the ceiling)"
                                 + (" and featurize them for FVD" if fvd_on["fvd_available"] else ""))]  # fmt: skip
    for name in cfg.mixers:
        tag = slug(name)
        # The real latents: match=flops counts on their clip shape (the path is not hashed).
        blank = mixer_experiment(cfg, demo, name, Path(""), Path(""), latents)
        blank.task.data.path = ""
        hashed = {**plain(blank), "shared": identity}
        hashed["train"].pop("deepspeed_config", None)  # a resolved, machine-specific path

        def train_run(work: Path, inputs: Mapping[str, Path], name: str = name) -> dict:
            exp = mixer_experiment(cfg, demo, name, work / "run", vae, latents)
            result = {"mixer": name, **train_mixer(exp, work, cfg.threads)}
            write_json(work / "train.json", result)
            return result

        def eval_run(work: Path, inputs: Mapping[str, Path], name: str = name, tag: str = tag):
            exp = mixer_experiment(cfg, demo, name, Path(""), vae, latents)
            i3d = features()[0] if fvd_on["fvd_available"] else None
            run_dir = inputs[f"train-{tag}"] / "run"
            result = evaluate_mixer(cfg, demo, exp, run_dir, work, scorer,
                                    i3d, inputs["ceiling"] / REAL_FEATURES)  # fmt: skip
            write_json(work / "eval.json", result)
            if cfg.memory.prompts:
                write_json(work / MEMORY_FILE, evaluate_mixer_memory(cfg, demo, exp, run_dir, work))
            return {"lengths": list(result)}

        stages.append(Stage(f"train-{tag}", train_run, hashed,
                            description=f"train the {name} backbone ({cfg.steps} steps)"))  # fmt: skip
        stages.append(Stage(f"eval-{tag}", eval_run, {"eval": asdict(cfg.eval), **fvd_on,
                                                       **memory_on},
                            needs=[f"train-{tag}", "ceiling"],
                            description=_eval_description(cfg)))  # fmt: skip
    return stages


def _eval_description(cfg: AblationConfig) -> str:
    parts = [f"generate and score at {list(cfg.eval.lengths)}x"] if cfg.eval.lengths else []
    if cfg.memory.prompts:
        parts.append(f"{len(cfg.memory.prompts)} memory prompts at {list(cfg.memory.lengths)}x "
                     f"({', '.join(cfg.memory.modes)})")  # fmt: skip
    return "; ".join(parts) or "nothing to generate (eval.lengths and memory.prompts empty)"


def run_ablation(cfg: AblationConfig, *, scorer: Scorer | None = None, fresh: bool = False) -> dict:
    """Run (or reuse) every stage, then write the report; returns the results dict."""
    demo = load_demo_config(cfg.demo, cfg.demo_overrides)
    check_mixers(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    scorer = scorer or default_scorer()
    shared = shared_inputs(cfg, demo, fresh)
    loaded: dict[str, Any] = {}

    def features() -> tuple[Any, str | None]:
        # Loaded once, and only if a stage that computes FVD runs (reused stages need no I3D).
        if "i3d" not in loaded:
            loaded["i3d"] = optional_features(cfg.eval.i3d)
        return loaded["i3d"]

    runner = StageRunner(cfg.out, mixer_stages(cfg, demo, shared, scorer, features),
                         fresh=fresh, label="ablate")  # fmt: skip
    records = runner.run()
    results: dict[str, Any] = {"config": asdict(cfg), "mixers": {}, "ceiling": None,
                               "stages": [r.as_dict() for r in records]}  # fmt: skip
    for name in cfg.mixers:
        tag = slug(name)
        train = json.loads((runner.directory(f"train-{tag}") / "train.json").read_text())
        evals = json.loads((runner.directory(f"eval-{tag}") / "eval.json").read_text())
        results["mixers"][name] = {**train, "lengths": evals}
    results["ceiling"] = json.loads((runner.directory("ceiling") / "eval.json").read_text())
    if cfg.memory.prompts:
        results["memory_ceiling"] = json.loads(
            (runner.directory("ceiling") / MEMORY_FILE).read_text()
        )
        for name in cfg.mixers:
            path = runner.directory(f"eval-{slug(name)}") / MEMORY_FILE
            results["mixers"][name]["memory"] = json.loads(path.read_text())
    write_report(results, Path(cfg.out))
    return results
