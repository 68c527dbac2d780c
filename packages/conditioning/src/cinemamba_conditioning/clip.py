"""A frozen CLIP text encoder built through open_clip.

Weights come only from a local checkpoint path (no hub downloads here). For tests and the demo a
tiny random-initialised config (`cinemamba-tiny-text`, bundled in `model_configs/`) stands in;
its identity records the seed and a hash of the architecture instead of a weights hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from open_clip.tokenizer import HFTokenizer, SimpleTokenizer
from open_clip.transformer import TextTransformer, text_global_pool
from torch import Tensor, nn

from cinemamba_conditioning.embedding import TextEmbedding

log = logging.getLogger(__name__)

BUNDLED_CONFIGS = Path(__file__).parent / "model_configs"
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
_registered = False


@dataclass
class TextEncoderConfig:
    """How to build the text encoder.

    model: an open_clip model name (`open_clip.list_models()`) or a bundled one
        (`cinemamba-tiny-text`).
    weights: path to a local open_clip checkpoint (.safetensors / .bin / .pt; a full CLIP
        checkpoint or a text-tower-only one). Required unless `random_init_seed` is set.
    random_init_seed: build a random, frozen text tower from this seed instead (tests, demo).
    precision: "fp32" or "bf16" for the weights and compute; outputs are always float32.
    context_length: override the model's token context length (None keeps it).
    """

    model: str = "cinemamba-tiny-text"
    weights: str | None = None
    random_init_seed: int | None = None
    precision: str = "fp32"
    context_length: int | None = None


def register_bundled_configs() -> None:
    """Make the bundled model configs visible to open_clip (idempotent)."""
    global _registered
    if not _registered:
        open_clip.add_model_config(BUNDLED_CONFIGS)
        _registered = True


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_config(cfg: TextEncoderConfig) -> dict:
    """Validate the config and return the open_clip model config dict."""
    register_bundled_configs()
    model_cfg = open_clip.get_model_config(cfg.model)
    if model_cfg is None:
        raise ValueError(
            f"unknown open_clip model {cfg.model!r} (TextEncoderConfig.model); valid names: "
            f"{', '.join(open_clip.list_models())}"
        )
    if "hf_model_name" in model_cfg.get("text_cfg", {}):
        raise ValueError(
            f"open_clip model {cfg.model!r} uses a Hugging Face text tower; only open_clip "
            "TextTransformer towers are supported (their tokenizer needs no download)"
        )
    if cfg.precision not in PRECISIONS:
        raise ValueError(
            f"TextEncoderConfig.precision must be one of {sorted(PRECISIONS)}, got {cfg.precision!r}"
        )
    if cfg.weights is None and cfg.random_init_seed is None:
        raise ValueError(
            "TextEncoderConfig.weights is not set: give the path of a local open_clip checkpoint, "
            "or set random_init_seed for a random frozen text tower (tests and demo only)"
        )
    if cfg.weights is not None and cfg.random_init_seed is not None:
        raise ValueError("set either TextEncoderConfig.weights or random_init_seed, not both")
    if cfg.weights is not None and not Path(cfg.weights).is_file():
        raise FileNotFoundError(
            f"text encoder weights {cfg.weights!r} not found: TextEncoderConfig.weights must be a "
            "local open_clip checkpoint file (hub tags such as 'openai' cannot be downloaded here)"
        )
    return model_cfg


def _load_weights(model: nn.Module, path: Path) -> None:
    """Load a full or text-only open_clip checkpoint; anything else is an error naming `path`."""
    try:
        incompatible = open_clip.load_checkpoint(model, str(path), strict=False)
    except Exception as err:  # torch.load / safetensors / shape errors come in many types
        raise ValueError(f"cannot load text encoder weights {str(path)!r}: {err}") from err
    # A text-only checkpoint leaves the (unused) image tower and logit scale missing; anything
    # else missing or extra means the file is for another architecture.
    missing = [k for k in incompatible.missing_keys if not k.startswith(("visual.", "logit_"))]
    if missing or incompatible.unexpected_keys:
        raise ValueError(
            f"text encoder weights {str(path)!r} do not match the model: missing {missing[:5]}, "
            f"unexpected {list(incompatible.unexpected_keys)[:5]}"
        )


_OPEN_CLIP_DIR = str(Path(open_clip.__file__).parent)


def _drop_open_clip_chatter(record: logging.LogRecord) -> bool:
    if not record.pathname.startswith(_OPEN_CLIP_DIR):
        return True
    if record.levelno < logging.WARNING:
        return False  # "Parsing model identifier ...": a step-by-step account of its factory
    return not record.getMessage().startswith("No pretrained weights loaded for model")


@contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Drop open_clip's INFO chatter and its "No pretrained weights loaded" while building.

    We always build the architecture empty and then load our own file (or keep the seeded random
    tower on purpose), so that warning is true of every encoder and alarms users (issue 18).
    open_clip logs on the root logger (`logging.info`); its other warnings, and every record
    from anywhere else, pass.
    """
    root = logging.getLogger()
    root.addFilter(_drop_open_clip_chatter)
    try:
        yield
    finally:
        root.removeFilter(_drop_open_clip_chatter)


