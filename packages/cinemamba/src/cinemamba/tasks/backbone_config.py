"""The backbone task's config: data source, periodic samples, held-out loss, the task and the
`cinemamba train` file around it (`BackboneExperiment`). Read by `cinemamba.tasks.backbone`."""

from __future__ import annotations

from dataclasses import dataclass, field

from cinemamba.data.buckets import BucketConfig
from cinemamba.latents.clips import ClipConfig
from cinemamba.train import TrainConfig
from cinemamba_backbone import BackboneConfig, LoraSettings
from cinemamba_conditioning import TextEncoderConfig
from cinemamba_sampling import ProcessConfig

SOURCES = ("latents", "raw")


@dataclass
class BackboneDataConfig:
    """Where training clips come from.

    source: "latents" (a latent shard set from export-latents) or "raw" (video shards).
    path: the shard directory (latents: with `latents.json`; raw: with `PREFIX.plan.json`).
    url_prefix: stream the shards from here instead (`pipe:...`, http); metadata stays in path.
    clip: raw only, the frames taken from each video (see ClipConfig).
    latent_frames / crop: latents only, the training window: this many latent frames (0:
        the whole stored sequence) from each sample, at a start seeded by (seed, rank, stream
        position) and uniform over the valid starts ("random") or from the first frame
        ("first"). Whole-video latents give windows of any length up to the video's; a
        sequence shorter than the window is skipped, counted and logged.
    workers: DataLoader worker processes (0: decode in the training process).
    shuffle: samples per seeded shuffle block of the stream (0/1: read order). Shards hold
        videos in the order they were written; a block of N samples spanning several shards
        is permuted, so one batch mixes them. Memory holds one block (raw: N encoded videos);
        resume stays exact.
    buckets: clip shapes by aspect ratio and length, each micro-batch from one, its size set
        by a token budget (latent t x h x w / patch^2); `train.batch_size` is then unused
        (`cinemamba.data.buckets`, docs/data.md). Latents: a sample joins the buckets of its
        stored latent size, with the longest window it can fill (`latent_frames` unused).
    """

    source: str = "latents"
    path: str = ""
    url_prefix: str = ""
    clip: ClipConfig = field(default_factory=ClipConfig)
    latent_frames: int = 0
    crop: str = "random"
    workers: int = 0
    shuffle: int = 0
    buckets: BucketConfig = field(default_factory=BucketConfig)


@dataclass
class PeriodicSamples:
    """Videos generated with the EMA weights at every `train.eval_every` steps and at the end
    (rank 0; mp4 + PNG contact sheet in RUN_DIR/samples/, images in TensorBoard). Needs
    `task.vae`. An empty prompt list turns them off."""

    prompts: list[str] = field(default_factory=list)
    frames: int = 17
    height: int = 32
    width: int = 32
    steps: int = 20
    guidance: float = 4.0
    seed: int = 0
    mode: str = "oneshot"
    fps: float = 8.0


@dataclass
class ValidationConfig:
    """A held-out loss at every `train.eval_every` step and at the end (rank 0, EMA weights),
    logged as `eval/val_loss` and `eval/val_loss_t<t>` (TensorBoard and log.jsonl).

    path: a latent shard set kept out of training ("": off); checked against the task's VAE
        and text encoder like the training set. The first `samples` clips of its seeded stream
        (`seed`, first-frame crop to `task.data.latent_frames`) are scored at each diffusion time
        in `t`, with the noise of clip i drawn from a generator seeded `seed + i`: the same
        inputs at every evaluation, so the curve moves only with the weights.
    """

    path: str = ""
    samples: int = 8
    t: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    seed: int = 0


@dataclass
class BackboneTaskConfig:
    """The backbone task: model, frozen encoders, noise process, data and loss options.

    init_from: start from these weights (a saved pipeline directory or a backbone
        `save_pretrained` directory) with a fresh optimizer; the architecture must equal
        `backbone`, and a pipeline's process and text encoder those of this task.
    lora: `lora.rank > 0` trains LoRA adapters (peft) on the backbone's block linear layers
        with every other weight frozen; they are saved on their own in RUN_DIR/lora.
    """

    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig.from_preset("tiny"))
    vae: str = ""  # our VAE or a diffusers VAE directory (load_vae); checked against latents
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    data: BackboneDataConfig = field(default_factory=BackboneDataConfig)
    caption_dropout: float = 0.1  # P(text -> empty-prompt embedding), for classifier-free guidance
    per_frame_t: bool = False  # one diffusion time per latent frame (rolling / streaming)
    # Clean-context training (needs per_frame_t): with this probability a clip starts with
    # 1..context_frames clean latent frames (t = 0, no loss), as rolling generation's windows
    # start with the previous window's last frames (tasks/context.py, docs/training.md).
    context_prob: float = 0.0
    context_frames: int = 3  # at most this many: sampling's rolling `context`
    vae_sample: bool = False  # raw only: sample the posterior instead of its mean
    kernels: str = "auto"  # backbone kernels: "auto" | "torch"
    samples: PeriodicSamples = field(default_factory=PeriodicSamples)
    init_from: str = ""
    lora: LoraSettings = field(default_factory=LoraSettings)
    validation: ValidationConfig = field(default_factory=ValidationConfig)


@dataclass
class BackboneExperiment:
    """`cinemamba train` schema: the engine config next to the task's."""

    train: TrainConfig = field(default_factory=TrainConfig)
    task: BackboneTaskConfig = field(default_factory=BackboneTaskConfig)
