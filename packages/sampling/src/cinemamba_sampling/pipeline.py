"""`VideoPipeline`: text -> latents -> pixels, with three ways to make videos longer than the
clips the model was trained on.

- `oneshot`: every latent frame denoised at once. A temporal SSM costs O(T), so this is the
  seed paper's way (arXiv 2403.07711); memory grows with T.
- `rolling`: windows of W latent frames; each window's first C frames are the last C frames of
  the previous window, already clean (per-frame time t = 0), and only W - C frames are new.
  Network memory is bounded by W.
- `streaming` (causal backbones): chunks of K latent frames denoised one after another; the
  temporal state after each finished chunk is carried to the next, so memory per chunk is
  constant. After a chunk is denoised, one extra forward at t = 0 advances the state over the
  clean chunk (the denoising forwards never touch it).

Latents are decoded with the VAE's chunked decode, so decoding is bounded in memory too.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from cinemamba_conditioning import CachedTextEncoder, TextEmbedding, TextEncoder
from cinemamba_sampling.guidance import WithContext, guided
from cinemamba_sampling.processes import NoiseProcess, ProcessConfig
from cinemamba_sampling.saved import (
    PIPELINE_JSON,
    SamplingDefaults,
    TrainingClip,
    dataclass_from,
    load_pipeline,
    save_pipeline,
)
from cinemamba_sampling.solvers import DEFAULT_SOLVER, get_solver

log = logging.getLogger(__name__)

MODES = ("oneshot", "rolling", "streaming")


@dataclass
class PipelineConfig:
    """Sampling settings that are not per-call arguments of `generate`.

    solver: a name in `SOLVERS`; "" picks the process's default (euler for flow, dpmpp_2m
        for ddpm). eta: DDIM stochasticity.
    window / context: rolling mode, in latent frames (W and C, C < W).
    chunk: streaming mode, latent frames per chunk.
    decode_chunk_frames: latent frames per chunk of the VAE decode (0 decodes all at once).
    """

    solver: str = ""
    eta: float = 0.0
    window: int = 8
    context: int = 2
    chunk: int = 2
    decode_chunk_frames: int = 4
    progress: bool = True


def rolling_windows(total: int, window: int, context: int) -> list[tuple[int, int]]:
    """[start, end) latent-frame spans of the rolling windows covering `total` frames.

    Consecutive windows overlap by exactly `context` frames; the last one may be shorter.
    """
    if not 0 <= context < window:
        raise ValueError(
            f"rolling needs 0 <= context < window, got context={context}, window={window}"
        )
    spans = [(0, min(window, total))]
    while spans[-1][1] < total:
        start = spans[-1][1] - context
        spans.append((start, min(start + window, total)))
    return spans


def stream_chunks(total: int, chunk: int) -> list[tuple[int, int]]:
    """[start, end) spans of consecutive streaming chunks."""
    if chunk < 1:
        raise ValueError(f"streaming chunk must be >= 1 latent frame, got {chunk}")
    return [(s, min(s + chunk, total)) for s in range(0, total, chunk)]


class _Network:
    """The backbone as the guidance wrappers call it, in the backbone's dtype, float32 out."""

    def __init__(self, backbone: nn.Module, state=None) -> None:
        self.backbone = backbone
        self.state = state
        self.dtype = next(backbone.parameters()).dtype

    def __call__(self, x: Tensor, t: Tensor, text: Tensor, mask: Tensor, pooled: Tensor) -> Tensor:
        args = (x.to(self.dtype), t.float(), text.to(self.dtype), mask)
        if self.state is None:
            out = self.backbone(*args, pooled.to(self.dtype))
        else:  # streaming: predict this chunk from the carried state, leaving it unchanged
            out, _ = self.backbone.forward_chunk(*args, self.state, pooled.to(self.dtype))
        return out.float()


