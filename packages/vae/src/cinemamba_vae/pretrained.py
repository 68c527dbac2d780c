"""Pretrained diffusers video VAEs (Wan, CogVideoX, HunyuanVideo, LTX-Video) behind our seam.

`DiffusersVideoVAE` wraps a diffusers `AutoencoderKL*` loaded from a **local** directory (no hub
access) and answers like `VideoAutoencoder`: `encode` returns normalised latents, `decode` takes
them, `latent_shape`, `encode_moments` / `normalize`, `set_latent_stats` + `save_pretrained`
(for `cinemamba vae-stats`), and an identity (class + config + weights + statistics).
`load_vae(dir)` picks the implementation from what the directory holds. See docs/vae.md.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from cinemamba_vae.hashing import config_hash, file_sha256
from cinemamba_vae.latent_norm import LatentNormalization

DIFFUSERS_CONFIG = "config.json"
# Written by `cinemamba vae-stats` next to the diffusers files: measured statistics override the
# model's published scaling (and change the identity, so latents made before are refused).
STATS_NAME = "cinemamba_latent_stats.json"
EXTRA = "pip install 'cinemamba-vae[diffusers]'"
LOGVAR_RANGE = (-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution clamps the same way


@dataclass(frozen=True)
class _Family:
    """What differs between the supported diffusers classes."""

    frame_step: int  # videos are 1 + frame_step * k frames
    # True: `chunk_frames` switches on the model's own temporal tiling (blended overlapping
    # frame windows: bounded memory, approximate); without it the encode is one full-sequence
    # call. False: the model always streams exactly at its native step (`chunk_frames` is moot).
    temporal_tiling: bool


# Wan streams 1 + 4k pixel frames through a causal feature cache; CogVideoX encodes in batches
# of 8 frames (plus the remainder first) and decodes 2 latent frames at a time, so it only
# round-trips 1 + 8k frames (1 + 4k with odd k decodes to the wrong length, measured).
# HunyuanVideo and LTX-Video encode the whole sequence at once unless their framewise tiling
# is on (diffusers turns it on by default for HunyuanVideo; we decide per call instead).
FAMILIES: dict[str, _Family] = {
    "AutoencoderKLWan": _Family(frame_step=4, temporal_tiling=False),
    "AutoencoderKLCogVideoX": _Family(frame_step=8, temporal_tiling=False),
    "AutoencoderKLHunyuanVideo": _Family(frame_step=4, temporal_tiling=True),
    "AutoencoderKLLTXVideo": _Family(frame_step=8, temporal_tiling=True),
}


@dataclass
class DiffusersVAEConfig:
    """The seam-level description of a wrapped diffusers VAE (recorded in latent manifests)."""

    model_class: str
    latent_channels: int
    spatial_compression: int
    temporal_compression: int
    frame_step: int
    normalization: str  # "measured" (vae-stats), "published" (the model's config) or "none"
    in_channels: int = 3


def _diffusers():
    """The diffusers module, or an error naming the extra that installs it."""
    try:
        import diffusers
    except ImportError as err:
        raise ImportError(
            f"loading a diffusers VAE directory needs the `diffusers` package: {EXTRA}"
        ) from err
    return diffusers


def is_diffusers_dir(directory: str | os.PathLike) -> bool:
    """True when `directory` holds a diffusers model (`config.json` with `_class_name`)."""
    path = Path(directory) / DIFFUSERS_CONFIG
    if not path.is_file():
        return False
    try:
        return "_class_name" in json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def _read_config(directory: Path) -> dict:
    path = directory / DIFFUSERS_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {str(directory)!r} is not a diffusers VAE")
    config = json.loads(path.read_text())
    name = config.get("_class_name")
    if name not in FAMILIES:
        raise ValueError(
            f"{path}: _class_name={name!r} is not a supported video VAE; valid: {sorted(FAMILIES)}"
        )
    return config


def diffusers_vae_identity(directory: str | os.PathLike) -> str:
    """Names the exact diffusers VAE in `directory` without building it: class, a hash of every
    weights file, of the config (without diffusers' version stamp) and of measured statistics."""
    directory = Path(directory)
    config = _read_config(directory)
    weights = sorted(directory.glob("*.safetensors")) + sorted(directory.glob("*.bin"))
    if not weights:
        raise FileNotFoundError(f"{directory} has no weights file (*.safetensors / *.bin)")
    digest = config_hash({p.name: file_sha256(p) for p in weights})
    cfg = {k: v for k, v in config.items() if k not in ("_diffusers_version", "_name_or_path")}
    stats = directory / STATS_NAME
    tail = f"/stats-{file_sha256(stats)[:12]}" if stats.is_file() else ""
    return f"diffusers/{config['_class_name']}/sha256-{digest}/cfg-{config_hash(cfg)}{tail}"


def _compression(model: nn.Module, config: dict) -> tuple[int, int, int]:
    """(latent channels, spatial, temporal compression) read from the model's config."""
    name = config["_class_name"]
    if name in ("AutoencoderKLHunyuanVideo", "AutoencoderKLLTXVideo"):
        # both derive their ratios from the config at construction (LTX: patch sizes x levels)
        channels = int(config["latent_channels"])
        return channels, int(model.spatial_compression_ratio), int(model.temporal_compression_ratio)
    if name == "AutoencoderKLWan":
        # scale_factor_spatial already counts Wan 2.2's 2x2 patchify (16 = 2 x 8).
        spatial = config.get("scale_factor_spatial") or 8
        temporal = config.get("scale_factor_temporal") or 4
        return int(config["z_dim"]), int(spatial), int(temporal)
    # CogVideoX: one 2x spatial downsample per block but the last.
    spatial = 2 ** (len(config["block_out_channels"]) - 1)
    return int(config["latent_channels"]), spatial, int(config["temporal_compression_ratio"])


def _published_stats(model: nn.Module, config: dict, channels: int) -> tuple[Tensor, Tensor] | None:
    """(mean, std) of raw latents as the model publishes them, or None when it does not.

    Wan publishes per-channel `latents_mean` / `latents_std` (its pipelines compute
    `(z - mean) / std`); CogVideoX and HunyuanVideo publish one `scaling_factor` (pipelines
    use `z * scaling_factor`, i.e. mean 0 and std 1 / scaling_factor, `shift_factor` as the
    mean); LTX-Video keeps `latents_mean` / `latents_std` as weights and its pipelines compute
    `(z - mean) * scaling_factor / std`.
    """
    if config["_class_name"] == "AutoencoderKLLTXVideo":
        scale = float(config.get("scaling_factor") or 1.0)
        return model.latents_mean.float().cpu(), model.latents_std.float().cpu() / scale
    if config.get("latents_mean") is not None and config.get("latents_std") is not None:
        mean = torch.tensor(config["latents_mean"], dtype=torch.float32)
        std = torch.tensor(config["latents_std"], dtype=torch.float32)
        if mean.shape == std.shape == (channels,):
            return mean, std
    if config.get("scaling_factor"):
        shift = float(config.get("shift_factor") or 0.0)
        mean = torch.full((channels,), shift)
        return mean, torch.full((channels,), 1.0 / float(config["scaling_factor"]))
    return None


class DiffusersVideoVAE(LatentNormalization, nn.Module):
    """A diffusers video VAE with our `VideoAutoencoder` interface and owned normalisation."""

    def __init__(self, model: nn.Module, config: DiffusersVAEConfig, source: Path) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.source = source
        c = config.latent_channels
        self.register_buffer("latent_mean", torch.zeros(c))
        self.register_buffer("latent_std", torch.ones(c))

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, *, map_location: str | torch.device = "cpu"
    ) -> DiffusersVideoVAE:
        """Load from a local diffusers directory (never the hub); measured stats win."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"VAE directory {str(directory)!r} does not exist")
        config = _read_config(directory)
        model_cls = getattr(_diffusers(), config["_class_name"])
        model = model_cls.from_pretrained(str(directory), local_files_only=True)
        model = model.to(map_location).eval()
        channels, spatial, temporal = _compression(model, config)
        stats, normalization = None, "none"
        stats_path = directory / STATS_NAME
        if stats_path.is_file():
            try:
                saved = json.loads(stats_path.read_text())
                stats = torch.tensor(saved["mean"]), torch.tensor(saved["std"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise ValueError(
                    f"{stats_path} is not a statistics file ({{'mean': [...], 'std': [...]}}): "
                    f"{err!r}; re-run `cinemamba vae-stats` or delete it"
                ) from None
            normalization = "measured"
        elif (published := _published_stats(model, config, channels)) is not None:
            stats, normalization = published, "published"
        seam = DiffusersVAEConfig(
            model_class=config["_class_name"],
            latent_channels=channels,
            spatial_compression=spatial,
            temporal_compression=temporal,
            frame_step=FAMILIES[config["_class_name"]].frame_step,
            normalization=normalization,
            in_channels=int(config.get("in_channels", 3)),
        )
        vae = cls(model, seam, directory)
        if stats is not None:
            try:
                vae.store_latent_stats(*stats)
            except ValueError as err:  # a file written for another VAE, or edited by hand
                raise ValueError(
                    f"{stats_path if normalization == 'measured' else directory}: {err}"
                ) from None
        return vae.to(map_location)

    # ---------------------------------------------------------------- shapes
    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(t, h, w) of the latents of a `frames` x `height` x `width` video."""
        s, st, step = (
            self.config.spatial_compression,
            self.config.temporal_compression,
            self.config.frame_step,
        )
        if frames < 1 or (frames - 1) % step:
            raise ValueError(
                f"video has {frames} frames; {self.config.model_class} needs 1 + {step}*k frames"
            )
        if height % s or width % s:
            raise ValueError(f"video size {height}x{width} is not divisible by {s}")
        return 1 + (frames - 1) // st, height // s, width // s

    def _check_video(self, video: Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != self.config.in_channels:
            raise ValueError(f"video must be (B, 3, T, H, W), got shape {tuple(video.shape)}")
        self.latent_shape(*video.shape[2:])

    def _check_latents(self, z: Tensor) -> None:
        c = self.config.latent_channels
        if z.ndim != 5 or z.shape[1] != c:
            raise ValueError(f"latents must be (B, {c}, t, h, w), got shape {tuple(z.shape)}")
        if self.config.frame_step // self.config.temporal_compression == 2 and z.shape[2] % 2 == 0:
            raise ValueError(f"{self.config.model_class} decodes an odd number of latent frames")

    @staticmethod
    def _check_chunk(chunk_frames: int | None) -> None:
        if chunk_frames is not None and chunk_frames < 1:
            raise ValueError(f"chunk_frames must be a positive integer, got {chunk_frames}")

    def _temporal_tiling(self, chunk_frames: int | None) -> None:
        """HunyuanVideo / LTX: the model's framewise tiling on exactly when chunking is asked."""
        if FAMILIES[self.config.model_class].temporal_tiling:
            # LTX gates its tiled *encode* on use_framewise_decoding too, so set both flags.
            self.model.use_framewise_encoding = chunk_frames is not None
            self.model.use_framewise_decoding = chunk_frames is not None

    # ---------------------------------------------------------------- encode
    def encode_moments(
        self, video: Tensor, *, chunk_frames: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance in the raw latent space.

        Wan and CogVideoX always stream at their native step (Wan: 1 then 4 frames through
        its causal feature cache; CogVideoX: 8-frame batches with a conv cache), so memory is
        flat in length and `chunk_frames` cannot change the result: it is only validated.
        HunyuanVideo / LTX-Video: `chunk_frames` (any value) turns on the model's own temporal
        tiling (its window sizes; approximate), None encodes the full sequence at once.
        """
        self._check_chunk(chunk_frames)
        self._check_video(video)
        self._temporal_tiling(chunk_frames)
        dist = self.model.encode(video.to(self.model.dtype)).latent_dist
        return dist.mean, dist.logvar.clamp(*LOGVAR_RANGE)

    def encode(
        self,
        video: Tensor,
        *,
        sample: bool = True,
        chunk_frames: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Pixels (B, 3, T, H, W) in [-1, 1] -> normalised latents (B, C, t, h, w)."""
        mean, logvar = self.encode_moments(video, chunk_frames=chunk_frames)
        return self.normalized_sample(mean, logvar, sample=sample, generator=generator)

    @torch.no_grad()
    def encode_stream(self, chunks: Iterable[Tensor]) -> Iterator[Tensor]:
        """Consecutive pixel chunks `(B, 3, k, H, W)` of one video -> its normalised
        posterior-mean latents, yielded as they complete (as `VideoAutoencoder.encode_stream`).

        Wan: exact and flat in length, by driving the model's own causal feature cache with
        the frame groups its `encode` uses (frame 0, then 4 at a time; the 1x1x1 quant conv
        per group), so only one chunk of pixels is held. Other classes: the chunks are
        gathered and encoded in one `encode` call (their streaming lives inside it), so the
        input video is held whole. Frames past the last `1 + frame_step*k` are dropped.
        """
        if self.config.model_class != "AutoencoderKLWan":
            parts = list(chunks)
            video = torch.cat(parts, dim=2) if parts else None
            del parts
            if video is None or video.shape[2] == 0:
                return
            step = self.config.frame_step
            yield self.encode(video[:, :, : 1 + step * ((video.shape[2] - 1) // step)],
                              sample=False)  # fmt: skip
            return
        yield from self._wan_stream(chunks)

    def _wan_stream(self, chunks: Iterable[Tensor]) -> Iterator[Tensor]:
        """Wan's `_encode` loop (diffusers 0.3x+: `clear_cache`, `_enc_feat_map`,
        `_enc_conv_idx`), fed group by group instead of slicing a whole video."""
        model = self.model
        if getattr(model, "use_tiling", False):
            raise ValueError("Wan spatial tiling is on: streamed export needs it off")
        patch = getattr(model.config, "patch_size", None)
        c = self.config.latent_channels
        model.clear_cache()
        pending: Tensor | None = None  # frames not yet part of a complete group
        need = 1  # the first group is frame 0 alone, then 4 frames per group
        try:
            for x in chunks:
                if x.ndim != 5 or x.shape[1] != self.config.in_channels:
                    raise ValueError(f"video chunk must be (B, 3, k, H, W), got {tuple(x.shape)}")
                self.latent_shape(1, *x.shape[3:])
                x = x.to(model.dtype)
                pending = x if pending is None else torch.cat([pending, x], dim=2)
                while pending.shape[2] >= need:
                    group, pending = pending[:, :, :need], pending[:, :, need:]
                    if patch is not None:
                        from diffusers.models.autoencoders.autoencoder_kl_wan import patchify

                        group = patchify(group, patch_size=patch)
                    model._enc_conv_idx = [0]
                    out = model.encoder(
                        group, feat_cache=model._enc_feat_map, feat_idx=model._enc_conv_idx
                    )
                    mean = model.quant_conv(out)[:, :c]
                    need = self.config.temporal_compression
                    yield self.normalize(mean)
        finally:
            model.clear_cache()

    # ---------------------------------------------------------------- decode
    def decode_raw(self, z: Tensor, *, chunk_frames: int | None = None) -> Tensor:
        """Raw latents (B, C, t, h, w) -> pixels (B, 3, T, H, W) (native streaming)."""
        self._check_chunk(chunk_frames)
        self._check_latents(z)
        self._temporal_tiling(chunk_frames)
        return self.model.decode(z.to(self.model.dtype)).sample

    def decode(self, latents: Tensor, *, chunk_frames: int | None = None) -> Tensor:
        """Normalised latents -> pixels in [-1, 1] (Wan clamps, CogVideoX does not)."""
        self._check_latents(latents)
        return self.decode_raw(self.denormalize(latents), chunk_frames=chunk_frames)

    def forward(self, video: Tensor) -> Tensor:
        """Not trainable through this seam: pretrained VAEs are used frozen."""
        raise NotImplementedError(
            f"{self.config.model_class} is a frozen pretrained VAE: encode/decode only"
        )

    # ---------------------------------------------------------------- statistics
    def set_latent_stats(self, mean: Tensor, std: Tensor) -> None:
        """Store measured per-channel raw-latent statistics (`vae-stats`) to normalise with."""
        self.store_latent_stats(mean, std)
        self.config.normalization = "measured"

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the diffusers model, and measured statistics (atomically), into `directory`.

        Saving into the source directory only writes the statistics: the weights stay as they
        are (and keep their hash). Published or no normalisation writes no statistics file:
        the config it comes from travels with the model.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        if out.resolve() != self.source.resolve():
            self.model.save_pretrained(str(out))
        if self.config.normalization != "measured":
            (out / STATS_NAME).unlink(missing_ok=True)  # a stale file would override the config
            return out
        stats = {"mean": self.latent_mean.tolist(), "std": self.latent_std.tolist()}
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{STATS_NAME}.")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(stats, fh)
            os.replace(tmp, out / STATS_NAME)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return out


def load_vae(directory: str | os.PathLike, *, map_location: str | torch.device = "cpu"):
    """The VAE saved in `directory`: ours (`config.yaml`) or a diffusers one (`config.json`)."""
    from cinemamba_vae.model import CONFIG_NAME, VideoAutoencoder

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"VAE directory {str(directory)!r} does not exist")
    if (directory / CONFIG_NAME).is_file():
        return VideoAutoencoder.from_pretrained(directory, map_location=map_location)
    if is_diffusers_dir(directory):
        return DiffusersVideoVAE.from_pretrained(directory, map_location=map_location)
    raise FileNotFoundError(
        f"{str(directory)!r} holds neither a cinemamba VAE ({CONFIG_NAME}) nor a diffusers VAE "
        f"({DIFFUSERS_CONFIG} with _class_name)"
    )
