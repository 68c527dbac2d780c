"""The backbone task: a `VideoDiT` trained by the engine on latent shards or raw video shards.

From latent shards (`task.data.source: latents`) neither the VAE nor the text encoder is loaded
for training: the shards hold normalised latents and text embeddings, and their manifest the
empty-prompt embedding for caption dropout. From raw shards (`source: raw`) the frozen VAE and
text encoder run on the fly inside `loss`, one video / caption per call, exactly as the export
does, so both sources give bit-identical inputs for the same clips.

Per micro-batch, all randomness of the loss (diffusion times, noise, caption dropout) comes
from a CPU generator seeded by (train.seed, rank, micro-batch index): a resumed run, and a run
from the other source, draws the same.

The config dataclasses are in `cinemamba.tasks.backbone_config`; raw shards become micro-batches
in `cinemamba.tasks.backbone_data`.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from cinemamba.config import ConfigError
from cinemamba.data.bucket_batches import bucketed_latent_batches
from cinemamba.data.buckets import Bucket, build_buckets, config_latent_shape
from cinemamba.latents import format as fmt
from cinemamba.latents.clips import to_pixels
from cinemamba.latents.dataset import (
    CROPS,
    LatentSet,
    check_window,
    latent_batches,
    open_latent_set,
)
from cinemamba.media import save_video
from cinemamba.tasks.backbone_config import SOURCES, BackboneExperiment, BackboneTaskConfig
from cinemamba.tasks.backbone_data import raw_batches
from cinemamba.tasks.context import CleanContext
from cinemamba.train import (
    DataSpec,
    LossOutput,
    TrainResult,
    load_experiment,
    train,
)
from cinemamba_backbone import BackboneConfig, VideoDiT, add_lora, save_lora
from cinemamba_backbone.lora import weights_hash
from cinemamba_conditioning import TextEmbedding, build_text_encoder
from cinemamba_sampling import (
    MODES,
    PipelineConfig,
    ProcessConfig,
    SamplingDefaults,
    TrainingClip,
    VideoPipeline,
    build_process,
    check_process,
    is_saved_pipeline,
    read_pipeline_json,
    to_uint8,
)
from cinemamba_vae import VideoAutoencoder, load_vae

log = logging.getLogger(__name__)


class BackboneTask:
    """Flow matching (or DDPM) training of a VideoDiT; see the module docstring."""

    phases = ("backbone",)

    def __init__(self, cfg: BackboneTaskConfig) -> None:
        self.cfg = cfg
        self.process = build_process(cfg.process)
        if not 0 <= cfg.context_prob <= 1:
            raise ValueError(f"task.context_prob must be in [0, 1], got {cfg.context_prob}")
        if cfg.context_prob > 0:
            if not cfg.per_frame_t:
                raise ValueError(
                    f"task.context_prob={cfg.context_prob} needs task.per_frame_t=true "
                    "(clean context frames beside noisy ones need one time per frame)"
                )
            self.process = CleanContext(self.process, cfg.context_prob, cfg.context_frames)
        self.counts: Counter = Counter()
        self.latent_set: LatentSet | None = None
        self._vae: VideoAutoencoder | None = None
        self._text = None
        self._null: dict[str, torch.Tensor] | None = None
        self._writer = None
        self._clip: tuple[int, int, int] | None = None  # (t, h, w) of the latents trained on
        self._bucket_list: list[Bucket] | None = None
        self._base: str | None = None  # hash of the frozen base weights under LoRA
        self._warned_no_pipeline = False
        self.val_set: LatentSet | None = None
        self._val_batches: list[dict[str, torch.Tensor]] | None = None

    # ---------------------------------------------------------------- checks and frozen parts
    def validate(self) -> None:
        """Check paths, names and widths before any process group or model exists."""
        cfg, data = self.cfg, self.cfg.data
        if data.source not in SOURCES:
            raise ConfigError(f"task.data.source must be one of {SOURCES}, got {data.source!r}")
        if data.crop not in CROPS:
            raise ConfigError(f"task.data.crop must be one of {CROPS}, got {data.crop!r}")
        if not data.path or not Path(data.path).is_dir():
            raise ConfigError(f"task.data.path={data.path!r} is not a shard directory")
        if cfg.init_from:
            self._check_init_from()
        self._open_validation()
        if cfg.lora.rank < 0 or cfg.lora.alpha < 0 or not 0 <= cfg.lora.dropout < 1:
            raise ConfigError(
                "task.lora needs rank >= 0 (0: off), alpha >= 0 and dropout in [0, 1), got "
                f"{cfg.lora}"
            )
        if cfg.lora.rank > 0 and not cfg.init_from:
            log.warning("task.lora without task.init_from: adapters on a randomly initialised base")
        if not 0 <= cfg.caption_dropout <= 1:
            raise ConfigError(f"task.caption_dropout must be in [0, 1], got {cfg.caption_dropout}")
        if cfg.samples.mode not in MODES:
            raise ConfigError(f"task.samples.mode must be one of {MODES}, got {cfg.samples.mode!r}")
        if cfg.vae and not Path(cfg.vae).is_dir():
            raise ConfigError(f"task.vae={cfg.vae!r} is not a directory (save_pretrained output)")
        if (data.source == "raw" or cfg.samples.prompts) and not cfg.vae:
            why = "raw shards" if data.source == "raw" else "periodic samples"
            raise ConfigError(f"task.vae must name a VAE directory for {why}")
        if data.source == "raw":
            try:
                data.clip.validate()
            except ValueError as err:
                raise ConfigError(f"task.data.clip: {err}") from None
            channels = self.vae(torch.device("cpu")).config.latent_channels
            if cfg.backbone.in_channels != channels:
                raise ConfigError(
                    f"task.backbone.in_channels={cfg.backbone.in_channels} but the VAE "
                    f"{cfg.vae!r} makes {channels} latent channels"
                )
            if data.buckets.enabled:
                try:
                    self._buckets()
                except ValueError as err:
                    raise ConfigError(f"task.data.buckets: {err}") from None
            return
        if not cfg.vae:
            log.warning("task.vae is empty: the VAE the latents were made with is not checked")
        try:
            self.latent_set = open_latent_set(
                data.path,
                vae=fmt.vae_identity(cfg.vae) if cfg.vae else None,
                text_encoder=cfg.text_encoder,
                url_prefix=data.url_prefix,
            )
            if not data.buckets.enabled:  # with buckets each bucket sets its own window
                check_window(self.latent_set.manifest, data.latent_frames, data.path)
        except fmt.LatentFormatError as err:
            raise ConfigError(str(err)) from None
        width = self.latent_set.manifest["text_encoder"]["dim"]
        pooled = self.latent_set.manifest["text_encoder"]["pooled_dim"]
        if cfg.backbone.text_dim != width or pooled != width:
            raise ConfigError(
                f"task.backbone.text_dim={cfg.backbone.text_dim} must equal the text width "
                f"{width} (and pooled width {pooled}) of the latents in {data.path!r}"
            )
        channels = self.latent_set.manifest["vae"]["config"]["latent_channels"]
        if cfg.backbone.in_channels != channels:
            raise ConfigError(
                f"task.backbone.in_channels={cfg.backbone.in_channels} but the latents have "
                f"{channels} channels"
            )
        if data.buckets.enabled:
            try:  # the latents' VAE (from the manifest) decides each bucket's latent shape
                shape = config_latent_shape(self.latent_set.manifest["vae"]["config"])
                build_buckets(data.buckets, shape, cfg.backbone.patch_size)
            except (KeyError, ValueError) as err:
                raise ConfigError(f"task.data.buckets: {err}") from None

    def _device_of(self, module: nn.Module) -> torch.device:
        return next(module.parameters()).device

    def vae(self, device: torch.device) -> VideoAutoencoder:
        """The frozen VAE (loaded on first use)."""
        if self._vae is None:
            self._vae = load_vae(self.cfg.vae).eval().requires_grad_(False)
        return self._vae.to(device)

    def text_encoder(self, device: torch.device):
        """The frozen text encoder (built on first use)."""
        if self._text is None:
            self._text = build_text_encoder(self.cfg.text_encoder)
        return self._text.to(device)

    def null_text(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The empty-prompt embedding (L, D), (L,), (P,): from the latent set, else the encoder."""
        if self._null is None:
            if self.latent_set is not None:
                self._null = self.latent_set.null_text
            else:
                null = self.text_encoder(device).null(1)
                self._null = {"text": null.tokens[0], "text_mask": null.mask[0],
                              "pooled": null.pooled[0]}  # fmt: skip
        return {k: v.to(device) for k, v in self._null.items()}

    # ---------------------------------------------------------------- engine protocol
    def _init_dir(self) -> Path:
        """The backbone directory `init_from` names (a pipeline's `backbone/`, or itself)."""
        path = Path(self.cfg.init_from)
        if is_saved_pipeline(path):
            return path / read_pipeline_json(path)["backbone"]
        return path

    def _check_init_from(self) -> None:
        cfg = self.cfg
        path = Path(cfg.init_from)
        if not (path / "config.yaml").is_file() and not is_saved_pipeline(path):
            raise ConfigError(
                f"task.init_from={cfg.init_from!r} is neither a saved pipeline (pipeline.json) "
                "nor a backbone directory (config.yaml + model.safetensors)"
            )
        saved = BackboneConfig.from_yaml(self._init_dir() / "config.yaml")
        diff = [f"{k}: {getattr(cfg.backbone, k)!r} here, {getattr(saved, k)!r} there"
                for k in saved.__dataclass_fields__
                if k != "grad_checkpointing" and getattr(saved, k) != getattr(cfg.backbone, k)]  # fmt: skip
        if diff:
            raise ConfigError(
                f"task.backbone differs from the backbone in task.init_from={cfg.init_from!r} "
                f"({'; '.join(diff)}); set task.backbone to its architecture"
            )
        if is_saved_pipeline(path):
            meta = read_pipeline_json(path)
            try:
                check_process(ProcessConfig(**meta["process"]), cfg.process)
            except ValueError as err:
                raise ConfigError(f"task.process: {err}") from None
            if asdict(cfg.text_encoder) != meta["text_encoder"]["config"]:
                raise ConfigError(
                    f"task.text_encoder={asdict(cfg.text_encoder)} but the pipeline in "
                    f"task.init_from was trained with {meta['text_encoder']['config']}"
                )

    def _open_validation(self) -> None:
        val = self.cfg.validation
        if not val.path:
            return
        if val.samples < 1 or not val.t or not all(0 < t <= 1 for t in val.t):
            raise ConfigError(
                f"task.validation needs samples >= 1 and times t in (0, 1], got {val.samples}, "
                f"{list(val.t)}"
            )
        if not Path(val.path).is_dir():
            raise ConfigError(f"task.validation.path={val.path!r} is not a latent shard directory")
        try:
            self.val_set = open_latent_set(
                val.path,
                vae=fmt.vae_identity(self.cfg.vae) if self.cfg.vae else None,
                text_encoder=self.cfg.text_encoder,
            )
        except fmt.LatentFormatError as err:
            raise ConfigError(f"task.validation.path: {err}") from None

    @torch.no_grad()
    def validation_loss(self, model: nn.Module) -> dict[str, float]:
        """Mean loss (the training loss's weighting) of the held-out clips at each fixed `t`."""
        val = self.cfg.validation
        assert self.val_set is not None, "validate() opens the validation set"
        if self._val_batches is None:
            stream = latent_batches(
                self.val_set, seed=val.seed, rank=0, batch_size=1, start_batch=0,
                latent_frames=self.cfg.data.latent_frames, crop="first",
            )  # fmt: skip
            self._val_batches = [batch for batch, _ in itertools.islice(stream, val.samples)]
        device = self._device_of(model)
        dtype = next(model.parameters()).dtype
        per_t = {t: 0.0 for t in val.t}
        for i, batch in enumerate(self._val_batches):
            x0 = batch["latents"].float()
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(val.seed + i))
            x0, noise = x0.to(device), noise.to(device)
            text = batch["text"].to(device, dtype)
            mask, pooled = batch["text_mask"].to(device), batch["pooled"].to(device, dtype)
            for t_value in val.t:
                t = torch.full((x0.shape[0],), t_value, device=device)
                x_t = self.process.add_noise(x0, noise, t)
                pred = model(x_t.to(dtype), t, text, mask, pooled).float()
                err = (pred - self.process.target(x0, noise, t)).pow(2).mean()
                per_t[t_value] += float(err * self.process.loss_weight(t).float().mean())
        n = len(self._val_batches)
        out = {f"val_loss_t{t:g}": v / n for t, v in per_t.items()}
        out["val_loss"] = sum(per_t.values()) / (n * len(per_t))
        return out

    def build_models(self) -> dict[str, nn.Module]:
        """One VideoDiT: fresh, or the `init_from` weights; wrapped with LoRA adapters when
        `lora.rank > 0` (only the adapters train)."""
        if self.cfg.init_from:
            model = VideoDiT.from_pretrained(self._init_dir(), kernels=self.cfg.kernels)
            model.config.grad_checkpointing = self.cfg.backbone.grad_checkpointing
        else:
            model = VideoDiT(self.cfg.backbone, kernels=self.cfg.kernels)
        if self.cfg.lora.rank > 0:
            self._base = weights_hash(model)
            model = add_lora(model, self.cfg.lora)
        return {"backbone": model}

    def train_data(self, spec: DataSpec) -> Iterator[dict[str, Any]]:
        """This rank's micro-batches (a function of seed, rank and batch index)."""
        data = self.cfg.data
        if data.source == "latents" and data.buckets.enabled:
            assert self.latent_set is not None, "validate() opens the latent set"
            left_out, batches = bucketed_latent_batches(
                self.latent_set, data.buckets, self.cfg.backbone.patch_size, seed=spec.seed,
                rank=spec.rank, start_batch=spec.start_batch, crop=data.crop,
                workers=data.workers, shuffle=data.shuffle,
            )  # fmt: skip
            self.counts.update(left_out)  # samples no bucket takes, counted once
        elif data.source == "latents":
            assert self.latent_set is not None, "validate() opens the latent set"
            batches = latent_batches(
                self.latent_set, seed=spec.seed, rank=spec.rank,
                batch_size=spec.micro_batch_size, start_batch=spec.start_batch,
                latent_frames=data.latent_frames, crop=data.crop, workers=data.workers,
                shuffle=data.shuffle,
            )  # fmt: skip
        else:
            batches = raw_batches(data, spec, self._buckets, self.counts)
        for batch, skipped in batches:
            self.counts.update(skipped)
            yield batch

    def _buckets(self) -> list[Bucket]:
        """The raw path's buckets: token sizes from the VAE's latent shape and the patch."""
        if self._bucket_list is None:
            # the loaded VAE wherever it is (latent_shape needs no device), else load it
            vae = self._vae if self._vae is not None else self.vae(torch.device("cpu"))
            patch = self.cfg.backbone.patch_size
            self._bucket_list = build_buckets(self.cfg.data.buckets, vae.latent_shape, patch)
        return self._bucket_list

    def skipped(self) -> Mapping[str, int]:
        """Bad samples dropped on this rank so far, by reason."""
        return dict(self.counts)

    def count_frames(self, batch: Mapping[str, Any]) -> int:
        """Pixel frames in a micro-batch (latent frames x temporal compression for latents)."""
        if "frames" in batch:
            return int(batch["frames"].shape[0] * batch["frames"].shape[1])
        st = self.latent_set.manifest["vae"]["config"]["temporal_compression"]
        b, _, t = batch["latents"].shape[:3]
        return int(b * (1 + st * (t - 1)))

    @torch.no_grad()
    def encode(self, batch: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        """Latents `(B, C, t, h, w)` float32 and text of a batch (raw: through the frozen models,
        one video and one caption per call, as the export does)."""
        if "latents" in batch:
            keys = ("latents", "text", "text_mask", "pooled")
            return {k: batch[k].float() if batch[k].is_floating_point() else batch[k] for k in keys}
        vae = self.vae(device)
        gen = torch.Generator().manual_seed(int(batch["noise_seed"]) + 1)
        latents = []
        for frames in batch["frames"]:
            pixels = to_pixels(frames.to(device))[None]  # (1, 3, T, H, W)
            if self.cfg.vae_sample:
                # draw on the CPU generator: the same posterior sample on any device
                mean, logvar = vae.encode_moments(pixels)
                eps = torch.randn(mean.shape, generator=gen).to(device)
                latents.append(vae.normalize(mean + torch.exp(0.5 * logvar) * eps))
            else:
                latents.append(vae.encode(pixels, sample=False))
        text = TextEmbedding.cat([self.text_encoder(device).encode([c]) for c in batch["captions"]])
        return {"latents": torch.cat(latents).float(), "text": text.tokens, "text_mask": text.mask,
                "pooled": text.pooled}  # fmt: skip

    def loss(
        self, phase: str, models: Mapping[str, nn.Module], batch: Mapping[str, Any], step: int
    ) -> LossOutput:
        """Weighted MSE between the network output and the process target at sampled times."""
        model = models["backbone"]
        device = self._device_of(model)
        inputs = self.encode(batch, device)
        x0 = inputs["latents"]
        b, _, frames, h, w = x0.shape
        if self._clip is None or frames > self._clip[0]:
            self._clip = (frames, h, w)
        # All randomness from one CPU generator per micro-batch: identical on any device, for
        # either data source, and after a resume.
        gen = torch.Generator().manual_seed(int(batch["noise_seed"]))
        t = self.process.sample_t(
            b, frames if self.cfg.per_frame_t else None, generator=gen, num_tokens=frames * h * w
        )
        noise = torch.randn(x0.shape, generator=gen)
        drop = torch.rand(b, generator=gen) < self.cfg.caption_dropout
        t, noise, drop = t.to(device), noise.to(device), drop.to(device)
        null = self.null_text(device)
        text = torch.where(drop[:, None, None], null["text"], inputs["text"])
        mask = torch.where(drop[:, None], null["text_mask"], inputs["text_mask"])
        pooled = torch.where(drop[:, None], null["pooled"], inputs["pooled"])
        x_t = self.process.add_noise(x0, noise, t)
        dtype = next(model.parameters()).dtype
        pred = model(x_t.to(dtype), t.float(), text.to(dtype), mask, pooled.to(dtype))
        target = self.process.target(x0, noise, t)
        err = (pred.float() - target).pow(2).mean(dim=(1, 3, 4))  # (B, t)
        weight = self.process.loss_weight(t).float()
        weight = weight[:, None] if weight.ndim == 1 else weight  # (B, 1) or (B, t)
        loss = (err * weight).mean()
        return LossOutput(loss, {"mse": err.mean().detach(), "t_mean": t.float().mean()})

    # ---------------------------------------------------------------- saved pipeline
    def training_clip(self) -> TrainingClip:
        """The latent clip geometry trained on: what `loss` saw, else one micro-batch's."""
        if self._clip is None:
            spec = DataSpec(rank=0, world_size=1, micro_batch_size=1, seed=0, start_batch=0)
            batch = next(iter(self.train_data(spec)))
            self._clip = tuple(self.encode(batch, torch.device("cpu"))["latents"].shape[2:])
        t, h, w = self._clip
        return TrainingClip(latent_frames=t, latent_height=h, latent_width=w)

    def pipeline(self, backbone: nn.Module, device: torch.device | None = None) -> VideoPipeline:
        """`backbone` with this task's VAE and text encoder (on `device`, default the
        backbone's) and process, sampling defaults from `task.samples`, rolling windows the
        length of the training clip."""
        device = device or self._device_of(backbone)
        clip = self.training_clip()
        window = clip.latent_frames
        config = PipelineConfig(window=window, context=min(PipelineConfig.context, window - 1),
                                progress=False)  # fmt: skip
        s = self.cfg.samples
        return VideoPipeline(
            self.vae(device), backbone, self.text_encoder(device), self.process, config,
            defaults=SamplingDefaults(steps=s.steps, guidance=s.guidance), training_clip=clip,
        )  # fmt: skip

    # ---------------------------------------------------------------- periodic samples
    @torch.no_grad()
    def evaluate(self, models: Mapping[str, nn.Module], step: int, run_dir: Path) -> dict | None:
        """Rank 0: save the EMA backbone to RUN_DIR/backbone and render the sample prompts."""
        if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
            return None
        model = models["backbone"]
        if any(hasattr(p, "ds_id") for p in model.parameters()):
            log.warning("ZeRO-3 partitions the weights: use export_weights for the backbone")
            return None
        if self._base is not None:  # LoRA: the adapters on their own (EMA weights)
            save_lora(model, Path(run_dir) / "lora", self._base)
        else:
            model.save_pretrained(Path(run_dir) / "backbone")
        if self.cfg.vae and self._base is None:
            # Saving only reads the frozen encoders' configs and weights: keep them off the GPU.
            self.pipeline(model, torch.device("cpu")).save_pretrained(
                Path(run_dir) / "pipeline", vae_reference=self.cfg.vae
            )
        elif self._base is None and not self._warned_no_pipeline:
            self._warned_no_pipeline = True
            log.warning("task.vae is empty: RUN_DIR/pipeline is not written (it names its VAE)")
        metrics = self.validation_loss(model) if self.val_set is not None else {}
        s = self.cfg.samples
        if not s.prompts:
            return metrics or None
        started = time.perf_counter()
        device = self._device_of(model)
        pipe = VideoPipeline(self.vae(device), model, self.text_encoder(device), self.process,
                             PipelineConfig(progress=False))  # fmt: skip
        video = pipe.generate(list(s.prompts), frames=s.frames, height=s.height, width=s.width,
                              steps=s.steps, guidance=s.guidance, seed=s.seed, mode=s.mode)  # fmt: skip
        out = Path(run_dir) / "samples"
        out.mkdir(parents=True, exist_ok=True)
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        for i, frames in enumerate(to_uint8(video)):  # (T, H, W, 3)
            title = f"{s.prompts[i]} | {s.mode} | step {step}"
            sheet = save_video(out / f"step{step:07d}_{i}.mp4", frames, s.fps, title=title)
            # the tag carries the prompt; TensorBoard shows the step on the image's slider
            self._writer.add_image(f"samples/{i} {s.prompts[i]}", sheet.sheet_image, step,
                                   dataformats="HWC")  # fmt: skip
        self._writer.flush()
        return {**metrics, "sample_seconds": time.perf_counter() - started}


# ---------------------------------------------------------------- Python API


def load_backbone_experiment(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> BackboneExperiment:
    """The experiment config from a YAML file and `key=value` overrides (unknown keys raise)."""
    return OmegaConf.to_object(load_experiment(BackboneExperiment, path, list(overrides)))


def train_backbone(experiment: BackboneExperiment) -> TrainResult:
    """Train the backbone in this process (or under torchrun / deepspeed: one call per rank)."""
    full = OmegaConf.structured(experiment)
    return train(experiment.train, BackboneTask(experiment.task), full_config=full)


def export_pipeline(
    source: str | Path, out: str | Path, *, ema: bool = True, data_path: str | None = None
) -> Path:
    """A saved pipeline (`VideoPipeline.save_pretrained`) from a backbone checkpoint or run
    directory (its latest): the EMA weights by default, the trained ones with `ema=False`.

    The VAE, text encoder, process and sampling defaults come from the experiment config
    saved in the checkpoint; `data_path` replaces `task.data.path` when the training data has
    moved (it gives the training clip geometry).
    """
    from cinemamba.train import checkpoint as ckpt_io
    from cinemamba.train.export import consolidated_state_dict

    state = ckpt_io.read_trainer_state(ckpt_io.resolve_checkpoint(source))
    overrides = [f"task.data.path={data_path}"] if data_path else []
    merged = OmegaConf.merge(OmegaConf.structured(BackboneExperiment), state["config"],
                             OmegaConf.from_dotlist(overrides))  # fmt: skip
    exp: BackboneExperiment = OmegaConf.to_object(merged)
    if not exp.task.vae:
        raise ConfigError(f"{source}: the run has no task.vae, so a pipeline cannot name its VAE")
    task = BackboneTask(exp.task)
    task.validate()
    model = task.build_models()["backbone"]  # init_from weights and LoRA wrapper, as trained
    weights = consolidated_state_dict(source, "backbone", ema)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # The EMA of a LoRA run holds the adapters only; the frozen base comes from init_from.
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    if unexpected or set(missing) - frozen:
        raise ValueError(
            f"{source}: the checkpoint's backbone weights do not fit the model its config builds"
            f" (missing {sorted(set(missing) - frozen)[:5]}, unexpected {unexpected[:5]})"
        )
    if exp.task.lora.rank > 0:
        model = model.merge_and_unload()  # a plain VideoDiT: the pipeline holds merged weights
    return task.pipeline(model.eval()).save_pretrained(out, vae_reference=exp.task.vae)