class OpenCLIPTextEncoder(nn.Module):
    """Frozen open_clip text tower: `encode(prompts)` -> `TextEmbedding`.

    Tokens are the final-layer-norm hidden states `(B, L, width)`; pooled is CLIP's projected
    text feature `(B, embed_dim)` (exactly `model.encode_text`, unnormalised).
    """

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        model_cfg = _check_config(cfg)
        self.cfg = cfg
        dtype = PRECISIONS[cfg.precision]
        # Random init inside a forked RNG so building the encoder never moves the global seed.
        with torch.random.fork_rng(devices=[]), _quiet_open_clip():
            torch.manual_seed(cfg.random_init_seed or 0)
            model = open_clip.create_model(
                cfg.model,
                pretrained=None,
                load_weights=False,
                pretrained_text=False,
                force_context_length=cfg.context_length,
            )
        if cfg.weights is not None:
            _load_weights(model, Path(cfg.weights))
        model.visual = nn.Identity()  # the image tower is never used; free its memory
        self.model = model.to(dtype).eval().requires_grad_(False)
        with _quiet_open_clip():
            self.tokenizer = open_clip.get_tokenizer(cfg.model, context_length=cfg.context_length)
        self.context_length = self.tokenizer.context_length

        text_cfg = model_cfg["text_cfg"]
        self.dim = int(text_cfg["width"])
        self.pooled_dim = int(model_cfg["embed_dim"])
        arch = dict(model_cfg, context_length=self.context_length)
        arch_hash = hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:12]
        if cfg.weights is not None:
            log.info("hashing text encoder weights %s", cfg.weights)
            source = f"sha256-{_file_sha256(Path(cfg.weights))[:16]}"
        else:
            source = f"random-init-seed-{cfg.random_init_seed}"
        self.identity = f"open_clip/{cfg.model}/{source}/cfg-{arch_hash}/{cfg.precision}"

    def train(self, mode: bool = True) -> OpenCLIPTextEncoder:
        """Stay in eval mode: the encoder is frozen (dropout off) whatever the caller's mode."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        """Device holding the weights."""
        return self.model.token_embedding.weight.device

    def _mask(self, ids: Tensor) -> Tensor:
        """Valid-token mask `(B, L)`: SOT..EOT inclusive for CLIP BPE, non-pad for HF tokenizers."""
        if isinstance(self.tokenizer, SimpleTokenizer):
            # Padding is id 0, which is also a real token ("!"), so locate EOT instead.
            eot = (ids == self.tokenizer.eot_token_id).int().argmax(dim=1)  # (B,)
            return torch.arange(ids.shape[1], device=ids.device)[None, :] <= eot[:, None]
        if isinstance(self.tokenizer, HFTokenizer):
            return ids != self.tokenizer.tokenizer.pad_token_id
        raise ValueError(f"no padding rule for tokenizer {type(self.tokenizer).__name__}")

    def _forward_text(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Hidden states `(B, L, width)` and pooled features `(B, embed_dim)`."""
        model = self.model
        if isinstance(model, open_clip.CLIP):
            # Same steps as CLIP.encode_text, keeping the per-token states it pools from.
            dtype = model.transformer.get_cast_dtype()
            x = model.token_embedding(ids).to(dtype) + model.positional_embedding.to(dtype)
            x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))  # (B, L, W)
            pooled = text_global_pool(x, ids, model.text_pool_type, eos_token_id=model.text_eos_id)
            proj = model.text_projection
            if proj is not None:
                pooled = proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
            return x, pooled
        if isinstance(getattr(model, "text", None), TextTransformer):
            model.text.output_tokens = True
            pooled, x = model.text(ids)
            return x, pooled
        raise ValueError(f"unsupported open_clip text tower in {self.cfg.model!r}")

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextEmbedding:
        """Embed `prompts`; tokens `(B, L, dim)` float32, mask `(B, L)`, pooled `(B, pooled_dim)`."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompts must be a list of strings, got {prompts!r}")
        if not prompts:
            raise ValueError("prompts is empty")
        # no_grad (not inference_mode): the outputs feed modules that are trained.
        ids = self.tokenizer(list(prompts)).to(self.device)  # (B, L)
        tokens, pooled = self._forward_text(ids)
        return TextEmbedding(tokens=tokens.float(), mask=self._mask(ids), pooled=pooled.float())

    def null(self, batch: int) -> TextEmbedding:
        """The empty prompt's embedding, `batch` times."""
        return self.encode([""] * batch)

    def forward(self, prompts: list[str]) -> TextEmbedding:
        """Same as `encode`."""
        return self.encode(prompts)


def build_text_encoder(cfg: TextEncoderConfig) -> OpenCLIPTextEncoder:
    """Build the frozen text encoder described by `cfg`."""
    return OpenCLIPTextEncoder(cfg)
