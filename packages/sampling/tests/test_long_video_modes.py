"""VideoPipeline long-video modes with small stand-in modules whose behaviour is known exactly."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from einops import rearrange, repeat
from PIL import Image
from torch import nn

from cinemamba_conditioning import TextEmbedding
from cinemamba_sampling import (
    FlowMatching,
    PipelineConfig,
    VideoPipeline,
    WithContext,
    contact_sheet,
    guided,
    rolling_windows,
    save_png,
    stream_chunks,
    to_uint8,
)


@dataclass
class _VAEConfig:
    latent_channels: int = 4
    spatial_compression: int = 4
    temporal_compression: int = 4


class StubVAE(nn.Module):
    """Causal 4x4x4 'decoder': each latent frame becomes 1 (first) or 4 pixel frames."""

    def __init__(self):
        super().__init__()
        self.config = _VAEConfig()
        self.proj = nn.Parameter(torch.linspace(-0.3, 0.3, 12).reshape(3, 4))
        self.chunks: list[int] = []

    def latent_shape(self, frames, height, width):
        if (frames - 1) % 4 or height % 4 or width % 4:
            raise ValueError(f"bad video size {frames}x{height}x{width}")
        return 1 + (frames - 1) // 4, height // 4, width // 4

    def decode(self, latents, *, chunk_frames=None):
        self.chunks.append(chunk_frames or latents.shape[2])
        px = torch.einsum("oc,bcthw->bothw", self.proj, latents).tanh()
        px = repeat(px, "b o t h w -> b o (t k) (h p) (w q)", k=4, p=4, q=4)
        return px[:, :, 3:]  # causal: the first latent frame decodes to one frame


@dataclass
class _NetConfig:
    in_channels: int = 4


class StubCausalNet(nn.Module):
    """out_k = W x_k + (1 - t_k) * text + sum_{j<=k} decay^(k-j) x_j  (causal along time).

    Records the number of latent frames and the per-frame times of every call.
    """

    is_causal = True

    def __init__(self, decay: float = 0.5):
        super().__init__()
        self.config = _NetConfig()
        self.mix = nn.Parameter(torch.eye(4) * 0.5)
        self.decay = decay
        self.frames_seen: list[int] = []
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _run(self, x, t, text, pooled, h):
        b, _, frames = x.shape[:3]
        t = t[:, None].expand(b, frames) if t.ndim == 1 else t
        self.frames_seen.append(frames)
        self.calls.append((x.clone(), t.clone()))
        cond = (text.mean((1, 2)) + pooled.mean(1))[:, None, None, None, None]
        outs = []
        for k in range(frames):
            h = self.decay * h + x[:, :, k]
            outs.append(torch.einsum("oc,bchw->bohw", self.mix, x[:, :, k]) + 0.1 * h)
        out = torch.stack(outs, 2) + (1 - t)[:, None, :, None, None] * cond
        return out, h

    def forward(self, x, t, text, text_mask=None, pooled=None):
        return self._run(x, t, text, pooled, torch.zeros_like(x[:, :, 0]))[0]

    def init_state(self, batch, height, width, device=None, dtype=None):
        return torch.zeros(batch, 4, height, width, device=device, dtype=dtype)

    def forward_chunk(self, x, t, text, text_mask, state, pooled=None):
        return self._run(x, t, text, pooled, state)


class StubText:
    dim = pooled_dim = 3
    identity = "stub-text"

    def encode(self, prompts):
        vals = torch.tensor([[float(len(p)) / 10] for p in prompts])
        return TextEmbedding(
            repeat(vals, "b 1 -> b l d", l=5, d=3),
            torch.ones(len(prompts), 5, dtype=torch.bool),
            vals.expand(-1, 3).clone(),
        )

    def null(self, batch):
        return self.encode([""] * batch)


def make_pipe(**cfg):
    net = StubCausalNet()
    pipe = VideoPipeline(
        StubVAE(), net, StubText(), FlowMatching(), PipelineConfig(progress=False, **cfg)
    )
    return pipe, net


ARGS = dict(height=16, width=16, steps=4, guidance=3.0, seed=0)


def test_window_and_chunk_schedules():
    assert rolling_windows(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert rolling_windows(3, 8, 2) == [(0, 3)]
    for total, w, c in [(40, 8, 2), (41, 5, 4), (9, 3, 0)]:
        spans = rolling_windows(total, w, c)
        assert spans[0][0] == 0 and spans[-1][1] == total
        assert all(e - s <= w for s, e in spans)
        assert all(
            a[1] - b[0] == c for a, b in zip(spans, spans[1:], strict=False)
        )  # overlap = context
    assert stream_chunks(7, 3) == [(0, 3), (3, 6), (6, 7)]
    with pytest.raises(ValueError, match="context < window"):
        rolling_windows(10, 4, 4)


@pytest.mark.parametrize("mode", ["oneshot", "rolling", "streaming"])
def test_modes_return_requested_frames_at_8x_the_window(mode):
    pipe, net = make_pipe(window=4, context=1, chunk=2)
    frames = 4 * 31 + 1 - 2  # 32 latent frames = 8 windows; not 1 + 4k: decoded and trimmed
    video = pipe.generate(["a red circle moving left", "a cat"], frames=frames, mode=mode, **ARGS)
    assert video.shape == (2, 3, frames, 16, 16)
    assert video.abs().max() <= 1 and torch.isfinite(video).all()
    most = max(net.frames_seen)
    assert most == {"oneshot": 32, "rolling": 4, "streaming": 2}[mode]  # network memory bound
    assert pipe.vae.chunks == [4]  # chunked decode


@pytest.mark.parametrize("mode", ["oneshot", "rolling", "streaming"])
def test_deterministic_for_a_seed(mode):
    pipe, _ = make_pipe(window=3, context=1, chunk=2)
    a = pipe.generate("a blue square", frames=21, mode=mode, **ARGS)
    b = pipe.generate("a blue square", frames=21, mode=mode, **ARGS)
    c = pipe.generate("a blue square", frames=21, mode=mode, **{**ARGS, "seed": 1})
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_rolling_feeds_clean_context_at_t0():
    pipe, net = make_pipe(window=4, context=2)
    lat = pipe.sample_latents(["x"], frames=4 * 5 + 1, mode="rolling", **{**ARGS, "guidance": 1.0})
    assert lat.shape[2] == 6
    windows = rolling_windows(6, 4, 2)
    assert len(net.calls) == 4 * len(windows)  # steps per window, one batch each (no CFG)
    for w, (start, _) in enumerate(windows[1:], start=1):
        for x, t in net.calls[4 * w : 4 * w + 4]:
            torch.testing.assert_close(x[:, :, :2], lat[:, :, start : start + 2], rtol=0, atol=0)
            assert (t[:, :2] == 0).all() and (t[:, 2:] > 0).all()


def _reference_streaming(pipe, prompts, frames, seed, chunk, guidance=3.0, steps=4):
    """Streaming must equal: each chunk solved with the full causal forward over all clean
    frames so far at t = 0, with the same noise draws."""
    t_lat, h, w, _ = pipe.latent_size(frames, 16, 16)
    cond, uncond = pipe.embed(prompts, guidance)
    model = guided(lambda *a: pipe.backbone(*a), cond, uncond, guidance)
    gen = torch.Generator().manual_seed(seed)
    ts = pipe.process.timesteps(steps, num_tokens=chunk * h * w)
    latents = torch.zeros(len(prompts), 4, t_lat, h, w)
    for s, e in stream_chunks(t_lat, chunk):
        noise = torch.randn((len(prompts), 4, e - s, h, w), generator=gen)
        latents[:, :, s:e] = pipe.solver(
            WithContext(model, latents[:, :, :s]), noise, ts, process=pipe.process, generator=gen
        )
    return latents


def test_streaming_equals_full_context_causal_reference():
    pipe, _ = make_pipe(chunk=2)
    got = pipe.sample_latents(["a green star", "b"], frames=4 * 6 + 1, mode="streaming", **ARGS)
    ref = _reference_streaming(pipe, ["a green star", "b"], 4 * 6 + 1, seed=0, chunk=2)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_guidance_one_runs_a_single_batch_and_errors_are_clear():
    pipe, net = make_pipe()
    pipe.sample_latents(["a", "b", "c"], frames=9, mode="oneshot", **{**ARGS, "guidance": 1.0})
    assert all(x.shape[0] == 3 for x, _ in net.calls)
    net.calls.clear()
    pipe.sample_latents(["a", "b", "c"], frames=9, mode="oneshot", **ARGS)
    assert all(x.shape[0] == 6 for x, _ in net.calls)
    with pytest.raises(
        ValueError, match="unknown long-video mode 'loop'.*oneshot, rolling, streaming"
    ):
        pipe.generate("a", frames=9, mode="loop", **ARGS)
    net.is_causal = False
    with pytest.raises(ValueError, match="streaming' needs a causal backbone"):
        pipe.generate("a", frames=9, mode="streaming", **ARGS)


def test_negative_prompt_replaces_the_empty_prompt():
    pipe, net = make_pipe()
    pipe.sample_latents(["abc"], frames=5, mode="oneshot", **ARGS, negative_prompt="blurry, dark")
    pipe.sample_latents(["abc"], frames=5, mode="oneshot", **ARGS)
    assert pipe.text_encoder.cache.get("stub-text", "blurry, dark") is not None
    assert pipe.text_encoder.cache.get("stub-text", "") is not None


def test_media_uint8_and_contact_sheet(tmp_path):
    video = torch.linspace(-1, 1, 2 * 3 * 10 * 4 * 6).reshape(2, 3, 10, 4, 6)
    frames = to_uint8(video)
    assert frames.shape == (2, 10, 4, 6, 3) and frames.dtype == np.uint8
    assert frames[0, 0, 0, 0, 0] == 0 and frames[-1, -1, -1, -1, -1] == 255
    np.testing.assert_array_equal(
        frames[1, 3, 2, 5],
        ((rearrange(video, "b c t h w -> b t h w c")[1, 3, 2, 5] + 1) * 127.5)
        .round()
        .byte()
        .numpy(),
    )
    sheet = contact_sheet(frames[0], columns=4, max_frames=8, gap=2)
    assert sheet.shape == (2 * 4 + 2, 4 * 6 + 3 * 2, 3)
    np.testing.assert_array_equal(sheet[:4, :6], frames[0, 0])  # first frame top-left
    np.testing.assert_array_equal(sheet[6:10, 24:30], frames[0, 9])  # last frame last cell
    path = save_png(tmp_path / "sheet.png", sheet)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), sheet)
