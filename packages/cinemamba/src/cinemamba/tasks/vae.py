"""The VAE task: a `VideoAutoencoder` (and optionally a 3D patch discriminator) trained by the
engine on raw WebDataset video shards.

Phases per step: "vae" (reconstruction + LPIPS + KL [+ adversarial]) then, when the GAN is on,
"discriminator" (hinge [+ LeCam]); the engine gives each its own optimizer. A micro-batch is
either a batch of clips or, with probability `task.data.image_prob`, a batch of single frames
(images are 1-frame videos): which one is a function of (seed, rank, micro-batch index), so
every phase and a resumed run agree. At `train.eval_every` steps (and at the end) rank 0 saves
the EMA autoencoder to RUN_DIR/vae and writes reconstructions of fixed clips as a PNG strip and
an mp4 to RUN_DIR/samples/ and TensorBoard, with their PSNR / SSIM.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from cinemamba.config import ConfigError
from cinemamba.data.buckets import BucketConfig, bucket_clip, build_buckets, config_latent_shape
from cinemamba.data.loader import LoaderConfig, VideoLoader, resolve_shards
from cinemamba.data.video import write_video
from cinemamba.eval.reconstruction import load_clips, reconstruction_strip, to_uint8
from cinemamba.latents.clips import ClipConfig, to_pixels
from cinemamba.media import save_png
from cinemamba.train import DataSpec, LossOutput, TrainConfig, TrainResult, load_experiment, train
from cinemamba_vae import VAEConfig, VideoAutoencoder
from cinemamba_vae.losses import VAELoss, VAELossConfig, build_discriminator
from cinemamba_vae.metrics import frames_psnr, frames_ssim
from cinemamba_vae.perceptual import LPIPSWeightsError

log = logging.getLogger(__name__)


@dataclass
class VAEDataConfig:
    """Training clips from raw video shards, read by the data layer's `VideoLoader`.

    path: a shard-set directory (with `PREFIX.plan.json`), a brace pattern, a comma-separated
        list or `pipe:` commands.
    image_prob: fraction of micro-batches trained as images (frame 0 of each clip).
    shuffle: shuffle-buffer size in samples (0: stream order).
    val_path: a shard-set directory for the periodic reconstructions (default: `path`).
    buckets: clip shapes by aspect ratio and length, each micro-batch from one, its size set
        by a token budget (latent positions t x h x w); `train.batch_size` is then unused
        (`cinemamba.data.buckets`, docs/data.md).
    """

    path: str = ""
    clip: ClipConfig = field(default_factory=ClipConfig)
    image_prob: float = 0.25
    shuffle: int = 0
    workers: int = 0
    val_path: str = ""
    val_clips: int = 4
    buckets: BucketConfig = field(default_factory=BucketConfig)


@dataclass
class VAETaskConfig:
    """The model, its objective and its data."""

    model: VAEConfig = field(default_factory=VAEConfig)
    loss: VAELossConfig = field(default_factory=VAELossConfig)
    data: VAEDataConfig = field(default_factory=VAEDataConfig)
    media_fps: float = 8.0


@dataclass
class VAEExperiment:
    """`cinemamba train-vae` schema: the engine config next to the task's."""

    train: TrainConfig = field(default_factory=TrainConfig)
    task: VAETaskConfig = field(default_factory=VAETaskConfig)


def is_image_batch(seed: int, rank: int, batch: int, prob: float) -> bool:
    """Whether micro-batch `batch` of `rank` trains on single frames (seeded, resumable)."""
    return bool(np.random.default_rng([seed, rank, batch, 11]).random() < prob)


