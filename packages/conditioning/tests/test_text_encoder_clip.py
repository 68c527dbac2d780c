"""The open_clip text encoder: shapes, mask, pooled == open_clip's own, weights loading, errors."""

from __future__ import annotations

import logging

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from cinemamba_conditioning import (
    CachedTextEncoder,
    EmbeddingCache,
    OpenCLIPTextEncoder,
    TextEmbedding,
    TextEncoder,
    TextEncoderConfig,
    build_text_encoder,
    register_bundled_configs,
)


@pytest.fixture(scope="module")
def encoder() -> OpenCLIPTextEncoder:
    return build_text_encoder(TextEncoderConfig(random_init_seed=0))


def test_shapes_dtypes_and_protocol(encoder):
    emb = encoder.encode(["a red circle moving left", "a blue square"])
    assert isinstance(encoder, TextEncoder)
    assert emb.tokens.shape == (2, encoder.context_length, encoder.dim)
    assert emb.mask.shape == (2, encoder.context_length) and emb.mask.dtype == torch.bool
    assert emb.pooled.shape == (2, encoder.pooled_dim)
    assert emb.tokens.dtype == emb.pooled.dtype == torch.float32
    assert torch.isfinite(emb.tokens).all()


def test_mask_counts_real_tokens(encoder):
    # "!" is BPE id 0, the same id as padding: the mask must still count it.
    prompts = ["a red circle moving left", "wow!", "", "green " * 100]
    emb = encoder.encode(prompts)
    L = encoder.context_length
    for i, p in enumerate(prompts):
        n = min(len(encoder.tokenizer.encode(p)) + 2, L)  # + SOT, EOT; truncated to L
        expected = torch.arange(L) < n
        assert torch.equal(emb.mask[i], expected), p
    assert emb.mask[3].all()  # truncated prompt fills the context


def test_pooled_matches_open_clip_encode_text(encoder):
    prompts = ["a yellow triangle bouncing", "a small star drifting right"]
    emb = encoder.encode(prompts)
    ids = encoder.tokenizer(prompts)
    ref = encoder.model.encode_text(ids)
    torch.testing.assert_close(emb.pooled, ref)


def test_frozen_eval_no_grad(encoder):
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training and not encoder.model.training
    with torch.enable_grad():
        emb = encoder.encode(["a circle"])
    assert not emb.tokens.requires_grad


def test_null_is_empty_prompt(encoder):
    null = encoder.null(3)
    ref = encoder.encode([""])
    assert null.batch == 3
    for i in range(3):
        torch.testing.assert_close(null.tokens[i], ref.tokens[0])
    assert null.mask.sum(1).tolist() == [2, 2, 2]  # SOT + EOT


def test_random_init_is_seeded_and_leaves_global_rng(encoder):
    state = torch.random.get_rng_state()
    again = build_text_encoder(TextEncoderConfig(random_init_seed=0))
    assert torch.equal(torch.random.get_rng_state(), state)
    other = build_text_encoder(TextEncoderConfig(random_init_seed=1))
    a, b, c = (e.encode(["a red circle"]).pooled for e in (encoder, again, other))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert encoder.identity == again.identity != other.identity
    assert "random-init-seed-0" in encoder.identity


def test_loads_local_weights_full_and_text_only(tmp_path, encoder):
    register_bundled_configs()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        full_model = open_clip.create_model("cinemamba-tiny-text").eval()  # with image tower
    prompt = ["a purple hexagon spinning"]
    ref = full_model.encode_text(encoder.tokenizer(prompt))
    state = full_model.state_dict()
    assert any(k.startswith("visual.") for k in state)
    full = tmp_path / "tiny.pt"
    torch.save(state, full)
    text_only = tmp_path / "tiny_text.safetensors"
    keep = {k: v.contiguous() for k, v in state.items() if not k.startswith(("visual.", "logit_"))}
    save_file(keep, text_only)
    for path in (full, text_only):
        loaded = build_text_encoder(TextEncoderConfig(weights=str(path)))
        out = loaded.encode(prompt)
        torch.testing.assert_close(out.pooled, ref, rtol=0, atol=0)
        assert "sha256-" in loaded.identity and loaded.identity != encoder.identity


def test_missing_weights_error_names_path(tmp_path):
    missing = tmp_path / "nope" / "clip.safetensors"
    with pytest.raises(FileNotFoundError, match="nope/clip.safetensors"):
        build_text_encoder(TextEncoderConfig(weights=str(missing)))
    with pytest.raises(FileNotFoundError, match="'openai'"):  # a hub tag is not a path
        build_text_encoder(TextEncoderConfig(model="ViT-B-32", weights="openai"))
    with pytest.raises(ValueError, match="weights is not set"):
        build_text_encoder(TextEncoderConfig())


