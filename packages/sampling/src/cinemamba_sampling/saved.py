"""A pipeline is a directory: `VideoPipeline.save_pretrained(dir)` / `from_pretrained(dir)`.

    pipeline.json   format version, VAE reference + identity, text encoder config + identity,
                    noise process, default solver settings, steps, guidance, training clip
    backbone/       VideoDiT.save_pretrained (config.yaml + model.safetensors)
    vae/            VideoAutoencoder.save_pretrained, unless pipeline.json references a VAE
                    directory elsewhere (a large or shared VAE) by path and identity hash

The identities are checked on load, so a pipeline never runs with a VAE or text encoder other
than the one it was saved with; a noise process other than the one the backbone was trained
with is refused (`check_process`), while solvers stay interchangeable (issue 17).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from cinemamba_sampling.processes import ProcessConfig

if TYPE_CHECKING:
    from cinemamba_sampling.pipeline import VideoPipeline

log = logging.getLogger(__name__)

FORMAT = "cinemamba-pipeline/1"
PIPELINE_JSON = "pipeline.json"
BACKBONE_DIR = "backbone"
VAE_DIR = "vae"

# The process fields that change what the network learned to predict. Flow matching's shift
# and the training-time t distribution only move where the solver (or training) spends its
# steps, so a different shift at sampling time is allowed; every DDPM schedule field changes
# alpha(t), sigma(t) and the prediction target.
TRAINED_PROCESS_FIELDS = {
    "flow": ("name",),
    "ddpm": ("name", "prediction", "num_steps", "beta_schedule", "beta_start", "beta_end",
             "zero_terminal_snr"),
}  # fmt: skip


@dataclass
class TrainingClip:
    """The latent clip geometry the backbone was trained on (0: unknown).

    Rolling windows longer than `latent_frames` ask the network for sequences it never saw.
    """

    latent_frames: int = 0
    latent_height: int = 0
    latent_width: int = 0


@dataclass
class SamplingDefaults:
    """Per-call defaults of `generate` that belong to the model (what it was tuned for)."""

    steps: int = 30
    guidance: float = 5.0


def _describe(cfg: ProcessConfig) -> str:
    keys = TRAINED_PROCESS_FIELDS.get(cfg.name, ("name",))
    return ", ".join(f"{k}={getattr(cfg, k)!r}" for k in keys)


def check_process(trained: ProcessConfig, requested: ProcessConfig) -> None:
    """Raise ValueError naming both processes when `requested` is not the one the backbone
    was trained with (fields in `TRAINED_PROCESS_FIELDS`)."""
    keys = TRAINED_PROCESS_FIELDS.get(trained.name, ("name",))
    if any(getattr(trained, k) != getattr(requested, k) for k in keys):
        raise ValueError(
            f"the backbone was trained with process ({_describe(trained)}) but sampling "
            f"asked for ({_describe(requested)}); a model only denoises along the path it was "
            "trained on (change the solver instead: solvers are interchangeable for one process)"
        )


def dataclass_from(cls: type, data: dict[str, Any], where: str) -> Any:
    """`cls(**data)`; unknown keys (a file from another version) raise, naming `where`."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; valid: {sorted(names)}")
    return cls(**data)


def read_pipeline_json(directory: str | Path) -> dict[str, Any]:
    """`pipeline.json` of a saved pipeline, its format checked."""
    path = Path(directory) / PIPELINE_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {str(directory)!r} is not a saved pipeline")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} has format {meta.get('format')!r}; this version reads {FORMAT!r}")
    return meta


def is_saved_pipeline(path: str | Path) -> bool:
    """True for a directory holding `pipeline.json`."""
    return (Path(path) / PIPELINE_JSON).is_file()


def _same_weights(module: torch.nn.Module, reference: Path) -> bool:
    """Whether the VAE saved in `reference` has exactly `module`'s tensors (our format: its
    weights file; a diffusers directory: the VAE loaded from it, statistics included)."""
    weights = reference / "model.safetensors"
    if weights.is_file():
        from safetensors.torch import load_file

        saved = load_file(str(weights))
    else:
        from cinemamba_vae import load_vae

        saved = load_vae(reference).state_dict()
    state = module.state_dict()
    return saved.keys() == state.keys() and all(
        torch.equal(saved[k].cpu(), v.detach().cpu()) for k, v in state.items()
    )