class VAETask:
    """Autoencoder (+ discriminator) training; see the module docstring."""

    def __init__(self, cfg: VAETaskConfig) -> None:
        self.cfg = cfg
        self.counts: Counter = Counter()
        self.phases = ("vae", "discriminator") if cfg.loss.disc.enabled else ("vae",)
        self._loss: VAELoss | None = None
        self._val: torch.Tensor | None = None
        self._writer = None

    # ---------------------------------------------------------------- checks
    def validate(self) -> None:
        """Check the model, loss and data settings before anything is built."""
        cfg = self.cfg
        try:
            cfg.model.validate()
            cfg.data.clip.validate()
        except ValueError as err:
            raise ConfigError(f"task: {err}") from None
        st, s = cfg.model.temporal_compression, cfg.model.spatial_compression
        if (cfg.data.clip.frames - 1) % st:
            raise ConfigError(
                f"task.data.clip.frames={cfg.data.clip.frames} must be 1 + {st}*k for this VAE"
            )
        if cfg.data.clip.height % s or cfg.data.clip.width % s:
            raise ConfigError(f"task.data.clip height/width must be multiples of {s}")
        if cfg.data.buckets.enabled:
            try:
                build_buckets(cfg.data.buckets, config_latent_shape(vars(cfg.model)))
            except ValueError as err:
                raise ConfigError(f"task.data.buckets: {err}") from None
        if not 0 <= cfg.data.image_prob <= 1:
            raise ConfigError(f"task.data.image_prob must be in [0, 1], got {cfg.data.image_prob}")
        if not cfg.data.path:
            raise ConfigError("task.data.path must name the training shards")
        try:
            resolve_shards(cfg.data.path)
        except (ValueError, OSError) as err:
            raise ConfigError(f"task.data.path={cfg.data.path!r}: {err}") from None
        try:  # build LPIPS now: missing weights fail before any process group or model
            self._loss = VAELoss(cfg.loss)
        except (LPIPSWeightsError, ValueError) as err:
            raise ConfigError(f"task.loss: {err}") from None

    @property
    def loss_fn(self) -> VAELoss:
        """The objective (with its frozen LPIPS network), built once."""
        if self._loss is None:
            self._loss = VAELoss(self.cfg.loss)
        return self._loss

    # ---------------------------------------------------------------- engine protocol
    def build_models(self) -> dict[str, nn.Module]:
        """The autoencoder, and the discriminator when the GAN is enabled."""
        models: dict[str, nn.Module] = {"vae": VideoAutoencoder(self.cfg.model)}
        disc = build_discriminator(self.cfg.loss.disc)
        if disc is not None:
            models["discriminator"] = disc
        return models

    def train_data(self, spec: DataSpec) -> Iterator[dict[str, Any]]:
        """This rank's micro-batches: uint8 frames (B, T, H, W, 3) and an image flag."""
        data = self.cfg.data
        loader = VideoLoader(
            LoaderConfig(
                shards=data.path, clip=data.clip, batch_size=spec.micro_batch_size,
                resampled=True, shuffle=data.shuffle, seed=spec.seed, workers=data.workers,
                uint8=True,  # pixels are made on the device, in the VAE's dtype
                buckets=data.buckets,
            ),
            rank=spec.rank,
            world_size=spec.world_size,
            latent_shape=config_latent_shape(vars(self.cfg.model)),
        )  # fmt: skip
        self.counts.update(loader.skipped)  # samples no bucket takes, counted once
        for b, batch in enumerate(loader.batches(spec.start_batch), start=spec.start_batch):
            self.counts.update(batch["skipped"])
            image = is_image_batch(spec.seed, spec.rank, b, data.image_prob)
            yield {"frames": batch["video"], "image": torch.tensor(image)}

    def skipped(self) -> Mapping[str, int]:
        """Bad samples dropped on this rank so far, by reason."""
        return dict(self.counts)

    def count_frames(self, batch: Mapping[str, Any]) -> int:
        """Pixel frames the micro-batch trains on."""
        b, t = batch["frames"].shape[:2]
        return int(b * (1 if bool(batch["image"]) else t))

    @staticmethod
    def pixels(batch: Mapping[str, Any]) -> torch.Tensor:
        """The micro-batch as (B, 3, T, H, W) in [-1, 1] (T = 1 for an image batch)."""
        video = to_pixels(batch["frames"])
        return video[:, :, :1] if bool(batch["image"]) else video

    def loss(
        self, phase: str, models: Mapping[str, nn.Module], batch: Any, step: int
    ) -> LossOutput | None:
        """Generator loss for "vae"; hinge (+ LeCam) for "discriminator" once the GAN is on."""
        vae = models["vae"]
        # uint8 frames become pixels here, in the VAE's compute dtype (bf16 under bf16 training)
        video = self.pixels(batch).to(next(vae.parameters()).dtype)
        loss_fn = self.loss_fn.to(video.device)
        if phase == "vae":
            module = getattr(vae, "module", vae)
            disc = self.cfg.loss.disc
            if disc.enabled and disc.adaptive_weight and hasattr(module.last_layer_weight, "ds_id"):
                # autograd.grad w.r.t. a ZeRO-3 partition fails deep in a conv backward
                raise ConfigError(
                    "task.loss.disc.adaptive_weight needs the decoder's last layer whole, and "
                    "ZeRO-3 partitions it: train the GAN under ZeRO stage <= 2 or set "
                    "task.loss.disc.adaptive_weight=false"
                )
            out = vae(video)
            loss, logs = loss_fn.generator_loss(
                video,
                out,
                step=step,
                discriminator=models.get("discriminator"),
                last_layer=module.last_layer_weight,
            )
            # the same keys on every call: the GAN terms read 0 before they start
            logs.setdefault("g_adv", 0.0)
            logs.setdefault("adaptive_weight", 0.0)
            logs.setdefault("lpips", 0.0)
            return LossOutput(loss, logs)
        if not loss_fn.gan_active(step):
            return None
        with torch.no_grad():
            recon = vae(video).reconstruction
        loss, logs = loss_fn.discriminator_loss(models["discriminator"], video, recon)
        logs.setdefault("lecam", 0.0)
        return LossOutput(loss, logs)

    # ---------------------------------------------------------------- periodic media
    def val_clips(self) -> torch.Tensor:
        """Fixed uint8 clips (N, T, H, W, 3): the first clips of the validation shards."""
        if self._val is None:
            data = self.cfg.data
            clip = ClipConfig(
                frames=data.clip.frames, stride=data.clip.stride,
                height=data.clip.height, width=data.clip.width, start="first",
            )  # fmt: skip
            if data.buckets.enabled:
                # one shape to stack: the first bucket with the shortest clip (most videos fit)
                buckets = build_buckets(data.buckets, config_latent_shape(vars(self.cfg.model)))
                bucket = min(buckets, key=lambda b: b.frames)
                clip = bucket_clip(bucket, replace(clip, fps=data.clip.fps), data.buckets.fit)
            self._val = load_clips(data.val_path or data.path, clip, data.val_clips)
        return self._val

    @torch.no_grad()
    def evaluate(self, models: Mapping[str, nn.Module], step: int, run_dir: Path) -> dict | None:
        """Rank 0: save the EMA VAE to RUN_DIR/vae; reconstructions to samples/ + TensorBoard."""
        if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
            return None
        vae = models["vae"]
        if any(hasattr(p, "ds_id") for p in vae.parameters()):
            log.warning("ZeRO-3 partitions the weights: use export_weights for the VAE")
            return None
        vae.save_pretrained(Path(run_dir) / "vae")
        param = next(vae.parameters())
        frames = self.val_clips()
        video = to_pixels(frames.to(param.device))
        recon = vae.decode(vae.encode(video.to(param.dtype), sample=False)).float()
        psnr, ssim = frames_psnr(video, recon), frames_ssim(video, recon)
        out = Path(run_dir) / "samples"
        out.mkdir(parents=True, exist_ok=True)
        # Every validation clip, one above the other (each: originals over reconstructions), so
        # the picture shows what the PSNR/SSIM above average over.
        originals, rebuilt = frames.numpy(), [to_uint8(r) for r in recon]  # (N, T, H, W, 3)
        strip = np.concatenate(
            [reconstruction_strip(o, r) for o, r in zip(originals, rebuilt, strict=True)], axis=0
        )
        save_png(out / f"recon_step{step:07d}.png", strip)
        side_by_side = np.concatenate(
            [np.concatenate(originals, axis=1), np.concatenate(rebuilt, axis=1)], axis=2
        )  # (T, N*H, 2W, 3)
        write_video(out / f"recon_step{step:07d}.mp4", side_by_side, self.cfg.media_fps)
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        self._writer.add_image("vae/reconstruction", strip, step, dataformats="HWC")
        self._writer.flush()
        return {"psnr": psnr.mean().item(), "ssim": ssim.mean().item()}


# ---------------------------------------------------------------- Python API


def load_vae_experiment(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> VAEExperiment:
    """The experiment config from a YAML file and `key=value` overrides (unknown keys raise)."""
    return OmegaConf.to_object(load_experiment(VAEExperiment, path, list(overrides)))


def train_vae(experiment: VAEExperiment) -> TrainResult:
    """Train the VAE in this process (or under torchrun / deepspeed: one call per rank)."""
    full = OmegaConf.structured(experiment)
    return train(experiment.train, VAETask(experiment.task), full_config=full)