def test_wrong_weights_error_names_path(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        build_text_encoder(TextEncoderConfig(weights=str(garbage)))
    other_arch = tmp_path / "other.pt"
    torch.save({"token_embedding.weight": torch.zeros(10, 8)}, other_arch)
    with pytest.raises(ValueError, match="other.pt"):
        build_text_encoder(TextEncoderConfig(weights=str(other_arch)))


def test_bad_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Q-99'.*ViT-B-32"):
        build_text_encoder(TextEncoderConfig(model="ViT-Q-99", random_init_seed=0))
    with pytest.raises(ValueError, match="precision"):
        build_text_encoder(TextEncoderConfig(random_init_seed=0, precision="fp8"))


def test_bf16_option_close_to_fp32(encoder):
    bf16 = build_text_encoder(TextEncoderConfig(random_init_seed=0, precision="bf16"))
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert bf16.identity != encoder.identity
    a = encoder.encode(["a red circle moving left"])
    b = bf16.encode(["a red circle moving left"])
    assert b.tokens.dtype == torch.float32
    err = (a.tokens - b.tokens).abs().max() / a.tokens.abs().max()
    assert err < 0.05


class _CountingEncoder:
    """Wraps an encoder and records every batch it is asked to encode."""

    def __init__(self, inner: OpenCLIPTextEncoder, identity: str | None = None) -> None:
        self.inner = inner
        self.dim, self.pooled_dim = inner.dim, inner.pooled_dim
        self.identity = identity or inner.identity
        self.calls: list[list[str]] = []

    def encode(self, prompts: list[str]) -> TextEmbedding:
        self.calls.append(list(prompts))
        return self.inner.encode(prompts)

    def null(self, batch: int) -> TextEmbedding:
        return self.encode([""] * batch)


def test_cache_encodes_each_prompt_once(encoder):
    counting = _CountingEncoder(encoder)
    cached = CachedTextEncoder(counting)
    prompts = ["a red circle", "a blue square", "a red circle"]
    first = cached.encode(prompts)
    assert counting.calls == [["a red circle", "a blue square"]]
    second = cached.encode(["a blue square", "a green star", "a red circle"])
    assert counting.calls[1:] == [["a green star"]]
    # a repeat inside one call is deduplicated before the lookup, so it counts once
    assert (cached.cache.hits, cached.cache.misses) == (2, 3)
    # The cache hands back what the inner encoder computed for the deduplicated batch: equal
    # bit for bit to that same batch encoded directly (same computation) ...
    same = encoder.encode(["a red circle", "a blue square"])
    for got, want in ((first.tokens, same.tokens), (first.pooled, same.pooled)):
        assert torch.equal(got, want[[0, 1, 0]])
    assert torch.equal(second.pooled[2], first.pooled[0])  # a hit is the stored tensor
    assert torch.equal(second.tokens[0], first.tokens[1])
    # ... and within float32 rounding of an uncached call on another batch (3 rows): matmuls
    # of another row count may sum in another order (4.5 eps of the largest value apart on an AVX-512 Xeon)
    ref = encoder.encode(prompts)
    tol = 32 * torch.finfo(torch.float32).eps * ref.tokens.abs().max().item()
    torch.testing.assert_close(first.tokens, ref.tokens, rtol=0, atol=tol)
    assert torch.equal(first.mask, ref.mask)
    cached.null(4)
    cached.null(2)
    assert counting.calls[2:] == [[""]]


def test_cache_keys_on_identity_and_evicts(encoder):
    shared = EmbeddingCache(max_entries=2)
    a = CachedTextEncoder(_CountingEncoder(encoder, identity="enc-a"), shared)
    b_inner = _CountingEncoder(encoder, identity="enc-b")
    b = CachedTextEncoder(b_inner, shared)
    a.encode(["x"])
    b.encode(["x"])  # same text, other identity: encoded again
    assert b_inner.calls == [["x"]]
    assert len(shared) == 2
    a.encode(["y"])  # evicts the least recently used entry ("enc-a", "x")
    assert len(shared) == 2
    assert shared.get("enc-a", "x") is None and shared.get("enc-b", "x") is not None


def test_building_logs_no_open_clip_chatter_but_keeps_other_warnings(caplog, monkeypatch):
    # open_clip always warns "No pretrained weights loaded" here (we load our own file after,
    # or want the random tower) and narrates its factory at INFO: expected, so silenced; any
    # other warning still reaches the user.
    create = open_clip.create_model

    def create_and_warn(*args, **kwargs):
        model = create(*args, **kwargs)
        logging.warning("something else the user must see")
        return model

    monkeypatch.setattr(open_clip, "create_model", create_and_warn)
    with caplog.at_level(logging.INFO):
        build_text_encoder(TextEncoderConfig(random_init_seed=0))
    messages = [r.getMessage() for r in caplog.records]
    assert not any("No pretrained weights" in m for m in messages)
    assert not any("Parsing model identifier" in m for m in messages)  # open_clip's INFO steps
    assert "something else the user must see" in messages
    # The filter is gone after the build: the same warning outside it is logged.
    with caplog.at_level(logging.WARNING):
        logging.warning("No pretrained weights loaded for model 'x' (outside the build)")
    assert "outside the build" in caplog.records[-1].getMessage()