def save_pipeline(
    pipe: VideoPipeline, directory: str | Path, vae_reference: str | Path | None = None
) -> Path:
    """Write `pipe` as a directory (see the module docstring); atomic: a `.partial` sibling is
    filled, then renamed over `directory`."""
    from cinemamba_vae import vae_identity

    directory = Path(directory)
    if hasattr(pipe.backbone, "peft_config"):
        raise ValueError(
            "the backbone carries unmerged LoRA adapters; save the adapter on its own, or "
            "load it with load_lora(..., merge=True) before save_pretrained"
        )
    text_cfg = getattr(pipe.text_encoder.encoder, "cfg", None)
    if text_cfg is None:
        raise ValueError(
            f"the text encoder {type(pipe.text_encoder.encoder).__name__} has no `cfg` "
            "(TextEncoderConfig) to save; build it with cinemamba_conditioning.build_text_encoder"
        )
    if directory.exists() and not is_saved_pipeline(directory) and any(directory.iterdir()):
        # replacing a saved pipeline is expected; wiping an unrelated folder never is
        raise FileExistsError(
            f"{str(directory)!r} exists and is not a saved pipeline; choose another directory"
        )
    tmp = directory.with_name(directory.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        pipe.backbone.save_pretrained(tmp / BACKBONE_DIR)
        if vae_reference is not None:
            ref = Path(vae_reference).resolve()
            if not _same_weights(pipe.vae, ref):
                raise ValueError(
                    f"vae_reference={str(ref)!r} does not hold this pipeline's VAE weights"
                )
            vae = {"path": str(ref), "identity": vae_identity(ref)}
        else:
            pipe.vae.save_pretrained(tmp / VAE_DIR)
            vae = {"path": VAE_DIR, "identity": vae_identity(tmp / VAE_DIR)}
        config = asdict(pipe.config)
        config.pop("progress")  # a per-run display choice, not a model setting
        config["solver"] = pipe.solver_name
        meta = {
            "format": FORMAT,
            "backbone": BACKBONE_DIR,
            "vae": vae,
            "text_encoder": {"config": asdict(text_cfg), "identity": pipe.text_encoder.identity},
            "process": asdict(pipe.process.cfg),
            "pipeline": config,
            "defaults": asdict(pipe.defaults),
            "training_clip": asdict(pipe.training_clip),
        }
        (tmp / PIPELINE_JSON).write_text(json.dumps(meta, indent=2) + "\n")
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


class SavedPipeline(NamedTuple):
    """What `load_pipeline` rebuilds from a pipeline directory, checked; `VideoPipeline`
    assembles it (this module never imports the pipeline class it serialises)."""

    vae: torch.nn.Module
    backbone: torch.nn.Module
    text_encoder: Any
    process: Any  # a NoiseProcess
    config: dict[str, Any]  # the saved PipelineConfig fields
    defaults: SamplingDefaults
    training_clip: TrainingClip
    trained_process: ProcessConfig


def load_pipeline(
    directory: str | Path,
    *,
    process: ProcessConfig | None = None,
    device: str | torch.device = "cpu",
    kernels: str = "auto",
) -> SavedPipeline:
    """Rebuild a saved pipeline's parts; `process` overrides the saved one (a process the
    backbone was not trained with raises, see `check_process`)."""
    from cinemamba_backbone import VideoDiT
    from cinemamba_conditioning import TextEncoderConfig, build_text_encoder
    from cinemamba_sampling.processes import build_process
    from cinemamba_vae import load_vae, vae_identity

    directory = Path(directory)
    meta = read_pipeline_json(directory)
    trained = dataclass_from(ProcessConfig, meta["process"], f"{PIPELINE_JSON} process")
    if process is not None:
        check_process(trained, process)
    vae_dir = directory / meta["vae"]["path"]  # an absolute reference stays absolute
    found = vae_identity(vae_dir)
    if found != meta["vae"]["identity"]:
        raise ValueError(
            f"the VAE at {str(vae_dir)!r} is {found!r} but the pipeline {str(directory)!r} was "
            f"saved with {meta['vae']['identity']!r}; point it at the VAE it was trained with"
        )
    text_cfg = dataclass_from(
        TextEncoderConfig, meta["text_encoder"]["config"], f"{PIPELINE_JSON} text_encoder"
    )
    text = build_text_encoder(text_cfg)
    if text.identity != meta["text_encoder"]["identity"]:
        raise ValueError(
            f"the text encoder built from {PIPELINE_JSON} is {text.identity!r} but the pipeline "
            f"was saved with {meta['text_encoder']['identity']!r} (its weights file changed?)"
        )
    return SavedPipeline(
        load_vae(vae_dir).to(device),
        VideoDiT.from_pretrained(directory / meta["backbone"], kernels=kernels).to(device),
        text.to(device),
        build_process(process or trained),
        meta["pipeline"],
        dataclass_from(SamplingDefaults, meta["defaults"], f"{PIPELINE_JSON} defaults"),
        dataclass_from(TrainingClip, meta["training_clip"], f"{PIPELINE_JSON} training_clip"),
        trained,
    )