class VideoPipeline:
    """Composes a VAE, a backbone, a text encoder, a noise process and a solver.

    `vae` follows `cinemamba_vae.VideoAutoencoder` (latent_shape, chunked decode), `backbone`
    `cinemamba_backbone.VideoDiT` (forward; init_state/forward_chunk for streaming), and
    `text_encoder` the `TextEncoder` protocol (wrapped in an embedding cache here).
    `defaults` holds the model's default steps and guidance, `training_clip` the latent clip
    geometry the backbone was trained on (rolling windows beyond it warn); both are saved by
    `save_pretrained`.
    """

    def __init__(
        self,
        vae: nn.Module,
        backbone: nn.Module,
        text_encoder: TextEncoder,
        process: NoiseProcess,
        config: PipelineConfig | None = None,
        *,
        defaults: SamplingDefaults | None = None,
        training_clip: TrainingClip | None = None,
        trained_process: ProcessConfig | None = None,
    ) -> None:
        self.vae = vae.eval()
        self.backbone = backbone.eval()
        self.text_encoder = (
            text_encoder
            if isinstance(text_encoder, CachedTextEncoder)
            else CachedTextEncoder(text_encoder)
        )
        self.process = process
        self.config = config or PipelineConfig()
        name = (
            self.config.solver
            or DEFAULT_SOLVER["flow" if process.prediction == "velocity" else "ddpm"]
        )
        self.solver_name = name
        self.solver = get_solver(name, eta=self.config.eta)
        self.defaults = defaults or SamplingDefaults()
        self.training_clip = training_clip or TrainingClip()
        self.trained_process = trained_process or getattr(process, "cfg", None)

    # ---- persistence ---------------------------------------------------------------------
    def save_pretrained(
        self, directory: str | Path, *, vae_reference: str | Path | None = None
    ) -> Path:
        """Write the pipeline as a directory (backbone, VAE or a reference to `vae_reference`
        with its identity hash, text encoder config + identity, process, solver defaults,
        training clip); see `cinemamba_sampling.saved`."""
        return save_pipeline(self, directory, vae_reference)

    def load_lora(self, directory: str | Path, *, merge: bool = True) -> VideoPipeline:
        """Put a LoRA adapter (`cinemamba train` with `task.lora.rank > 0`: RUN_DIR/lora) on
        the backbone, merged into its weights by default; the base it was trained on is
        checked. Returns self."""
        from cinemamba_backbone import load_lora

        self.backbone = load_lora(self.backbone, directory, merge=merge).eval()
        return self

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        process: ProcessConfig | None = None,
        config: PipelineConfig | None = None,
        device: str | torch.device = "cpu",
        kernels: str = "auto",
    ) -> VideoPipeline:
        """Rebuild a pipeline from `save_pretrained` output. `config` replaces the saved solver
        settings; `process` must be the one the backbone was trained with (shift may differ)."""
        parts = load_pipeline(directory, process=process, device=device, kernels=kernels)
        saved = dataclass_from(PipelineConfig, parts.config, f"{PIPELINE_JSON} pipeline")
        return cls(
            parts.vae, parts.backbone, parts.text_encoder, parts.process, config or saved,
            defaults=parts.defaults, training_clip=parts.training_clip,
            trained_process=parts.trained_process,
        )  # fmt: skip

    @property
    def device(self) -> torch.device:
        """Where the backbone lives; latents and noise are made there."""
        return next(self.backbone.parameters()).device

    # ---- planning ------------------------------------------------------------------------
    def latent_size(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(latent t, h, w, decoded frames): frames are rounded up to what the VAE can decode."""
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        st = self.vae.config.temporal_compression
        decoded = 1 + st * math.ceil((frames - 1) / st)
        if decoded != frames:
            log.info(
                "decoding %d frames (the VAE makes 1 + %d*k) and keeping the first %d",
                decoded,
                st,
                frames,
            )
        t, h, w = self.vae.latent_shape(decoded, height, width)
        return t, h, w, decoded

    def embed(
        self, prompts: list[str], guidance: float, negative_prompt: str | None = None
    ) -> tuple[TextEmbedding, TextEmbedding | None]:
        """Conditional embedding, and the unconditional one (empty or negative prompt) when guided."""
        cond = self.text_encoder.encode(prompts).to(self.device)
        if guidance == 1.0:
            return cond, None
        if negative_prompt is not None:
            uncond = self.text_encoder.encode([negative_prompt] * len(prompts))
        else:
            uncond = self.text_encoder.null(len(prompts))
        return cond, uncond.to(self.device)

    # ---- sampling ------------------------------------------------------------------------
    @torch.no_grad()
    def sample_latents(
        self,
        prompts: list[str] | str,
        *,
        frames: int,
        height: int,
        width: int,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
        mode: str = "oneshot",
        negative_prompt: str | None = None,
    ) -> Tensor:
        """Normalised latents `(B, C, t, h, w)` for `prompts` (same arguments as `generate`)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        steps = self.defaults.steps if steps is None else steps
        guidance = self.defaults.guidance if guidance is None else guidance
        if mode not in MODES:
            raise ValueError(f"unknown long-video mode {mode!r}; valid: {', '.join(MODES)}")
        if mode == "streaming" and not getattr(self.backbone, "is_causal", False):
            raise ValueError(
                "mode 'streaming' needs a causal backbone (causal temporal mixers in every block, e.g. mamba, mamba2, causal_attention); use oneshot or rolling"
            )
        channels = self.vae.config.latent_channels
        if self.backbone.config.in_channels != channels:
            raise ValueError(
                f"backbone in_channels={self.backbone.config.in_channels} but the VAE has {channels} latent channels"
            )
        t, h, w, _ = self.latent_size(frames, height, width)
        cond, uncond = self.embed(prompts, guidance, negative_prompt)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        shape = (len(prompts), channels, t, h, w)
        if mode == "oneshot":
            spans, tokens = [(0, t)], t * h * w
        elif mode == "rolling":
            trained = self.training_clip.latent_frames
            if trained and self.config.window > trained:
                log.warning(
                    "rolling window of %d latent frames is longer than the %d the backbone was "
                    "trained on; set pipeline.window <= %d",
                    self.config.window, trained, trained,
                )  # fmt: skip
            spans, tokens = (
                rolling_windows(t, self.config.window, self.config.context),
                min(self.config.window, t) * h * w,
            )
        else:
            spans, tokens = stream_chunks(t, self.config.chunk), min(self.config.chunk, t) * h * w
        timesteps = self.process.timesteps(steps, num_tokens=tokens)
        bar = tqdm(
            total=steps * len(spans),
            disable=not self.config.progress,
            desc=f"sampling ({mode})",
            unit="step",
        )
        try:
            run = dict(
                cond=cond,
                uncond=uncond,
                guidance=guidance,
                timesteps=timesteps,
                generator=generator,
                bar=bar,
            )
            if mode == "streaming":
                return self._streaming(shape, spans, **run)
            return self._windows(shape, spans, **run)
        finally:
            bar.close()

    def _solve(
        self, model, x: Tensor, timesteps: Tensor, generator: torch.Generator, bar
    ) -> Tensor:
        return self.solver(
            model,
            x,
            timesteps,
            process=self.process,
            generator=generator,
            callback=lambda i, x_, x0: bar.update(1),
        )

    def _noise(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        return torch.randn(shape, generator=generator, device=self.device, dtype=torch.float32)

    def _windows(
        self, shape, spans, *, cond, uncond, guidance, timesteps, generator, bar
    ) -> Tensor:
        """Oneshot (one span) and rolling: each window's overlap with the past is clean context."""
        b, c, _, h, w = shape
        latents = torch.zeros(shape, device=self.device)
        model = guided(_Network(self.backbone), cond, uncond, guidance)
        done = 0  # latent frames finished so far
        for start, end in spans:
            context = latents[:, :, start:done]  # (B, C, ctx, h, w), already clean
            x = self._noise((b, c, end - done, h, w), generator)
            latents[:, :, done:end] = self._solve(
                WithContext(model, context), x, timesteps, generator, bar
            )
            done = end
        return latents

    def _streaming(
        self, shape, spans, *, cond, uncond, guidance, timesteps, generator, bar
    ) -> Tensor:
        """Chunk by chunk with the backbone's temporal state carried (causal backbones)."""
        b, c, _, h, w = shape
        latents = torch.zeros(shape, device=self.device)
        # The state serves every network batch: 2B rows when CFG runs cond and uncond together.
        texts = cond if uncond is None or guidance == 1.0 else TextEmbedding.cat([cond, uncond])
        copies = texts.batch // b
        param = next(self.backbone.parameters())
        state = self.backbone.init_state(texts.batch, h, w, device=param.device, dtype=param.dtype)
        for start, end in spans:
            model = guided(_Network(self.backbone, state), cond, uncond, guidance)
            x = self._solve(
                model, self._noise((b, c, end - start, h, w), generator), timesteps, generator, bar
            )
            latents[:, :, start:end] = x
            clean = torch.cat([x] * copies).to(param.dtype)
            t0 = torch.zeros(texts.batch, device=self.device)
            _, state = self.backbone.forward_chunk(
                clean,
                t0,
                texts.tokens.to(param.dtype),
                texts.mask,
                state,
                texts.pooled.to(param.dtype),
            )
        return latents

    # ---- decoding ------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, latents: Tensor, frames: int | None = None) -> Tensor:
        """Latents -> pixels `(B, 3, T, H, W)` in [-1, 1] via the VAE's chunked decode."""
        chunk = self.config.decode_chunk_frames or None
        vae_param = next(self.vae.parameters())
        video = self.vae.decode(latents.to(vae_param), chunk_frames=chunk).float().clamp_(-1, 1)
        return video if frames is None else video[:, :, :frames]

    def generate(
        self,
        prompts: list[str] | str,
        *,
        frames: int,
        height: int,
        width: int,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
        mode: str = "oneshot",
        negative_prompt: str | None = None,
    ) -> Tensor:
        """Videos `(B, 3, frames, height, width)` in [-1, 1], deterministic for a `seed`.

        `steps` / `guidance` default to `self.defaults`; `guidance` is the CFG scale (1 disables it); `negative_prompt` replaces the empty
        prompt in the unconditional branch; `mode` is one of `MODES`.
        """
        latents = self.sample_latents(
            prompts,
            frames=frames,
            height=height,
            width=width,
            steps=steps,
            guidance=guidance,
            seed=seed,
            mode=mode,
            negative_prompt=negative_prompt,
        )
        return self.decode(latents, frames)
